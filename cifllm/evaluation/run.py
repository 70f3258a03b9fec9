"""The ``evaluate`` stage: checks, uniqueness, novelty and CSP match of sampled CIFs -> metrics and a report.

Output folder (default ``<samples run>/eval``)::

    config.yaml     resolved EvalConfig
    checks.jsonl    one record per sample: every check (ok, reason, detail, value), aggregates, unique, novel, CSP RMS
    metrics.json    counts and rates with their definitions and tolerances
    report.md       the same for people, with plots/; report.html is self-contained (plots embedded)
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Composition

from cifllm.cif import parse_canonical
from cifllm.cif.matching import MATCHER_SETTINGS
from cifllm.core.config import BlockAccess, config_to_dict, save_config
from cifllm.core.errors import CifllmError
from cifllm.core.records import CONFIG_FILE, EVAL_DIR, METRICS_FILE, SAMPLES_FILE
from cifllm.core.report import NOT_MEASURED, pct
from cifllm.data.corpus import load_corpus, load_manifest
from cifllm.evaluation.checks import (
    CHECK_NAMES,
    CONSISTENCY_CHECKS,
    VALIDITY_CHECKS,
    CheckSettings,
    check_sample,
    text_density,
)
from cifllm.evaluation.matching import ReferenceIndex, csp_match_task, csp_metrics, novelty_task, uniqueness_task
from cifllm.evaluation.reference import Reference, load_reference
from cifllm.evaluation.report import sampling_seconds, write_report
from cifllm.evaluation.stability import potential_key, stability_stage
from cifllm.sampling.run import read_samples
from cifllm.utils import atomic_write_json, atomic_write_text
from cifllm.utils.limits import default_workers, map_with_time_limit

__all__ = ["EvalConfig", "SamplesError", "consistency_agreement", "evaluate", "evaluate_texts", "novelty_stage", "validate_samples"]


class SamplesError(CifllmError, ValueError):
    """A ``samples.jsonl`` record whose fields have the wrong type (reported before any check runs)."""


#: field -> (accepted types, description); ``None`` is accepted for every field. ``bool`` is not an integer here.
SAMPLE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "cif_text": ((str,), "a string"),
    "prompt_meta": ((dict,), "an object"),
    "n_tokens": ((int,), "an integer"),
    "sample_index": ((int,), "an integer"),
    "finished": ((bool,), "true/false"),
}


def validate_samples(samples: list[dict[str, Any]], where: str = "samples.jsonl") -> None:
    """Raise :class:`SamplesError` naming the first record (1-based, and its ``sample_id``) whose field has the wrong
    type, with the count of bad records; cheap, so it runs before the checks."""
    bad: list[str] = []
    for k, s in enumerate(samples, 1):
        for name, (types, desc) in SAMPLE_FIELDS.items():
            v = s.get(name)
            if v is None:
                continue
            ok = isinstance(v, types) and not (bool not in types and isinstance(v, bool))
            if ok and name in ("n_tokens", "sample_index") and v < 0:
                ok = False
            if not ok:
                bad.append(f"record {k} (sample_id {str(s.get('sample_id'))[:40]!r}): {name} must be {desc}, got {type(v).__name__} {str(v)[:40]!r}")
                break
        else:
            tid = (s.get("prompt_meta") or {}).get("target_id")
            if tid is not None and not isinstance(tid, str):
                bad.append(f"record {k} (sample_id {str(s.get('sample_id'))[:40]!r}): prompt_meta.target_id must be a string, got {type(tid).__name__}")
    if bad:
        more = f" (and {len(bad) - 1} more bad record(s))" if len(bad) > 1 else ""
        raise SamplesError(f"{where}: {bad[0]}{more}")


@dataclass(frozen=True)
class EvalConfig(BlockAccess):
    """Config of ``cifllm evaluate`` (YAML + ``key=value`` overrides).

    ``samples``: a sample run folder or its ``samples.jsonl``. ``reference``: corpus folder for novelty and the
    reference distributions (``reference_split`` of it; null = all rows). ``ground_truth``: corpus folder whose ``id``
    column the samples' ``prompt_meta.target_id`` refers to (CSP). ``csp_k``: k of match@k (0 = all samples per
    target). ``workers``: processes (0 = in this process). ``time_limit_s``: per sample and check stage (uniqueness
    of a bucket gets ``time_limit_s`` per sample in it). ``checks``: the :class:`CheckSettings` block.
    """

    samples: str = ""  #: a `cifllm sample` run folder or its samples.jsonl (required)
    out: str | None = None  #: output folder; null = <samples run>/eval
    reference: str | None = None  #: reference structures for novelty and the report's reference plots: a corpus folder (`cifllm data`), a folder of .cif files or one structure file; null = novelty not measured
    reference_split: str | None = None  #: split of a corpus reference to use (train / val / test); null = all rows
    ground_truth: str | None = None  #: corpus folder whose `id` column the samples' prompt_meta.target_id refers to (CSP match@k); null = no CSP scores
    csp_k: int = 0  #: k of match@k and rmse@k; 0 = all samples of a target
    workers: int = -1  #: processes for the checks and matching; 0 = in this process, -1 = every CPU this process may use
    time_limit_s: float = 60.0  #: seconds per sample and check stage (uniqueness of a formula bucket: this x the samples in it); a sample over it fails with reason timeout
    uniqueness: bool = True  #: compute uniqueness among the valid samples (StructureMatcher within each reduced-formula bucket)
    novelty: bool = True  #: compute novelty against `reference` (needs reference)
    max_samples: int = 0  #: evaluate only the first N samples; 0 = all
    report: bool = True  #: write report.md / report.html with plots
    reference_plot_rows: int = 20000  #: most reference structures drawn (seeded) for the report's reference distributions
    #: tolerances of the checks (:class:`~cifllm.evaluation.checks.CheckSettings`; YAML ``checks:``, CLI ``checks.symprec=0.05``)
    checks: CheckSettings = field(default_factory=CheckSettings)
    # stability (cifllm.evaluation.stability, needs the mlip extra); null = StabilitySettings default
    stability: bool = False  #: relax valid samples with CHGNet and report E_hull (needs the mlip extra)
    stability_cache: str | None = None  #: folder of relaxation + hull caches; null = <out>/stability_cache
    stability_potential: str | None = None  #: universal potential: chgnet or sevennet (mlip7 extra); null = chgnet
    stability_hull: str | None = None  #: hull: reference (the reference corpus relaxed with the potential) or dft (the DFT-anchored hull, only samples relaxed); null = reference
    stability_model: str | None = None  #: CHGNet checkpoint version; null = the StabilitySettings default
    stability_fmax: float | None = None  #: relaxation force threshold, eV/A; null = the StabilitySettings default
    stability_max_steps: int | None = None  #: most relaxation steps per structure; null = the StabilitySettings default
    stability_time_limit_s: float | None = None  #: seconds per relaxation; null = the StabilitySettings default
    stability_workers: int | None = None  #: processes for the relaxations; null or -1 = `workers`
    stability_max_refs_per_system: int | None = None  #: most reference entries relaxed per chemical system for the hull; null = the StabilitySettings default

    def check_settings(self) -> CheckSettings:
        return self.checks

    def n_workers(self) -> int:
        return default_workers() if self.workers < 0 else self.workers


DEFINITIONS: dict[str, str] = {
    "parse": "canonical text parses and the structure is re-derived from the stated space group",
    "cell": "cell lengths in [min_length, max_length] A, angles in [min_angle, max_angle] degrees, volume / abc >= "
    "min_cell_flatness and >= min_volume_per_site A^3 per site (gate before any neighbour search)",
    "volume": "stated _cell_volume within volume_rtol of the stated cell's volume (informational, in no aggregate)",
    "formula": "data_ formula, _chemical_formula_structural and Z agree (strict rule)",
    "multiplicity": "stated site multiplicities equal those the space group generates (strict rule)",
    "sites_formula": "sum of multiplicity x occupancy per element equals the data_ formula within formula_atol (strict rule)",
    "space_group": "stated space group number equals SpacegroupAnalyzer(symprec, angle_tolerance) of the structure (strict rule)",
    "bond_length": "bond-length score >= bond_cutoff: CrystalNN bonds within 1 +- bond_tolerance of summed radii, own "
    "images included, disorder as the majority element, nearest neighbour where CrystalNN finds none (strict rule)",
    "structural": "all interatomic distances >= min_distance A and volume >= min_volume A^3 (CDVAE/DiffCSP)",
    "compositional": "smact_validity with Pauling test, alloys valid, oxidation states smact_oxidation_states (CDVAE/DiffCSP)",
    "crystallm_sensible": "cell lengths in [0.5, 1000] A and angles in [10, 170] degrees (CrystaLLM is_sensible)",
    "crystallm_formula": "data_, _chemical_formula_sum and _chemical_formula_structural have one reduced formula (CrystaLLM)",
    "crystallm_multiplicity": "stated multiplicities per element equal the formula's counts, occupancies ignored (CrystaLLM)",
    "crystallm_space_group": "stated H-M symbol equals SpacegroupAnalyzer(symprec=0.1)'s (CrystaLLM)",
    "crystallm_bond_length": "CrystaLLM bond_length_reasonableness_score >= 1.0 (its radii and tolerances; disordered "
    "sites, missing radii and no bonds fail)",
    "consistent": "self-consistency as CrystaLLM defines it: sensible and is_valid (every crystallm_* check passes; "
    "cifllm.evaluation.crystallm_consistency)",
    "consistent_strict": "this project's stricter self-consistency: formula (with Z), multiplicity, sites_formula, "
    "space_group and bond_length all pass",
    "valid": "parse, cell, structural and compositional all pass (CDVAE/DiffCSP validity)",
    "valid_all": "valid and consistent (CrystaLLM)",
    "unique": "valid and not matched (StructureMatcher ltol 0.2, stol 0.3, angle_tol 5) by an earlier valid sample",
    "novel": "valid and matched by no reference structure of the same reduced formula (same matcher, MatterGen)",
    "unique_novel": "unique and novel",
    "match@k": "share of CSP targets with a valid prediction among their first k samples that matches the target "
    "(StructureMatcher ltol 0.3, stol 0.5, angle_tol 10; DiffCSP/CrystaLLM)",
    "rmse@k": "mean over matched targets of the smallest normalized RMS displacement among the first k samples",
}


def _failure_verdict(text: str, reason: str, detail: str) -> dict[str, Any]:
    """The record of a sample whose checks timed out or crashed: every check failed with that reason."""
    checks = {name: {"ok": False if name == "parse" else None, "reason": reason if name == "parse" else f"skipped_{reason}", "detail": detail[:300], "value": None} for name in CHECK_NAMES}
    return {
        "checks": checks,
        "consistent": False,
        "consistent_strict": False,
        "valid": False,
        "valid_all": False,
        "reason": reason,
        "reduced_formula": None,
        "n_elements": None,
        "n_sites": None,
        "sg_stated": None,
        "sg_detected": None,
        "density": None,
        "time_s": 0.0,
    }


class _CheckTask:
    """Picklable callable: text -> verdict dict."""

    def __init__(self, settings: CheckSettings) -> None:
        self.settings = settings

    def __call__(self, text: str) -> dict[str, Any]:
        return check_sample(text, self.settings).to_json()


def evaluate_texts(
    texts: list[str],
    settings: CheckSettings = CheckSettings(),
    workers: int = 0,
    time_limit_s: float = 60.0,
    reference: ReferenceIndex | None = None,
    uniqueness: bool = True,
    progress: Callable[[str, int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Checks (+ uniqueness among the valid texts, + novelty against ``reference``) for every text, in order.

    Returns one verdict dict per text (:meth:`SampleVerdict.to_json` plus ``unique``, ``duplicate_of``, ``novel``,
    ``novel_match``). ``progress(stage, total)`` returns a per-item callback (or None).
    """
    verdicts: list[dict[str, Any]] = [{} for _ in texts]
    cb = progress("checks", len(texts)) if progress else None
    for i, v in map_with_time_limit(
        _CheckTask(settings), texts, time_limit_s, workers, on_failure=lambda t, r, d: _failure_verdict(t, r, d), progress=cb
    ):
        verdicts[i] = v
    valid = [i for i, v in enumerate(verdicts) if v["valid"]]
    buckets: dict[str, list[int]] = {}
    for i in valid:
        buckets.setdefault(verdicts[i]["reduced_formula"], []).append(i)
    for v in verdicts:
        v.update(unique=None, duplicate_of=None, novel=None, novel_match=None)
    if uniqueness and valid:
        for members in buckets.values():
            if len(members) == 1:  # alone in its formula bucket: unique without a comparison
                verdicts[members[0]]["unique"] = True
        member_lists = [m for m in buckets.values() if len(m) > 1]
        items = [[texts[i] for i in members] for members in member_lists]
        cb = progress("uniqueness", len(items)) if progress else None
        for b, first in map_with_time_limit(
            uniqueness_task, items, lambda it: time_limit_s * len(it), workers, on_failure=lambda it, r, d: [None] * len(it), progress=cb
        ):
            members = member_lists[b]
            for k, f in enumerate(first):
                i = members[k]
                if f is None:
                    verdicts[i]["unique"] = None
                    verdicts[i]["uniqueness_error"] = "timeout"
                else:
                    verdicts[i]["unique"] = f == k
                    verdicts[i]["duplicate_of"] = None if f == k else members[f]
    if reference is not None and valid:
        formulas = [verdicts[i]["reduced_formula"] for i in valid]
        results = novelty_stage([texts[i] for i in valid], formulas, reference, workers, time_limit_s, progress)
        for i, (novel, match) in zip(valid, results, strict=True):
            verdicts[i]["novel"] = novel
            verdicts[i]["novel_match"] = match
            if novel is None:
                verdicts[i]["novelty_error"] = "timeout or error"
    return verdicts


