"""Building a task's split from the corpus, with a leakage check, and the task's pretraining corpus.

Output folder ``<out>/<task>/``::

    train.jsonl, val.jsonl, test.jsonl   one JSON object per structure: id, text, reduced_formula, value, year, prototype
    pretrain_exclude.txt                 corpus ids that the task's pretraining corpus must not contain
    manifest.json                        the task, rule parameters (thresholds), counts, leak check, SHA-256 of files

Leakage check: every test structure is compared with ``StructureMatcher`` (ltol 0.2, stol 0.3, angle 5 deg, scaled)
against every train/val structure and every structure of the task's pretraining corpus inside the same
(reduced formula, primitive-cell size) bucket; matching test structures are removed and counted.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
import warnings
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cifllm.bench.tasks import TaskSpec
from cifllm.cif import SPACE_GROUP_SYMBOLS, CIFError, text_to_structure
from cifllm.cif.matching import fit_reduced, make_matcher, reduce_for_matching
from cifllm.cif.prototype import prototype_key_from_text
from cifllm.core.errors import CifllmError
from cifllm.core.inputs import check_file, iter_jsonl, load_json, parse_json
from cifllm.core.records import MANIFEST_FILE
from cifllm.data.corpus import load_corpus, load_manifest, write_corpus
from cifllm.data.filters import CENTERING_FACTOR
from cifllm.utils import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["SplitError", "build_split", "task_pretrain_corpus", "load_split"]


class SplitError(CifllmError, ValueError):
    """A task whose split cannot be made (empty side, unknown source, ...)."""


def _hash01(key: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(16**12)


def _n_prim(row: dict[str, Any]) -> int:
    return int(row["n_sites"]) // CENTERING_FACTOR.get(SPACE_GROUP_SYMBOLS[int(row["sg_number"]) - 1][0], 1)


def _proto_job(text: str) -> str:
    try:
        return prototype_key_from_text(text)
    except (CIFError, ValueError):
        return "?"


def _prototypes(texts: list[str], workers: int) -> list[str]:
    if workers > 1 and len(texts) > 200:
        with mp.get_context("fork").Pool(workers) as pool:
            return list(pool.imap(_proto_job, texts, chunksize=64))
    return [_proto_job(t) for t in texts]


def _leak_job(args: tuple[list[str], list[str]]) -> list[int]:
    """Positions of test texts matching any reference text (same bucket)."""
    tests, refs = args

    sm = make_matcher("dedup")

    def red(t: str):
        try:
            return reduce_for_matching(sm, text_to_structure(t))
        except (CIFError, ValueError):
            return None

    ref_s = [r for r in (red(t) for t in refs) if r is not None]
    hits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, t in enumerate(tests):
            s = red(t)
            if s is not None and any(fit_reduced(sm, r, s) for r in ref_s):
                hits.append(i)
    return hits


def leak_check(test: list[dict[str, Any]], reference: list[dict[str, Any]], workers: int = 1) -> tuple[set[str], dict[str, int]]:
    """Ids of test rows that match a reference row (same reduced formula and primitive size), and counts."""
    buckets: dict[tuple, tuple[list[dict], list[dict]]] = defaultdict(lambda: ([], []))
    for r in test:
        buckets[(r["reduced_formula"], _n_prim(r))][0].append(r)
    for r in reference:
        key = (r["reduced_formula"], _n_prim(r))
        if key in buckets:
            buckets[key][1].append(r)
    jobs = [(t, ref) for t, ref in buckets.values() if ref]
    args = [([r["text"] for r in t], [r["text"] for r in ref]) for t, ref in jobs]
    if workers > 1 and len(args) > 4:
        with mp.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap(_leak_job, args, chunksize=4))
    else:
        results = [_leak_job(a) for a in args]
    leaked = {jobs[k][0][i]["id"] for k, hits in enumerate(results) for i in hits}
    stats = {
        "test_rows_checked": len(test),
        "buckets_with_candidates": len(jobs),
        "pairs_compared_upper_bound": int(sum(len(t) * len(ref) for t, ref in jobs)),
        "leaks_found": len(leaked),
    }
    return leaked, stats


def _h_fraction(row: dict[str, Any]) -> float:
    from pymatgen.core import Composition

    comp = Composition(row["reduced_formula"])
    return comp.get_atomic_fraction("H") if "H" in row["elements"] else 0.0


def build_split(task: TaskSpec, corpus_dir: str | Path, out_dir: str | Path, workers: int = 2) -> dict[str, Any]:
    """Write the task's split (see module docstring) and return its manifest. Raises :class:`SplitError`."""
    t0 = time.time()
    ds = load_corpus(corpus_dir)
    cols = ["id", "text", "reduced_formula", "elements", "n_sites", "sg_number", "sources", "properties", "year"]
    rows = [dict(zip(cols, vals)) for vals in zip(*(ds[c] for c in cols))]
    for r in rows:
        r["properties"] = json.loads(r["properties"])
    known_sources = {s for r in rows for s in r["sources"]}
    unknown = [s for s in task.sources if s not in known_sources]
    if unknown:
        raise SplitError(f"task {task.name}: source(s) {unknown} are not in the corpus {corpus_dir} (it has {sorted(known_sources)})")
    cand = [r for r in rows if not task.sources or set(r["sources"]) & set(task.sources)]
    notes: dict[str, Any] = {"candidates": len(cand)}
    exclude: set[str] = set()
    test: list[dict] = []
    train: list[dict] = []
    if task.rule == "random_formula":
        for r in cand:
            (test if _hash01(r["reduced_formula"], task.seed) < task.test_fraction else train).append(r)
    elif task.rule == "elements":
        held = set(task.elements)
        test = [r for r in cand if held & set(r["elements"])]
        train = [r for r in cand if not held & set(r["elements"])]
        exclude |= {r["id"] for r in rows if held & set(r["elements"])}
        notes["elements"] = sorted(held)
    elif task.rule == "prototypes":
        keys = _prototypes([r["text"] for r in rows], workers)
        for r, k in zip(rows, keys):
            r["prototype"] = k
        counts: dict[str, int] = defaultdict(int)
        for r in cand:
            counts[r["prototype"]] += 1
        held = {k for k, n in counts.items() if k != "?" and n <= 500 and _hash01(k, task.seed) < task.test_fraction}
        test = [r for r in cand if r["prototype"] in held]
        train = [r for r in cand if r["prototype"] not in held]
        exclude |= {r["id"] for r in rows if r["prototype"] in held}
        notes.update({"prototypes_in_candidates": len(counts), "prototypes_held_out": len(held), "unkeyed_rows": sum(r["prototype"] == "?" for r in rows), "max_held_out_group": 500})
    elif task.rule == "property_top":
        with_p = [r for r in cand if task.property in r["properties"]]
        n0 = len(with_p)
        if task.min_value is not None:
            with_p = [r for r in with_p if r["properties"][task.property] > task.min_value]
        n1 = len(with_p)
        if task.max_hydrogen_fraction is not None:
            with_p = [r for r in with_p if _h_fraction(r) <= task.max_hydrogen_fraction]
        notes.update({"rows_with_property": n0, "dropped_min_value": n0 - n1, "dropped_hydrogen_rich": n1 - len(with_p)})
        if len(with_p) < 10:
            raise SplitError(f"task {task.name}: only {len(with_p)} rows carry property {task.property!r}")
        vals = np.array([r["properties"][task.property] for r in with_p])
        thr = float(np.quantile(vals, task.quantile))
        for r in with_p:
            r["value"] = r["properties"][task.property]
            (test if r["value"] > thr else train).append(r)
        notes.update({"threshold": thr, "unit": task.unit, "train_range": [float(vals[vals <= thr].min()), thr], "test_range": [thr, float(vals.max())]})
    elif task.rule == "time":
        dated = [r for r in cand if r["year"] is not None]
        train = [r for r in dated if r["year"] <= task.cutoff_year]
        test = [r for r in dated if r["year"] > task.cutoff_year]
        notes.update({"dated_rows": len(dated), "cutoff_year": task.cutoff_year})
    if not test:
        raise SplitError(f"task {task.name}: the rule leaves nothing in test ({notes})")
    if not train:
        raise SplitError(f"task {task.name}: the rule leaves nothing in train ({notes})")
    exclude |= {r["id"] for r in test}
    pretrain_rows = [r for r in rows if r["id"] not in exclude]  # includes the task's train side
    leaked, leak_stats = leak_check(test, pretrain_rows, workers)
    test = [r for r in test if r["id"] not in leaked]
    if not test:
        raise SplitError(f"task {task.name}: every test structure leaks into train/pretraining ({leak_stats})")
    val = [r for r in train if _hash01("val:" + r["reduced_formula"], task.seed) < task.val_fraction]
    val_ids = {r["id"] for r in val}
    train = [r for r in train if r["id"] not in val_ids]
    out = Path(out_dir) / task.name
    out.mkdir(parents=True, exist_ok=True)
    keep = ("id", "text", "reduced_formula", "value", "year", "prototype", "elements")

    def dump(name: str, part: list[dict]) -> None:
        part = sorted(part, key=lambda r: r["id"])
        atomic_write_text(out / name, "".join(json.dumps({k: r.get(k) for k in keep}) + "\n" for r in part))

    dump("train.jsonl", train)
    dump("val.jsonl", val)
    dump("test.jsonl", test)
    atomic_write_text(out / "pretrain_exclude.txt", "".join(i + "\n" for i in sorted(exclude | leaked)))
    files = {f: sha256_file(out / f) for f in ("train.jsonl", "val.jsonl", "test.jsonl", "pretrain_exclude.txt")}
    man = {
        "task": asdict(task),
        "corpus": str(corpus_dir),
        "corpus_manifest_sha256": sha256_file(Path(corpus_dir) / MANIFEST_FILE),
        "corpus_rows": len(ds),
        "counts": {"train": len(train), "val": len(val), "test": len(test), "pretrain_excluded": len(exclude | leaked), "pretrain_rows": len(rows) - len(exclude | leaked)},
        "rule": notes,
        "leak_check": {**leak_stats, "removed_from_test": sorted(leaked), "matcher": {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0, "scale": True}},
        "files_sha256": files,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(out / MANIFEST_FILE, man)
    return man


def load_split(task_dir: str | Path, part: str) -> list[dict[str, Any]]:
    """Rows of ``train``/``val``/``test`` from a split folder, checking the manifest's SHA-256."""
    d = Path(task_dir)
    man = load_json(d / MANIFEST_FILE, "split manifest", SplitError)
    f = d / f"{part}.jsonl"
    check_file(f, "split file", SplitError)
    if not isinstance(man, dict) or sha256_file(f) != (man.get("files_sha256") or {}).get(f.name):
        raise SplitError(f"{f}: content does not match its manifest checksum (modified after the split was made)")
    return [parse_json(x, f"{f}:{i}", SplitError) for i, x in iter_jsonl(f, "split file", SplitError)]


def task_pretrain_corpus(corpus_dir: str | Path, task_dir: str | Path | list[str | Path], out_dir: str | Path) -> Path:
    """Write the task's pretraining corpus: the corpus without the task's excluded ids (its test side, and for Case 1
    everything with the held-out elements/prototypes). Same corpus format; the manifest records the exclusions.

    Several task folders: the corpus without the *union* of their exclusions - a base model pretrained on it is
    leak-free for every one of those tasks (how the shipped default model is trained)."""
    dirs = [Path(task_dir)] if isinstance(task_dir, str | Path) else [Path(d) for d in task_dir]
    if not dirs:
        raise SplitError("no task folders given")
    excl: set[str] = set()
    per_task: dict[str, int] = {}
    for d in dirs:
        load_split(d, "test")  # checks the folder against its manifest
        ids = set((d / "pretrain_exclude.txt").read_text().split())
        per_task[d.name] = len(ids)
        excl |= ids
    ds = load_corpus(corpus_dir)
    keep = ds.filter(lambda i: i not in excl, input_columns="id")
    man = {k: v for k, v in load_manifest(corpus_dir).items() if k not in ("n_rows", "n_train", "n_val", "max_tokens")}
    if len(dirs) == 1:
        man.update({"task": dirs[0].name, "task_manifest_sha256": sha256_file(dirs[0] / MANIFEST_FILE)})
    else:
        man.update({"tasks": {d.name: sha256_file(d / MANIFEST_FILE) for d in dirs}, "excluded_per_task": per_task})
    man["excluded_rows"] = len(ds) - len(keep)
    return write_corpus(keep.to_list(), out_dir, man)
