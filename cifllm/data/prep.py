"""``prepare_corpus``: registry -> records -> filters -> canonical text -> dedup -> corpus folder + report.

Nothing is dropped silently: every rejected record is written to ``rejects.jsonl`` with its dataset, file, record
and reason, and counted per source in ``report.json``/``report.md``.

Every record runs under a time limit (``time_limit_s``, the mechanism the evaluation stage uses:
:func:`cifllm.utils.limits.map_with_time_limit`): a record that takes longer is dropped as ``timeout``, one whose
worker process dies as ``worker_crash``. These two are not cached (they depend on the machine), so a resumed run
tries them again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cifllm.cif.canonical import CANONICAL_VERSION
from cifllm.core.config import BlockAccess, config_to_dict, save_config
from cifllm.core.records import CONFIG_FILE, REPORT_FILE
from cifllm.data.corpus import CorpusRow, formula_split, write_corpus
from cifllm.data.dedup import group_duplicates
from cifllm.data.filters import FILTER_VERSION, Canonical, FilterSettings, Reject, process_record
from cifllm.data.readers import RawRecord, iter_dataset, load_join_table
from cifllm.data.registry import DataError, load_registry, resolve_data_dir
from cifllm.tokenization import build_tokenizer
from cifllm.utils import atomic_write_json, atomic_write_text
from cifllm.utils.limits import map_with_time_limit

__all__ = ["PrepConfig", "prepare_corpus", "PrepResult"]


@dataclass(frozen=True)
class PrepConfig(BlockAccess):
    """Settings of ``cifllm data``. Distances in Angstrom, volumes in Angstrom^3/atom."""

    data_dir: str = ""  #: folder holding the registry's files (raw datasets); empty = $CIFLLM_DATA_DIR
    registry: str = ""  #: folder of dataset registry YAML files; empty = the packaged registry (checkout: data_prep/datasets)
    datasets: tuple[str, ...] = ()  #: registry entries to build from; empty = every 'structures' entry
    out: str = "data/corpus"  #: corpus folder to write (manifest.json, dataset/, report.md, rejects.jsonl)
    #: per-record filters and canonicalization (:class:`~cifllm.data.filters.FilterSettings`; YAML ``filters:``)
    filters: FilterSettings = field(default_factory=FilterSettings)
    max_tokens: int = 2048  #: canonical-text tokens (without BOS/EOS) above which a record is dropped (too_many_tokens)
    dedup: bool = True  #: merge duplicate structures: identical canonical texts, then StructureMatcher within formula buckets
    dedup_max_bucket: int = 100  #: (formula, primitive size) buckets larger than this are split by space group before matching
    val_fraction: float = 0.05  #: share of reduced formulas (hashed) in the validation split, in [0, 1)
    seed: int = 0  #: seed of the split hash and of any sampling
    workers: int = 0  #: processes for parsing and canonicalization; 0 = every CPU core
    limit_per_file: int = 0  #: read at most N records per input file (a quick smoke corpus); 0 = all
    allow_missing: bool = False  #: skip registry files missing from data_dir instead of failing
    time_limit_s: float = 60.0  #: seconds per record for parse + filters + canonicalization (over it: dropped as timeout); <= 0 = none

    def __post_init__(self) -> None:
        if self.filters.mode not in ("symmetrized", "p1"):
            raise ValueError(f"filters.mode must be 'symmetrized' or 'p1', got {self.filters.mode!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def filter_settings(self) -> FilterSettings:
        """The per-record thresholds (the ``filters`` block)."""
        return self.filters


@dataclass
class PrepResult:
    out: Path
    report: dict[str, Any]


_SETTINGS: FilterSettings | None = None


def _init_worker(settings: FilterSettings) -> None:
    """Per-process settings for :func:`_work` (used by ``benchmarks/bench_prep.py`` to time the bare record path)."""
    global _SETTINGS
    _SETTINGS = settings
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _work(rec: RawRecord) -> Canonical | Reject:
    assert _SETTINGS is not None
    return process_record(rec, _SETTINGS)


#: reasons of the time-limit mechanism that depend on the machine, not on the record: never cached
UNCACHED_REASONS = ("timeout", "worker_crash")


def _failed_record(rec: RawRecord, reason: str, detail: str) -> Reject:
    """The reject of a record that ran out of time, killed its worker, or raised (``error``: a bug, kept visible)."""
    return Reject(rec.dataset, rec.file, rec.row, rec.record_id, reason if reason in UNCACHED_REASONS else "internal_error", detail[:300])


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {"min": v[0], "median": statistics.median(v), "p95": v[min(len(v) - 1, int(0.95 * len(v)))], "max": v[-1], "mean": round(sum(v) / len(v), 1)}


def _record_key(rec: RawRecord) -> str:
    payload = rec.cif if rec.structure is None else json.dumps(rec.structure, sort_keys=True)
    digest = hashlib.sha1((payload or "").encode("utf-8", errors="replace")).hexdigest()[:16]
    return f"{rec.dataset}|{rec.file}|{rec.row}|{rec.record_id}|{digest}|{rec.extras.get('read_error') or ''}"


def _to_cache(key: str, r: Canonical | Reject) -> str:
    if isinstance(r, Reject):
        return json.dumps({"k": key, "reject": [r.reason, r.detail]})
    return json.dumps({"k": key, "ok": [r.text, r.reduced_formula, r.elements, r.n_sites, r.n_prim_sites, r.sg_number, r.round_trip]})


def _from_cache(obj: dict[str, Any], rec: RawRecord) -> Canonical | Reject:
    if "reject" in obj:
        return Reject(rec.dataset, rec.file, rec.row, rec.record_id, *obj["reject"])
    text, formula, elements, n_sites, n_prim, sg, rt = obj["ok"]
    return Canonical(text, formula, elements, n_sites, n_prim, sg, rec, rt)


def _canonicalize(
    records: list[RawRecord], settings: FilterSettings, workers: int, out: Path, progress: bool, time_limit_s: float = 60.0
) -> tuple[list[Canonical | Reject], int]:
    """Process every record under the per-record time limit, resuming from ``<out>/.prep_cache/<settings>.jsonl``:
    each result is appended there as it completes (keyed by record and a hash of its content), so a killed run
    restarts where it stopped. ``workers`` > 1: that many processes; otherwise in this process (soft limit)."""
    cache_dir = out / ".prep_cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    tag = hashlib.sha1(json.dumps({**asdict(settings), "canonical_version": CANONICAL_VERSION, "filter_version": FILTER_VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    cache_file = cache_dir / f"canonical-{tag}.jsonl"
    cached: dict[str, dict[str, Any]] = {}
    if cache_file.exists():
        with open(cache_file) as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                cached[obj["k"]] = obj
    keys = [_record_key(r) for r in records]
    results: list[Canonical | Reject | None] = [(_from_cache(cached[k], r) if k in cached else None) for k, r in zip(keys, records)]
    todo = [i for i, r in enumerate(results) if r is None]
    bar = tqdm(total=len(todo), desc="canonicalize", unit="cif", disable=not progress)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        with open(cache_file, "a") as fh:
            stream = map_with_time_limit(
                functools.partial(process_record, cfg=settings),
                [records[i] for i in todo],
                time_limit_s,
                workers=workers if workers > 1 and len(todo) > 1 else 0,
                on_failure=_failed_record,
                progress=bar.update,
            )
            for j, r in stream:
                i = todo[j]
                results[i] = r
                if not (isinstance(r, Reject) and r.reason in UNCACHED_REASONS):
                    fh.write(_to_cache(keys[i], r) + "\n")
    finally:
        bar.close()
    return results, len(records) - len(todo)  # type: ignore[return-value]


def collect_records(cfg: PrepConfig) -> tuple[list[RawRecord], dict[str, Any]]:
    """Read every selected dataset (checking files first). Returns records and the input-file manifest."""
    data_dir = resolve_data_dir(cfg.data_dir or None)
    registry = load_registry(cfg.registry) if cfg.registry else load_registry()
    names = list(cfg.datasets) or [n for n, s in registry.items() if s.kind == "structures"]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise DataError(f"unknown dataset(s) {unknown}; the registry has {sorted(registry)}")
    missing: list[str] = []
    for n in names:
        for fs in registry[n].files:
            if not (data_dir / fs.path).exists():
                missing.append(f"{n}: {data_dir / fs.path}")
    if missing and not cfg.allow_missing:
        raise DataError("dataset file(s) not found (check CIFLLM_DATA_DIR, or pass allow_missing=true):\n  " + "\n  ".join(missing))
    joins = {n: s for n, s in registry.items() if s.kind == "table" and s.join_key}
    join_tables = {}
    for n, s in joins.items():
        if all((data_dir / fs.path).exists() for fs in s.files):
            join_tables[n] = load_join_table(s, data_dir)
    records: list[RawRecord] = []
    inputs = []
    skipped = []
    for n in names:
        spec = registry[n]
        if any(not (data_dir / fs.path).exists() for fs in spec.files):
            skipped.append(n)
            continue
        for fs in spec.files:
            inputs.append({"dataset": n, "path": fs.path, "split": fs.split, "sha256": fs.sha256, "url": fs.url, "bytes": (data_dir / fs.path).stat().st_size})
        for rec in iter_dataset(spec, data_dir, cfg.limit_per_file):
            for table in join_tables.values():
                for key in (rec.record_id, rec.extras.get("mp_id")):
                    if key is not None and str(key) in table:
                        rec.extras.update(table[str(key)])
                        break
            records.append(rec)
    meta = {
        "data_dir": str(data_dir),
        "datasets": [n for n in names if n not in skipped],
        "skipped_missing": skipped,
        "missing_files": missing,
        "inputs": inputs,
        "licences": {n: registry[n].licence for n in names},
        "property_units": {n: registry[n].property_units() for n in names},
    }
    return records, meta


def prepare_corpus(cfg: PrepConfig, progress: bool = True) -> PrepResult:
    """Build the corpus described by ``cfg``; returns its folder and the report dict."""
    t0 = time.time()
    records, meta = collect_records(cfg)
    if not records:
        raise DataError("no records to process (empty inputs or limit_per_file too small)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = cfg.workers or os.cpu_count() or 1
    settings = cfg.filter_settings()
    t_read = time.time()
    results, n_cached = _canonicalize(records, settings, workers, out, progress, cfg.time_limit_s)
    t_canon = time.time() - t_read

    tok = build_tokenizer()
    rejects: list[Reject] = [r for r in results if isinstance(r, Reject)]
    canon: list[Canonical] = [r for r in results if isinstance(r, Canonical)]
    encs = tok.encode_batch([c.text for c in canon], add_special_tokens=False)
    unk = tok.token_to_id("<|unk|>")
    kept: list[Canonical] = []
    n_tokens: list[int] = []
    for c, e in zip(canon, encs):
        rec = c.record
        if len(e.ids) > cfg.max_tokens:
            rejects.append(Reject(rec.dataset, rec.file, rec.row, rec.record_id, "too_many_tokens", f"{len(e.ids)} > {cfg.max_tokens}"))
        elif unk in e.ids:
            rejects.append(Reject(rec.dataset, rec.file, rec.row, rec.record_id, "unknown_token", "text has characters outside the vocabulary"))
        else:
            kept.append(c)
            n_tokens.append(len(e.ids))

    # 1) identical canonical texts
    by_text: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(kept):
        by_text[c.text].append(i)
    uniq = [idx for idx in by_text.values()]
    exact_merged = len(kept) - len(uniq)
    # 2) StructureMatcher inside (formula, primitive size) buckets
    dedup_stats: dict[str, Any] = {"exact_text_duplicates": exact_merged}
    if cfg.dedup and uniq:
        reps = [kept[g[0]] for g in uniq]
        t_d = time.time()
        groups, st = group_duplicates(
            [r.text for r in reps],
            [r.reduced_formula for r in reps],
            [r.n_prim_sites for r in reps],
            [r.sg_number for r in reps],
            workers=workers,
            max_bucket=cfg.dedup_max_bucket,
            progress=(lambda it, total: tqdm(it, total=total, desc="dedup", unit="bucket")) if progress else None,
        )
        final_groups = [[i for g in grp for i in uniq[g]] for grp in groups]
        dedup_stats.update(st)
        dedup_stats["matcher_duplicates"] = len(uniq) - len(groups)
        dedup_stats["seconds"] = round(time.time() - t_d, 1)
    else:
        final_groups = uniq
    order = {n: k for k, n in enumerate(meta["datasets"])}
    rows: list[CorpusRow] = []
    per_source: dict[str, Counter] = defaultdict(Counter)
    tokens_by_source: dict[str, list[int]] = defaultdict(list)
    rt_counter: Counter = Counter()
    rt_failures: list[dict[str, Any]] = []
    for c in kept:
        if c.round_trip is not None:
            rt_counter["ok" if c.round_trip == "" else c.round_trip] += 1
            if c.round_trip and len(rt_failures) < 500:
                r = c.record
                rt_failures.append({"dataset": r.dataset, "file": r.file, "row": r.row, "id": r.record_id, "formula": c.reduced_formula, "reason": c.round_trip})
    for grp in final_groups:
        members = sorted(grp, key=lambda i: (order.get(kept[i].record.dataset, 99), kept[i].record.file, kept[i].record.row))
        rep = kept[members[0]]
        rep_ds = rep.record.dataset
        props: dict[str, float] = {}
        provenance = []
        years = []
        for i in members:
            r = kept[i].record
            for k, v in r.properties.items():
                props.setdefault(k, v)
            if r.year is not None:
                years.append(r.year)
            prov = {"dataset": r.dataset, "id": r.record_id, "file": r.file, "row": r.row, "split": r.split, "properties": r.properties, "year": r.year}
            prov.update({k: v for k, v in r.extras.items() if v is not None})
            provenance.append(prov)
            if i != members[0]:
                per_source[r.dataset]["duplicate_within_source" if r.dataset == rep_ds else "duplicate_of_other_source"] += 1
        per_source[rep_ds]["rows_out"] += 1
        tokens_by_source[rep_ds].append(n_tokens[members[0]])
        rows.append(
            CorpusRow(
                text=rep.text,
                reduced_formula=rep.reduced_formula,
                elements=rep.elements,
                n_sites=rep.n_sites,
                sg_number=rep.sg_number,
                n_tokens=n_tokens[members[0]],
                sources=sorted({kept[i].record.dataset for i in members}, key=lambda d: order.get(d, 99)),
                source_ids=[f"{kept[i].record.dataset}:{kept[i].record.record_id}" for i in members],
                properties=props,
                year=min(years) if years else None,
                provenance=provenance,
                split=formula_split(rep.reduced_formula, cfg.val_fraction, cfg.seed),
            )
        )
    rows.sort(key=lambda r: r.as_record()["id"])
    for rec in records:
        per_source[rec.dataset]["rows_in"] += 1
    for rj in rejects:
        per_source[rj.dataset][f"drop:{rj.reason}"] += 1
    # write outputs
    rejects_lines = "".join(json.dumps(rj.__dict__) + "\n" for rj in rejects)
    atomic_write_text(out / "rejects.jsonl", rejects_lines)
    drops = Counter(rj.reason for rj in rejects)
    elapsed = time.time() - t0
    report = {
        "rows_in": len(records),
        "rows_kept_after_filters": len(kept),
        "rows_out": len(rows),
        "drops_by_reason": dict(drops.most_common()),
        "dedup": dedup_stats,
        "per_source": {
            n: {
                "rows_in": per_source[n]["rows_in"],
                "rows_out_as_representative": per_source[n]["rows_out"],
                "duplicate_within_source": per_source[n]["duplicate_within_source"],
                "duplicate_of_other_source": per_source[n]["duplicate_of_other_source"],
                "drops": {k[5:]: v for k, v in sorted(per_source[n].items()) if k.startswith("drop:")},
                "tokens": _stats(tokens_by_source[n]),
            }
            for n in meta["datasets"]
        },
        "tokens": _stats([r.n_tokens for r in rows]),
        "splits": dict(Counter(r.split for r in rows)),
        "round_trip": ({"checked": sum(rt_counter.values()), "ok": rt_counter["ok"], "ok_fraction": rt_counter["ok"] / max(1, sum(rt_counter.values())), "by_reason": dict(rt_counter), "failures": rt_failures} if rt_counter else None),
        "timing": {"seconds_total": round(elapsed, 1), "seconds_canonicalize": round(t_canon, 1), "cifs_per_second_canonicalize": round((len(records) - n_cached) / max(t_canon, 1e-9), 1), "records_from_checkpoint": n_cached, "workers": workers, "time_limit_s_per_record": cfg.time_limit_s},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "skipped_missing": meta["skipped_missing"],
        "missing_files": meta["missing_files"],
    }
    manifest = {"config": config_to_dict(cfg), **{k: meta[k] for k in ("data_dir", "datasets", "inputs", "licences", "property_units")}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not rows:
        raise DataError(f"every record was dropped: {dict(drops)}; see {out / 'rejects.jsonl'}")
    write_corpus(rows, out, manifest)
    save_config(cfg, out / CONFIG_FILE)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / REPORT_FILE, render_report_md(report))
    return PrepResult(out, report)


def render_report_md(rep: dict[str, Any]) -> str:
    """The prep report for people: rows in/out and drops by reason per source, dedup counts, token lengths."""
    lines = [
        "# Corpus preparation report",
        "",
        f"- rows in: **{rep['rows_in']}**, kept after filters: **{rep['rows_kept_after_filters']}**, unique structures out: **{rep['rows_out']}**",
        f"- splits: {rep['splits']}",
        f"- dedup: {rep['dedup']}",
        f"- time: {rep['timing']}",
        "",
        "## Drops by reason",
        "",
        "| reason | rows |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in rep["drops_by_reason"].items()],
        "",
        "## Per source",
        "",
        "| source | rows in | dropped | dup within | dup of other source | unique out | tokens median / p95 / max | drops |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for n, s in rep["per_source"].items():
        t = s["tokens"]
        tok = f"{t.get('median', '-')} / {t.get('p95', '-')} / {t.get('max', '-')}" if t else "-"
        drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items()) or "-"
        lines.append(f"| {n} | {s['rows_in']} | {sum(s['drops'].values())} | {s['duplicate_within_source']} | {s['duplicate_of_other_source']} | {s['rows_out_as_representative']} | {tok} | {drops} |")
    lines += ["", f"Token lengths of the corpus (no BOS/EOS): {rep['tokens']}", ""]
    if rep.get("round_trip"):
        rt = rep["round_trip"]
        lines += [
            "## Structure round trip (original -> canonical text -> structure, StructureMatcher ltol 0.2 stol 0.3 angle 5, scale off)",
            "",
            f"{rt['ok']} / {rt['checked']} match ({100 * rt['ok_fraction']:.3f}%). Failures by reason: {rt['by_reason']}",
            "",
            "| dataset | id | formula | reason |",
            "|---|---|---|---|",
            *[f"| {f['dataset']} | {f['id']} | {f['formula']} | {f['reason']} |" for f in rt["failures"][:200]],
            "",
        ]
    if rep.get("skipped_missing"):
        lines += [f"Skipped (files missing): {rep['skipped_missing']}", ""]
    return "\n".join(lines)