def novelty_stage(
    texts: list[str],
    formulas: list[str],
    reference: ReferenceIndex,
    workers: int = 0,
    time_limit_s: float = 60.0,
    progress: Callable[[str, int], Any] | None = None,
) -> list[tuple[bool | None, str | None]]:
    """Novelty of each (valid) text against ``reference``: (novel, id of the matching reference or None).

    A text whose reduced formula has no reference is novel without a comparison; the others are compared with their
    bucket only, in ``workers`` processes, ``time_limit_s`` per text (a timeout gives ``(None, None)``).
    """
    out: list[tuple[bool | None, str | None]] = [(True, None)] * len(texts)
    compare = [k for k, f in enumerate(formulas) if reference.buckets.get(f)]
    items = [(texts[k], reference.bucket(formulas[k])) for k in compare]
    cb = progress("novelty", len(items)) if progress else None
    for j, hit in map_with_time_limit(novelty_task, items, time_limit_s, workers, on_failure=lambda it, r, d: -2, progress=cb):
        k = compare[j]
        if hit == -2:
            out[k] = (None, None)
        else:
            out[k] = (hit == -1, None if hit == -1 else reference.bucket_ids(formulas[k])[hit])
    return out


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def prompt_adherence(sample: dict[str, Any], verdict: dict[str, Any]) -> bool | None:
    """Does the sample's structure have its composition prompt's reduced composition? None without a composition
    prompt; False when the sample has no parsed structure (it cannot adhere)."""
    meta = sample.get("prompt_meta") if isinstance(sample.get("prompt_meta"), dict) else {}
    want = meta.get("reduced_formula") or meta.get("formula")
    if not want:
        return None
    got = verdict.get("reduced_formula")
    if not got:
        return False
    try:
        return Composition(got).reduced_composition.almost_equals(Composition(want).reduced_composition)
    except (ValueError, TypeError):
        return False


def consistency_agreement(verdicts: list[dict[str, Any]]) -> dict[str, int]:
    """How CrystaLLM's self-consistency (``consistent``) and the strict rule (``consistent_strict``) split the samples:
    both pass, only CrystaLLM's, only the strict one, neither."""
    pairs = Counter((bool(v.get("consistent")), bool(v.get("consistent_strict"))) for v in verdicts)
    return {"both": pairs[True, True], "crystallm_only": pairs[True, False], "strict_only": pairs[False, True], "neither": pairs[False, False]}


def summarize(
    verdicts: list[dict[str, Any]], samples: list[dict[str, Any]] | None = None, novelty_measured: bool = True
) -> dict[str, Any]:
    """Counts, rates and failure reasons over all samples (rates over all samples unless named otherwise).

    With ``samples``, every verdict gets ``prompt_adherence`` (see :func:`prompt_adherence`); its rate is over the
    composition-prompted samples, and ``valid_not_adherent`` counts valid samples that ignore their prompt. Without
    a novelty measurement (``novelty_measured=False``) the novel rates are None ("not measured"), never 0."""
    n = len(verdicts)
    counts: dict[str, int] = {}
    if samples:
        for smp, v in zip(samples, verdicts, strict=True):
            v["prompt_adherence"] = prompt_adherence(smp, v)
    for name in CHECK_NAMES:
        counts[name] = sum(v["checks"][name]["ok"] is True for v in verdicts)
    for agg in ("consistent", "consistent_strict", "valid", "valid_all"):
        counts[agg] = sum(bool(v.get(agg)) for v in verdicts)
    counts["unique"] = sum(v.get("unique") is True for v in verdicts)
    counts["novel"] = sum(v.get("novel") is True for v in verdicts)
    counts["unique_novel"] = sum(v.get("unique") is True and v.get("novel") is True for v in verdicts)
    counts["timeouts"] = sum(v["reason"] in ("timeout", "worker_crash", "error") for v in verdicts)
    rates = {k: _rate(c, n) for k, c in counts.items()}
    prompted = [v for v in verdicts if v.get("prompt_adherence") is not None]
    counts["composition_prompted"] = len(prompted)
    counts["prompt_adherent"] = sum(v["prompt_adherence"] is True for v in prompted)
    counts["valid_not_adherent"] = sum(bool(v["valid"]) and v["prompt_adherence"] is False for v in prompted)
    rates["prompt_adherence"] = _rate(counts["prompt_adherent"], len(prompted))
    if not novelty_measured:
        counts["novel"] = counts["unique_novel"] = None  # type: ignore[assignment]
        rates["novel"] = rates["unique_novel"] = None
    nv = counts["valid"]
    reasons: dict[str, dict[str, int]] = {}
    for name in CHECK_NAMES:
        c = Counter(v["checks"][name]["reason"] for v in verdicts if v["checks"][name]["ok"] is False)
        if c:
            reasons[name] = dict(c.most_common())
    first = Counter(v["reason"] or "ok" for v in verdicts)
    out: dict[str, Any] = {
        "n_samples": n,
        "counts": counts,
        "rates": rates,
        "rates_among_valid": {
            "unique": _rate(counts["unique"], nv),
            "novel": _rate(counts["novel"], nv) if novelty_measured else None,
            "unique_novel": _rate(counts["unique_novel"], nv) if novelty_measured else None,  # type: ignore[arg-type]
            "consistent": _rate(sum(bool(v["valid_all"]) for v in verdicts), nv),
            "consistent_strict": _rate(sum(bool(v["valid"]) and bool(v.get("consistent_strict")) for v in verdicts), nv),
        },
        "consistency_agreement": consistency_agreement(verdicts),
        "failure_reasons": reasons,
        "first_failure": dict(first.most_common()),
    }
    if samples:
        toks = [int(s.get("n_tokens") or 0) for s in samples]
        out["generation"] = {
            "finished_at_eos": sum(bool(s.get("finished")) for s in samples),
            "mean_tokens": sum(toks) / len(toks) if toks else None,
            "engines": dict(Counter(str(s.get("engine")) for s in samples)),
        }
    return out


def evaluate(cfg: EvalConfig, progress: bool = True, log: Callable[[str], None] = print, reference: Reference | None = None) -> Path:
    """Run the evaluate stage; returns the output folder. ``reference``: a loaded :class:`Reference` (e.g. from
    Structures given to :func:`cifllm.evaluate`) used instead of ``cfg.reference``.

    Every input (samples, reference, ground truth, the stability extra) is read and checked before anything is
    written, and the outputs (``config.yaml``, ``checks.jsonl``, ``metrics.json``, the report) are written only when
    the run has succeeded, so a failed run leaves an earlier run's folder as it was."""
    from tqdm.auto import tqdm


    if not cfg.samples:
        raise ValueError("samples= is required (a `cifllm sample` run folder or its samples.jsonl)")
    if cfg.stability:

        potential_key(cfg.stability_model or "", cfg.stability_potential or "chgnet")  # the extra is installed (else a one-line error)
    src = Path(cfg.samples)
    run_dir = src if src.is_dir() else src.parent
    out = Path(cfg.out) if cfg.out else run_dir / EVAL_DIR
    if out.is_file():
        raise CifllmError(f"out={out}: is a file, expected a folder for the evaluation")
    samples = read_samples(src)
    if cfg.max_samples > 0:
        samples = samples[: cfg.max_samples]
    validate_samples(samples, str(src / SAMPLES_FILE if src.is_dir() else src))
    if cfg.ground_truth:
        load_manifest(cfg.ground_truth)  # a missing ground-truth corpus fails now, not after the checks
    texts = [str(s.get("cif_text") or "") for s in samples]
    settings = cfg.check_settings()
    workers = cfg.n_workers()
    t0 = time.perf_counter()
    if reference is None and cfg.reference and (cfg.novelty or cfg.report):
        reference = load_reference(cfg.reference, cfg.reference_split, workers, cfg.time_limit_s, log=log)
    if reference is not None:
        log(f"reference: {len(reference)} structures in {len(reference.index.buckets)} formula buckets ({time.perf_counter() - t0:.1f} s)")
    novelty_ref = reference.index if reference is not None and cfg.novelty else None
    timings: dict[str, float] = {}
    bars: list[Any] = []

    def make_bar(stage: str, total: int) -> Callable[[int], Any]:
        timings[stage] = time.perf_counter()
        bar = tqdm(total=total, desc=f"evaluate: {stage}", unit="item", disable=not progress, mininterval=1.0)
        bars.append(bar)
        return bar.update

    verdicts = evaluate_texts(texts, settings, workers, cfg.time_limit_s, novelty_ref, cfg.uniqueness, progress=make_bar)
    for b in bars:
        b.close()
    stages = list(timings)
    stage_s = {s: round((timings[stages[k + 1]] if k + 1 < len(stages) else time.perf_counter()) - timings[s], 3) for k, s in enumerate(stages)}
    # CSP
    csp: dict[str, Any] | None = None
    csp_rms: dict[str, list[float | None]] = {}
    if cfg.ground_truth:
        t1 = time.perf_counter()
        csp, csp_rms = _csp(cfg, samples, texts, verdicts, workers)
        stage_s["csp"] = round(time.perf_counter() - t1, 3)
    metrics = summarize(verdicts, samples, novelty_measured=novelty_ref is not None)
    metrics["definitions"] = DEFINITIONS
    metrics["settings"] = {**config_to_dict(settings), "matchers": _matcher_settings(), "workers": workers, "time_limit_s": cfg.time_limit_s}
    metrics["reference"] = reference_record(reference, cfg.reference, cfg.reference_split)
    if csp is not None:
        metrics["csp"] = csp
    if cfg.stability:

        t1 = time.perf_counter()
        metrics["stability"] = stability_stage(cfg, samples, texts, verdicts, out, log, make_bar)
        stage_s["stability"] = round(time.perf_counter() - t1, 3)
        for b in bars:
            b.close()
    wall = time.perf_counter() - t0
    metrics["timing"] = {"wall_s": round(wall, 3), "stages_s": stage_s, "samples_per_s": round(len(samples) / wall, 2) if wall > 0 else None, "sampling_s": sampling_seconds(samples)}
    lines = []
    for s, v in zip(samples, verdicts, strict=True):
        rec = {"sample_id": s.get("sample_id"), "prompt_id": s.get("prompt_id"), **v}
        tid = (s.get("prompt_meta") or {}).get("target_id")
        if tid is not None and tid in csp_rms:
            rec["target_id"] = tid
        lines.append(json.dumps(rec))
    ref_stats = _reference_stats(cfg, reference) if cfg.report and reference is not None else None
    out.mkdir(parents=True, exist_ok=True)  # the run succeeded: now its outputs replace an earlier run's
    save_config(cfg, out / CONFIG_FILE)
    atomic_write_text(out / "checks.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    atomic_write_json(out / METRICS_FILE, metrics)
    if cfg.report:
        write_report(out, metrics, verdicts, ref_stats)
    r = metrics["rates"]
    log(
        f"{len(samples)} samples: parse {pct(r['parse'])}, valid {pct(r['valid'])}, consistent (CrystaLLM) {pct(r['consistent'])}, "
        f"consistent (strict) {pct(r['consistent_strict'])}, "
        f"unique {pct(r['unique'])}, novel {pct(r['novel'], NOT_MEASURED)}"
        + (f", prompt adherence {pct(r['prompt_adherence'])}" if r.get("prompt_adherence") is not None else "")
        + f" ({wall:.1f} s) -> {out}"
    )
    if csp:
        log("CSP: " + ", ".join(f"{k} {v:.3f}" for k, v in csp.items() if k.startswith("match@") and v is not None))
    return out


def _matcher_settings() -> dict[str, Any]:
    return {"novelty_uniqueness": MATCHER_SETTINGS["novelty"], "csp": MATCHER_SETTINGS["csp"]}


def _csp(cfg: EvalConfig, samples: list[dict[str, Any]], texts: list[str], verdicts: list[dict[str, Any]], workers: int) -> tuple[dict[str, Any], dict[str, list[float | None]]]:
    """Pair samples with ground truth through ``prompt_meta.target_id`` and compute match@1, match@k and RMSE."""
    ds = load_corpus(cfg.ground_truth).select_columns(["id", "text"])  # type: ignore[arg-type]
    truth = dict(zip(ds["id"], ds["text"], strict=True))
    preds: dict[str, list[tuple[int, str | None]]] = {}
    unknown = 0
    for s, t, v in zip(samples, texts, verdicts, strict=True):
        tid = (s.get("prompt_meta") or {}).get("target_id")
        if tid is None:
            continue
        if tid not in truth:
            unknown += 1
            continue
        preds.setdefault(tid, []).append((int(s.get("sample_index") or 0), t if v["valid"] else None))
    k = cfg.csp_k or max((len(v) for v in preds.values()), default=1)
    items = [(tid, [p for _, p in sorted(v, key=lambda x: x[0])][:k]) for tid, v in preds.items()]
    rms: dict[str, list[float | None]] = {}
    for i, r in map_with_time_limit(
        csp_match_task, [(truth[tid], ps) for tid, ps in items], lambda it: cfg.time_limit_s * max(1, len(it[1])), workers, on_failure=lambda it, r, d: [None] * len(it[1])
    ):
        rms[items[i][0]] = r
    ks = sorted({1, k})
    out = csp_metrics(rms, ks)
    out.update(k=k, targets_missing_in_ground_truth=unknown, n_predictions=sum(len(p) for _, p in items))
    return out, rms


def reference_record(reference: Reference | None, given: Any = None, split: str | None = None) -> dict[str, Any]:
    """The ``metrics.json`` record of the reference: ``corpus`` (the folder given, or None), ``split``, ``n`` (0 when
    there is none), plus :meth:`Reference.summary` (source, structures given, dropped by reason)."""
    rec: dict[str, Any] = {"corpus": str(given) if isinstance(given, (str, Path)) and given else None, "split": split, "n": len(reference) if reference else 0}
    if reference is not None:
        rec.update(reference.summary())
    return rec


def _reference_stats(cfg: EvalConfig, reference: Reference) -> dict[str, list[float]] | None:
    """Density (g/cm^3, from text), number of elements and space-group numbers of up to ``reference_plot_rows``
    reference structures (seeded random subset)."""
    texts = list(reference.index.texts)
    if len(texts) > cfg.reference_plot_rows:
        texts = random.Random(0).sample(texts, cfg.reference_plot_rows)
    dens: list[float] = []
    n_el: list[float] = []
    sgs: list[float] = []
    for t in texts:
        try:
            parsed = parse_canonical(t)
            n_elements = len(Composition(parsed.formula).elements)
        except Exception:  # a reference text this version cannot read: left out of the plots
            continue
        d = text_density(parsed)
        if d is not None:
            dens.append(d)
        n_el.append(float(n_elements))
        sgs.append(float(parsed.sg_number))
    return {"density": dens, "n_elements": n_el, "sg_number": sgs}


__all__ += ["DEFINITIONS", "summarize", "CONSISTENCY_CHECKS", "VALIDITY_CHECKS"]
