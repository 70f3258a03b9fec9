"""The Sim2Real transfer sweep (``protocol: early_stop``, the default of ``cifllm scaling`` / ``make scaling``):
pretrain on nested subsets of *computed* structures until the validation loss stops improving, fine-tune each model
on a *measured* property, fit ``err(n) = D n^-alpha + C`` (Minami et al., npj Comput. Mater. 11, 146 (2025)).

One run = one (size n, repeat r):

1. **Pool** (:func:`build_pool`, recorded in ``pool.json``): corpus rows with at least one source in
   ``include_sources`` (DFT-computed databases: MP-20, MPTS-52, the MP time split, AFLOW AEL-AGL, JARVIS-DFT supercon,
   MaterialMini, LeMat-Bench's MP/Alexandria/OQMD/JARVIS sample); rows only from other sources are excluded and
   counted per source (SuperCon3D: ICSD-derived experimental structures; Perov-5 / Carbon-24 and their JARVIS copies:
   hypothetical enumerations; 3DSC_MP: MP structures, but chosen *because* SuperCon measured their Tc, the downstream
   label, so they are left out by default). Rows whose reduced formula (or id) is in the downstream set (any split)
   are dropped (``downstream_overlap``), as are the test side of the generative task (``task_exclude``). The
   corpus ``val`` rows of the pool (first ``val_rows``) are the fixed validation set of every run.
2. **Nested subsets**: repeat r shuffles the pool's training rows with seed ``seed + r``; size n takes the first n.
3. **Pretraining until converged** (:mod:`cifllm.scaling.protocol`): step cap growing with n, early stopping on the
   fixed validation set, best checkpoint restored; steps run, best step, best val loss and stop reason per run.
4. **Downstream, measured** (:mod:`cifllm.scaling.downstream`): full fine-tune + regression head on SuperCon3D's
   fixed train split (val split picks the epoch), MAE in K and MAE of log1p(Tc) on its fixed test split.
5. **Downstream, generative** (``generative_metric``): LoRA fine-tune on the task (``task``, default ``tc_top``) and
   the test NLL (nats/token) of its test CIFs, as in the fixed-step protocol.

Reference rows (``kind: reference``, size 0): ``scratch`` (the same head and fine-tuning budget on a randomly
initialised model of the same shape, one per repeat: the n = 0 point) and ``gbt_composition`` / ``gbt_oracle`` (the
bench oracle's gradient-boosted trees on composition features, and on composition + cell features).

Files (``out``): ``config.yaml``, ``pool.json``, ``runs.jsonl`` (run and reference rows, appended as they finish),
``<metric>/`` (``REPORT.md``, ``scaling.png``, ``scaling_fit.json`` of each metric, :mod:`cifllm.scaling.report`),
``transfer_scaling.png`` (the slide: every metric against n with its fit and the reference lines),
``transfer_fit.json`` and ``REPORT.md`` (the summary). Finished rows are skipped when the sweep is run again; an
interrupted pretraining resumes from its last checkpoint.

Budget and model size (issue 32): the ``tiny`` preset (0.14 M parameters), batch 16, a constant learning rate after
100 warm-up steps, and a step cap of 200 passes (at least 2,000, at most 40,000 steps) that only bounds the cost: the
stop comes from the validation loss (``eval/scaling_converged.yaml``). ``mini`` (4.9 M) trains >= 3x slower per token on
CPU (~3k tokens/s on 2 idle cores against ~10k for ``tiny`` with both busy, ``benchmarks/results/train_cpu.md``) and
would need more steps to converge, so every run would cost several times more on 2 shared cores; the pilot that fixed the rule (steps to convergence and CPU seconds per step at 625 and 5,000 CIFs) is in BENCHMARKS.md,
"Converged Sim2Real sweep" and ``benchmarks/results/scaling-converged/pilot/``. The issue-17 budget (``lr_schedule:
cosine``, a cap of ~10 passes, at most 2,000 steps) ended every run on its cap.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifllm.bench.splits import load_split
from cifllm.bench.tasks import load_task
from cifllm.conditioning import format_property_lines, property_values
from cifllm.core.config import load_config
from cifllm.core.records import (
    ADAPTER_DIR,
    ADAPTER_RECORD,
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_DIR,
    SCALING_REPORT,
    SWEEP_ROWS,
)
from cifllm.data.corpus import load_corpus, load_manifest
from cifllm.evaluation.nll import HYPOTHETICAL_SOURCES, nll_per_token
from cifllm.modeling import max_positions_for
from cifllm.scaling.downstream import PropertySet, finetune_regressor, gbt_baseline, load_downstream, scratch_backbone
from cifllm.scaling.fit import (
    ScalingError,
    assess_power_law,
    compare_models,
    fit_scaling,
    holdout_check,
    size_for_target,
)
from cifllm.scaling.protocol import STOP_EARLY, nested_subset_corpus, plan_steps, pretrain_early_stopping
from cifllm.scaling.report import write_report
from cifllm.tokenization import load_tokenizer
from cifllm.training.config import PretrainConfig
from cifllm.training.finetune import FinetuneConfig, finetune
from cifllm.utils import append_jsonl, atomic_write_json, atomic_write_text
from cifllm.utils.files import atomic_write_bytes
from cifllm.utils.resources import resolve_path

__all__ = [
    "COMPUTED_SOURCES",
    "EXPERIMENTAL_SOURCES",
    "METRICS",
    "build_pool",
    "fit_transfer",
    "run_transfer_sweep",
]

#: corpus sources of DFT-computed (relaxed) structures: the default pretraining pool of the Sim2Real sweep
COMPUTED_SOURCES: tuple[str, ...] = (
    "mp_20", "mpts_52", "mp40_time_split", "aflow_ael_agl", "jarvis_supercon_3d", "jarvis_atomgen_supercon", "materialmini", "lemat_baselines",
)
#: corpus sources of experimentally determined structures (ICSD-derived SuperCon3D)
EXPERIMENTAL_SOURCES: tuple[str, ...] = ("supercon3d",)
#: metrics of a run row: name -> (axis label, unit) for the default downstream (measured Tc); :func:`metric_labels`
#: gives them for another property
METRICS: dict[str, tuple[str, str]] = {
    "mae": ("Tc MAE on the held-out test split", "K"),
    "mae_log1p": ("MAE of ln(1 + Tc/K)", "dimensionless"),
    "test_nll": ("test NLL of the task CIFs", "nats/token"),
}


def metric_labels(prop: str = "tc", unit: str = "K") -> dict[str, tuple[str, str]]:
    """:data:`METRICS` for the downstream property ``prop`` measured in ``unit``."""
    if prop == "tc":
        return dict(METRICS)
    return {
        "mae": (f"{prop} MAE on the held-out test split", unit or "n/a"),
        "mae_log1p": (f"MAE of ln(1 + {prop})", "dimensionless"),
        "test_nll": METRICS["test_nll"],
    }
REFERENCES = ("scratch", "gbt_composition", "gbt_oracle")
POOL_FILE = "pool.json"


def _say(msg: str) -> None:
    print(f"[cifllm scaling] {msg}", file=sys.stderr, flush=True)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ScalingError(f"{path}:{i}: malformed JSON line ({exc.msg})") from None
    return out


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (str(row.get("reference") or "run"), int(row["size"]), int(row["repeat"]))


# ------------------------------------------------------------------------------------------------------------ pool


def build_pool(cfg: Any, data: PropertySet, exclude_ids: set[str]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(training rows, fixed validation rows, counts) of the computed-structure pool (module docstring, step 1)."""
    include = set(cfg.include_sources)
    rows = load_corpus(cfg.corpus).to_list()
    formulas, ids = data.formulas, data.ids
    counts: dict[str, Any] = {"corpus_rows": len(rows), "include_sources": sorted(include)}
    excluded: dict[str, int] = {}
    dropped = {"task_exclude": 0, "downstream_overlap": 0}
    kept = []
    for r in rows:
        if r["id"] in exclude_ids:
            dropped["task_exclude"] += 1
            continue
        if not include.intersection(r["sources"]):
            key = "+".join(sorted(r["sources"]))
            excluded[key] = excluded.get(key, 0) + 1
            continue
        if r["reduced_formula"] in formulas or r["id"] in ids:
            dropped["downstream_overlap"] += 1
            continue
        kept.append(r)
    train = [r for r in kept if r["split"] == "train"]
    val = [r for r in kept if r["split"] == "val"][: cfg.val_rows]
    per_source: dict[str, int] = {}
    for r in train:
        for s in r["sources"]:
            per_source[s] = per_source.get(s, 0) + 1
    counts.update(
        excluded_not_computed=dict(sorted(excluded.items(), key=lambda kv: -kv[1])),
        excluded_not_computed_total=sum(excluded.values()),
        excluded_kinds={
            "experimental": sorted(s for s in {x for k in excluded for x in k.split("+")} if s in EXPERIMENTAL_SOURCES),
            "hypothetical": sorted(s for s in {x for k in excluded for x in k.split("+")} if s in HYPOTHETICAL_SOURCES),
            "other": sorted(s for s in {x for k in excluded for x in k.split("+")} if s not in EXPERIMENTAL_SOURCES + HYPOTHETICAL_SOURCES),
        },
        dropped=dropped,
        pool_train=len(train),
        pool_val_used=len(val),
        pool_train_per_source=dict(sorted(per_source.items())),
        mean_tokens_train=round(float(np.mean([r["n_tokens"] for r in train])), 1) if train else None,
    )
    return train, val, counts


# ------------------------------------------------------------------------------------------------------------ runs


def _pretrain_config(cfg: Any, extra: dict[str, Any] | None = None) -> PretrainConfig:
    """``pretrain_config`` <- ``pretrain_overrides`` <- ``extra`` (the per-run values)."""
    return load_config(PretrainConfig, resolve_path(cfg.pretrain_config, folders=("configs/train",)), cfg.pretrain_overrides, extra=extra)


def _task_parts(cfg: Any) -> tuple[Any, set[str], list[str]]:
    """(task, ids the task keeps out of pretraining, test texts with property lines) for the generative metric."""
    task = load_task(cfg.task)
    d = Path(cfg.splits) / task.name
    if not (d / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{d}: no split for task {task.name}; build it with `cifllm split` (or set generative_metric=false)")
    excl = set((d / "pretrain_exclude.txt").read_text().split())
    rows = load_split(d, "test")
    if cfg.test_rows:
        rows = rows[: cfg.test_rows]
    names = tuple(task.conditioning)
    texts = ["".join(ln + "\n" for ln in format_property_lines(property_values(r, names, task.property or None))) + r["text"] for r in rows]
    return task, excl, texts


def _regression(model_dir: Path | None, cfg: Any, data: PropertySet, seed: int, preset: str, mpe: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    if model_dir is None:
        model, tok = scratch_backbone(preset, mpe, seed)
    else:
        model, tok = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), load_tokenizer(model_dir)
    return finetune_regressor(model, tok, data, cfg.downstream, seed=seed, threads=cfg.threads)


def _one_run(cfg: Any, size: int, repeat: int, train: list[dict], val: list[dict], manifest: dict, data: PropertySet, gen: tuple | None) -> dict[str, Any]:
    t0, c0 = time.time(), time.process_time()
    seed = cfg.seed + repeat
    run = cfg.out_dir / "runs" / f"{size}-r{repeat}"
    corpus_dir = nested_subset_corpus(run, train, val, manifest, size, seed, {"protocol": "early_stop", "repeat": repeat})
    base = _pretrain_config(cfg)
    plan = plan_steps(size, base.batch_size * base.grad_accum, cfg.early_stop)
    pcfg = _pretrain_config(cfg, {**plan.overrides(), "corpus": str(corpus_dir), "out": str(run / "pretrain"), "seed": seed, "progress": cfg.progress})
    model = run / "pretrain" / MODEL_DIR
    t_pre, c_pre = time.time(), time.process_time()
    if not (model / "config.json").is_file():
        pretrain_early_stopping(pcfg, cfg.early_stop.patience, cfg.early_stop.min_delta, resume=True)
    pre = json.loads((model / "cifllm_run.json").read_text())
    es = pre["early_stopping"]
    pretrain_s = round(time.time() - t_pre, 1)
    pretrain_cpu_s = round(time.process_time() - c_pre, 1)
    t_down = time.time()
    reg = _regression(model, cfg, data, seed, pcfg.preset, int(pre["max_position_embeddings"]))
    row: dict[str, Any] = {
        "kind": "run", "size": size, "repeat": repeat, "seed": seed, "metric": "mae", "value": reg["mae"], "status": "ok",
        "mae": reg["mae"], "mae_log1p": reg["mae_log1p"], "test_nll": None,
        "preset": pre["preset"], "n_parameters": pre["n_parameters"],
        "pretrain": {
            "max_steps": es["max_steps"], "eval_steps": es["eval_steps"], "steps_run": es["steps_run"], "best_step": es["best_step"],
            "best_val_loss": es["best_val_loss"], "init_val_loss": es["init_val_loss"], "stop_reason": es["stop_reason"],
            "restored_best": es["restored_best"], "epochs_run": es["epochs_run"], "tokens_seen": pre["tokens_seen"],
            "train_s": pre["train_seconds_this_session"], "wall_s": pretrain_s, "cpu_s_this_session": pretrain_cpu_s,
            "resumed_from": pre.get("resumed_from"), "converged": es["stop_reason"] == STOP_EARLY,
            "lr_schedule": cfg.early_stop.lr_schedule, "val_curve": es.get("val_curve"),
            "best_epoch": round(es["best_step"] * plan.per_step / size, 3) if es.get("best_step") is not None else None,
        },
        "regression": {k: v for k, v in reg.items() if k not in ("mae", "mae_log1p")},
        "regression_wall_s": round(time.time() - t_down, 1),
    }
    if gen is not None:
        task, _, texts = gen
        t_gen = time.time()
        fdir = run / "finetune"
        if not (fdir / ADAPTER_DIR / ADAPTER_RECORD).is_file():
            if fdir.exists():
                shutil.rmtree(fdir)
            fcfg = load_config(
                FinetuneConfig, resolve_path(cfg.finetune_config, folders=("configs/train",)), cfg.finetune_overrides,
                extra={"task": cfg.task, "base": str(model), "splits": cfg.splits, "out": str(fdir), "seed": seed, "progress": cfg.progress},
            )
            finetune(fcfg)
        nll = nll_per_token(model, texts, adapter=fdir / ADAPTER_DIR)
        if nll["n_skipped"]:
            raise ValueError(f"{nll['n_skipped']} test CIFs of task {task.name} are longer than the run's context; set max_position_embeddings in pretrain_overrides")
        row.update(test_nll=nll["nll"], test_tokens=nll["n_tokens"], test_texts=nll["n_texts"], generative_wall_s=round(time.time() - t_gen, 1))
    row["wall_s"] = round(time.time() - t0, 1)
    row["cpu_s_this_session"] = round(time.process_time() - c0, 1)  # CPU seconds of this process (threads=1: one core)
    if not all(math.isfinite(row[m]) for m in METRICS if row.get(m) is not None):
        row["status"] = "non_finite"
    if not cfg.keep_models:
        shutil.rmtree(run)
    return row


def _reference_rows(cfg: Any, data: PropertySet, done: set, preset: str, mpe: int, repeats: list[int]) -> list[dict[str, Any]]:
    """The missing reference rows: the two GBT rows (with repeat 0) and the n = 0 row of each of ``repeats``."""
    rows = []
    for name in ("gbt_composition", "gbt_oracle"):
        if (name, 0, 0) in done or 0 not in repeats:
            continue
        t0 = time.time()
        res = gbt_baseline(data, "composition" if name == "gbt_composition" else "oracle", log_target=cfg.downstream.log_target, seed=cfg.seed)
        rows.append({"kind": "reference", "reference": name, "size": 0, "repeat": 0, "seed": cfg.seed, "status": "ok", "mae": res["mae"], "mae_log1p": res["mae_log1p"], "test_nll": None, "detail": res, "wall_s": round(time.time() - t0, 1)})
    for r in repeats:
        if ("scratch", 0, r) in done:
            continue
        t0 = time.time()
        reg = _regression(None, cfg, data, cfg.seed + r, preset, mpe)
        rows.append({
            "kind": "reference", "reference": "scratch", "size": 0, "repeat": r, "seed": cfg.seed + r, "status": "ok", "preset": preset,
            "mae": reg["mae"], "mae_log1p": reg["mae_log1p"], "test_nll": None,
            "regression": {k: v for k, v in reg.items() if k not in ("mae", "mae_log1p")}, "wall_s": round(time.time() - t0, 1),
        })
    return rows


def run_transfer_sweep(cfg: Any) -> Path:
    """Run every missing row of the early-stopping sweep ``cfg`` (a ``ScalingConfig``), then fit (unless ``only``)."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    data = load_downstream(cfg.corpus, cfg.downstream)
    gen = _task_parts(cfg) if cfg.generative_metric else None
    train, val, counts = build_pool(cfg, data, gen[1] if gen else set())
    base = _pretrain_config(cfg)
    per_step = base.batch_size * base.grad_accum
    sizes = sorted(set(cfg.sizes) | ({len(train)} if cfg.full_pool else set()))
    if sizes[0] < per_step:
        raise ValueError(f"size {sizes[0]} is smaller than one pretraining batch ({per_step} CIFs per step): no step could be made")
    if sizes[-1] > len(train):
        raise ValueError(f"size {sizes[-1]} is larger than the computed-structure pool ({len(train)} training CIFs; {json.dumps(counts['dropped'])} dropped)")
    if not val:
        raise ValueError(f"{cfg.corpus}: the computed-structure pool has no val rows (needed for early stopping)")
    plans = {n: plan_steps(n, per_step, cfg.early_stop) for n in sizes}
    counts["downstream"] = {**data.summary(), "unit": cfg.downstream.unit}
    counts["step_plans"] = {str(n): {"max_steps": p.max_steps, "eval_steps": p.eval_steps, "warmup_steps": p.warmup_steps, "epochs_at_cap": round(p.epochs_at_cap, 2)} for n, p in plans.items()}
    atomic_write_json(out / POOL_FILE, counts)
    _say(
        f"pool: {len(train)} computed training CIFs ({counts['excluded_not_computed_total']} rows of other sources excluded, "
        f"{counts['dropped']['downstream_overlap']} downstream-formula overlaps dropped); downstream {data.target}: "
        f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test"
    )
    runs_file = out / SWEEP_ROWS
    done = {_key(r) for r in _read_rows(runs_file) if r.get("status") == "ok"}
    mpe = base.max_position_embeddings or max_positions_for(max(r["n_tokens"] for r in train + val))
    todo = [(s, r) for r in range(cfg.repeats) for s in sizes]
    ref_repeats = list(range(cfg.repeats))
    if cfg.only:  # one cluster job per run; the job of the smallest size also computes its repeat's reference rows
        a, b = (int(x) for x in cfg.only.split(":"))
        todo, ref_repeats = [(a, b)], [b] if a == sizes[0] else []
        if a not in plans:
            raise ValueError(f"only={cfg.only}: size {a} is not one of sizes {sizes}")
    for row in _reference_rows(cfg, data, done, base.preset, mpe, ref_repeats):
        append_jsonl(runs_file, row)
        _say(f"reference {row['reference']} (repeat {row['repeat']}): MAE {row['mae']:.3f} K, log1p MAE {row['mae_log1p']:.4f}")
    for size, repeat in todo:
        if ("run", size, repeat) in done:
            _say(f"size {size} repeat {repeat}: done, skipped")
            continue
        _say(f"size {size} repeat {repeat}: pretrain (cap {plans[size].max_steps} steps, eval every {plans[size].eval_steps}) -> regression -> test NLL")
        row = _one_run(cfg, size, repeat, train, val, load_manifest(cfg.corpus), data, gen)
        append_jsonl(runs_file, row)
        _say(f"size {size} repeat {repeat}: MAE {row['mae']:.3f} K, log1p MAE {row['mae_log1p']:.4f}, test NLL {row['test_nll']} ({row['wall_s']} s)")
    if not cfg.only:
        fit_transfer(out, target=cfg.target, meta={"task": cfg.task, "config": str(out / CONFIG_FILE)})
    return out


# ------------------------------------------------------------------------------------------------------------- fit


def _references(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name in REFERENCES:
        vals = [float(r[metric]) for r in rows if r.get("reference") == name and r.get(metric) is not None]
        if vals:
            out[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def _downstream_info(out: Path) -> dict[str, Any]:
    pool = json.loads((out / POOL_FILE).read_text()) if (out / POOL_FILE).is_file() else {}
    return dict(pool.get("downstream") or {})


def fit_transfer(
    out: str | Path, target: float | None = None, meta: dict[str, Any] | None = None, n_boot: int = 1000, include_capped: bool = False
) -> dict[str, Path]:
    """Fit every metric of ``out/runs.jsonl`` (run rows; reference rows are drawn, not fitted) and write the
    per-metric reports, ``transfer_fit.json``, ``transfer_scaling.png``, ``val_curves.png`` and ``REPORT.md``.
    ``target`` is a downstream MAE (property units) to reach; without it the target is the composition baseline's MAE
    (how much computed data the model needs to match the trees). Runs that stopped on the step cap (not converged) are
    left out of the fit and listed, unless ``include_capped``."""
    out = Path(out)
    rows = [r for r in _read_rows(out / SWEEP_ROWS) if r.get("status") == "ok"]
    all_runs = [r for r in rows if r.get("kind") == "run"]
    if not all_runs:
        raise ScalingError(f"{out / SWEEP_ROWS}: no finished runs to fit")
    capped = [r for r in all_runs if (r.get("pretrain") or {}).get("stop_reason") != STOP_EARLY]
    runs = all_runs if include_capped else [r for r in all_runs if r not in capped]
    info = _downstream_info(out)
    labels = metric_labels(info.get("property") or "tc", info.get("unit") or "K")
    sizes_done = sorted({r["size"] for r in runs})
    summary: dict[str, Any] = {
        "meta": dict(meta or {}), "downstream": info, "metrics": {},
        "convergence": {
            "runs": len(all_runs), "converged": len(all_runs) - len(capped), "fitted": len(runs),
            "step_cap": [[r["size"], r["repeat"]] for r in capped], "capped_in_fit": bool(include_capped and capped),
            "sizes_fitted": sizes_done, "repeats_per_size": {str(n): sum(r["size"] == n for r in runs) for n in sizes_done},
        },
    }
    written: dict[str, Path] = {}
    for metric, (label, unit) in labels.items():
        pts = [{"size": r["size"], "repeat": r["repeat"], "metric": metric, "value": float(r[metric])} for r in runs if r.get(metric) is not None]
        refs = _references(rows, metric)
        entry: dict[str, Any] = {"label": label, "unit": unit, "n_points": len(pts), "references": refs}
        if not pts:
            entry["fit"] = None
            measured = any(r.get(metric) is not None for r in all_runs)
            entry["not_measured"] = "no converged run (every run that measured it stopped on the step cap)" if measured else "no run measured this metric"
            summary["metrics"][metric] = entry
            continue
        tgt_value = target if metric == "mae" and target is not None else (refs.get("gbt_composition", {}).get("mean") if metric in ("mae", "mae_log1p") else None)
        try:
            fit = fit_scaling(pts, n_boot=n_boot)
            pure = fit_scaling(pts, n_boot=n_boot, fix_c_zero=True)
            assessment = assess_power_law(pts, fit)
            try:
                hold = holdout_check(pts)
            except ScalingError as exc:  # e.g. 3 sizes: nothing left to fit without the largest
                hold = None
                entry["holdout_skipped"] = str(exc)
            tgt = size_for_target(fit, tgt_value) if tgt_value is not None else None
            m_meta = {**(meta or {}), "metric": f"{metric} ({unit})", "title": f"{label} vs computed pretraining data"}
            written.update({f"{metric}_{k}": v for k, v in write_report(out / metric, pts, fit, assessment=assessment, holdout=hold, target=tgt, comparison=compare_models(pts), pure_fit=pure, meta=m_meta).items()})
            entry.update(
                fit=fit.to_dict(), supported=assessment.supported, reasons=list(assessment.reasons),
                lack_of_fit=_lack_of_fit(assessment),
                target=None if tgt is None else {**tgt.to_dict(), "source": "given" if (metric == "mae" and target is not None) else "gbt_composition"},
            )
            entry["_fit"] = fit
        except ScalingError as exc:
            entry.update(fit=None, fit_error=str(exc), supported=False, reasons=[str(exc)])
        summary["metrics"][metric] = entry
    png = plot_transfer(all_runs, summary, out / "transfer_scaling.png", info)
    curves = plot_val_curves(all_runs, out / "val_curves.png")
    for e in summary["metrics"].values():
        e.pop("_fit", None)
    summary["runs"] = _run_table(all_runs)
    atomic_write_json(out / "transfer_fit.json", _clean(summary))
    atomic_write_text(out / SCALING_REPORT, render_transfer_report(all_runs, rows, summary, png.name, out, curves.name))
    written.update(plot=png, val_curves=curves, json=out / "transfer_fit.json", report=out / SCALING_REPORT)
    return written


def _lack_of_fit(assessment: Any) -> dict[str, Any] | None:
    """The lack-of-fit F-test of an assessment (``None`` when it could not be computed)."""
    checks = dict(assessment.checks)
    if "lack_of_fit_F" not in checks:
        return None
    return {"F": checks["lack_of_fit_F"], "p": checks["lack_of_fit_p"], "df": checks["lack_of_fit_df"]}


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _run_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("max_steps", "steps_run", "best_step", "best_epoch", "best_val_loss", "stop_reason", "epochs_run", "train_s", "lr_schedule")
    return [
        {"size": r["size"], "repeat": r["repeat"], "mae": r["mae"], "mae_log1p": r["mae_log1p"], "test_nll": r.get("test_nll"), "wall_s": r.get("wall_s"), **{k: r.get("pretrain", {}).get(k) for k in keys}}
        for r in sorted(runs, key=lambda r: (r["size"], r["repeat"]))
    ]


def plot_val_curves(runs: list[dict[str, Any]], path: Path) -> Path:
    """One PNG: the pretraining validation loss (nats/token) of every run against optimizer steps (log x), one colour
    per size, the best step marked (a run that hit the step cap ends with a cross)."""
    import io

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sizes = sorted({r["size"] for r in runs})
    cmap = colormaps["viridis"]
    for r in sorted(runs, key=lambda r: (r["size"], r["repeat"])):
        pre = r.get("pretrain") or {}
        curve = [(s, v) for s, v in (pre.get("val_curve") or []) if s > 0]
        if not curve:
            continue
        color = cmap(sizes.index(r["size"]) / max(1, len(sizes) - 1))
        ax.plot([c[0] for c in curve], [c[1] for c in curve], color=color, lw=1, alpha=0.8, label=f"n = {r['size']:,}" if r["repeat"] == min(x["repeat"] for x in runs if x["size"] == r["size"]) else None)
        if pre.get("best_step"):
            ax.scatter([pre["best_step"]], [pre["best_val_loss"]], color=color, s=18, zorder=3)
        if pre.get("stop_reason") != STOP_EARLY:
            ax.scatter([curve[-1][0]], [curve[-1][1]], color="red", marker="x", s=40, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Pretraining validation curves (dot: best step, restored; red x: stopped on the step cap)", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # rows written before issue 32 carry no validation curve
        ax.text(0.5, 0.5, "no validation curve recorded in these rows", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_transfer(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path, info: dict[str, Any] | None = None) -> Path:
    """One PNG: a panel per measured metric against the pretraining size (log axis): runs (converged: grey dots; stopped
    on the step cap: red crosses, not in the fit), per-size mean +- std of the converged runs, the fit
    ``D n^-alpha + C`` with its bootstrap band and C, and the reference rows as horizontal lines."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    shown = [m for m in summary["metrics"] if any(r.get(m) is not None for r in runs)]
    fig = Figure(figsize=(5.2 * len(shown), 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    ref_style = {"scratch": ("#555555", "-.", "n = 0 (same head, random init)"), "gbt_composition": ("#228833", ":", "GBT, composition only"), "gbt_oracle": ("#aa7733", "--", "GBT, composition + cell")}
    for ax, metric in zip(axes, shown):
        e = summary["metrics"][metric]
        ok = (lambda r: (r.get("pretrain") or {}).get("stop_reason") == STOP_EARLY) if not summary.get("convergence", {}).get("capped_in_fit") else (lambda r: True)
        pts = [(r["size"], float(r[metric])) for r in runs if r.get(metric) is not None and ok(r)]
        bad = [(r["size"], float(r[metric])) for r in runs if r.get(metric) is not None and not ok(r)]
        if bad:
            ax.scatter([b[0] for b in bad], [b[1] for b in bad], s=22, color="#cc3311", marker="x", zorder=2, label="stopped on the step cap (not fitted)")
        n = np.asarray([p[0] for p in pts], float)
        y = np.asarray([p[1] for p in pts], float)
        sizes = np.unique(n) if pts else np.unique([b[0] for b in bad]).astype(float)
        if pts:
            means = np.array([y[n == s].mean() for s in np.unique(n)])
            stds = np.array([y[n == s].std(ddof=1) if (n == s).sum() > 1 else 0.0 for s in np.unique(n)])
            ax.scatter(n, y, s=14, color="#999999", alpha=0.6, zorder=2, label="converged runs")
            ax.errorbar(np.unique(n), means, yerr=stds, fmt="o", color="#4477aa", capsize=3, zorder=3, label="mean ± std")
        fit = e.get("_fit")
        if fit is not None:
            grid = np.geomspace(sizes[0] / 1.3, sizes[-1] * 4, 200)
            if fit.n_boot_ok:
                lo, hi = fit.predict_band(grid)
                ax.fill_between(grid, lo, hi, color="#ee6677", alpha=0.15, lw=0)
            a_ci, c_ci = fit.alpha_ci, fit.C_ci
            ax.plot(grid, np.asarray(fit.predict(grid)), color="#ee6677", lw=2, zorder=4,
                    label=f"fit: α = {fit.alpha:.2g} [{a_ci[0]:.2g}, {a_ci[1]:.2g}], C = {fit.C:.3g} [{c_ci[0]:.3g}, {c_ci[1]:.3g}]")
            if fit.C > 0:
                ax.axhline(fit.C, color="#ee6677", ls="--", lw=1, label="transfer gap C (no data closes it)")
        for name, ref in e["references"].items():
            color, ls, label = ref_style[name]
            ax.axhline(ref["mean"], color=color, ls=ls, lw=1.6, label=f"{label}: {ref['mean']:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("computed structures in pretraining, n")
        ax.set_ylabel(f"{e['label']} ({e['unit']})" if e["unit"] != "dimensionless" else e["label"])
        verdict = "power law supported" if e.get("supported") else "no power law supported"
        ax.set_title(f"{e['label']}\n({verdict})", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="best")
    info = info or {}
    what = info.get("origin") or "SuperCon3D"
    fig.suptitle(f"Sim2Real transfer: pretraining on computed crystals, fine-tuning on measured {info.get('property', 'tc')} ({what})", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _g(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{float(x):.{nd}g}"


def _target_text(t: dict[str, Any] | None) -> str:
    if t is None:
        return "n/a"
    ci = t.get("n_ci")
    ci_txt = "" if not ci else f" [{_g(ci[0], 3)}, {'∞' if t.get('n_ci_upper_unbounded') else _g(ci[1], 3)}]"
    unreach = t.get("frac_boot_unreachable")
    boot = "" if unreach is None else f"; {unreach:.0%} of bootstrap fits cannot reach it"
    if t.get("reachable"):
        return f"{_g(t['target'], 4)} ({t['source']}): n ≈ {_g(t['n'], 3)}{ci_txt}{boot}"
    return f"{_g(t['target'], 4)} ({t['source']}): not reachable on this curve (target ≤ C = {_g(t.get('C'), 4)}){boot}"


def render_transfer_report(runs: list[dict], rows: list[dict], summary: dict[str, Any], plot_name: str, out: Path, curves_name: str = "val_curves.png") -> str:
    """The summary ``REPORT.md`` of a transfer sweep (``runs``: every run row, converged or not)."""
    pool = json.loads((out / POOL_FILE).read_text()) if (out / POOL_FILE).is_file() else {}
    ds = pool.get("downstream", {})
    prop = ds.get("property") or "tc"
    name = "Tc" if prop == "tc" else prop
    unit = ds.get("unit") or "K"
    conv = summary.get("convergence", {})
    md = [f"# Sim2Real transfer scaling: computed crystals -> measured {name}", ""]
    md += [f"![transfer scaling]({plot_name})", ""]
    md += [
        "## Convergence", "",
        f"{conv.get('converged')} of {conv.get('runs')} runs stopped on their validation loss (early stopping); "
        f"{len(conv.get('step_cap') or [])} stopped on the step cap and count as **not converged**"
        + (f" ({', '.join(f'n = {a} repeat {b}' for a, b in conv['step_cap'])})" if conv.get("step_cap") else "")
        + ("; they are in the fit (include_capped)" if conv.get("capped_in_fit") else "; the fit uses the converged runs only")
        + f". Runs fitted per size: {json.dumps(conv.get('repeats_per_size'))}.",
        "", f"![validation curves]({curves_name})", "",
    ]
    md += ["## Verdict per metric", "", "| metric | runs | α (95% CI) | D (95% CI) | C (95% CI) | lack of fit | power law? | n for the target (95% CI) | references (mean) |", "|---|---:|---|---|---|---|---|---|---|"]
    for metric, e in summary["metrics"].items():
        refs = "; ".join(f"{k} {_g(v['mean'], 4)}" for k, v in e["references"].items()) or "none measured"
        if e.get("fit") is None:
            why = e.get("fit_error") or e.get("not_measured", "")
            md.append(f"| {metric} ({e['unit']}) | {e['n_points']} | n/a | n/a | n/a | n/a | no fit: {why} | n/a | {refs} |")
            continue
        f = e["fit"]
        lof = e.get("lack_of_fit")
        lof_txt = "not testable" if lof is None else f"F = {_g(lof['F'])}, p = {_g(lof['p'])}"
        verdict = "yes" if e["supported"] else "no: " + "; ".join(e["reasons"])[:300]
        d_ci = f.get("D_ci") or [None, None]
        md.append(
            f"| {metric} ({e['unit']}) | {e['n_points']} | {_g(f['alpha'])} [{_g(f['alpha_ci'][0])}, {_g(f['alpha_ci'][1])}] | "
            f"{_g(f.get('D'))} [{_g(d_ci[0])}, {_g(d_ci[1])}] | "
            f"{_g(f['C'], 4)} [{_g(f['C_ci'][0], 4)}, {_g(f['C_ci'][1], 4)}] | {lof_txt} | {verdict} | {_target_text(e.get('target'))} | {refs} |"
        )
    md += ["", "Per-metric details (fit, assessment, model comparison, held-out size): " + ", ".join(f"[{m}]({m}/{SCALING_REPORT})" for m, e in summary["metrics"].items() if e.get("fit")), ""]
    md += [
        "## Runs", "",
        f"| n | repeat | steps run / cap | best step | best epoch | best val loss | stop | converged | epochs | {name} MAE ({unit}) | log1p MAE | test NLL | pretrain (s) | wall (s) |",
        "|---:|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["runs"]:
        md.append(
            f"| {r['size']} | {r['repeat']} | {r['steps_run']} / {r['max_steps']} | {r['best_step']} | {_g(r.get('best_epoch'))} | {_g(r['best_val_loss'], 4)} | {r['stop_reason']} | "
            f"{'yes' if r['stop_reason'] == STOP_EARLY else 'NO'} | {_g(r['epochs_run'])} | {_g(r['mae'], 4)} | {_g(r['mae_log1p'], 4)} | {_g(r['test_nll'], 4)} | {_g(r.get('train_s'), 4)} | {_g(r['wall_s'], 4)} |"
        )
    md += ["", "## Reference rows", "", f"| reference | repeat | {name} MAE ({unit}) | log1p MAE | what |", "|---|---:|---:|---:|---|"]
    what = {"scratch": "same head and fine-tuning budget on a randomly initialised model (n = 0)", "gbt_composition": "bench oracle GBT, composition features only", "gbt_oracle": "bench oracle GBT, composition + cell features"}
    for r in sorted((r for r in rows if r.get("kind") == "reference"), key=lambda r: (r["reference"], r["repeat"])):
        md.append(f"| {r['reference']} | {r['repeat']} | {_g(r['mae'], 4)} | {_g(r['mae_log1p'], 4)} | {what.get(r['reference'], '')} |")
    if pool:
        md += [
            "", "## Data", "",
            f"- Pretraining pool: {pool.get('pool_train')} computed training CIFs (sources {', '.join(pool.get('include_sources', []))}), "
            f"{pool.get('pool_val_used')} fixed validation CIFs; mean {pool.get('mean_tokens_train')} tokens per CIF.",
            f"- Excluded (no computed source): {pool.get('excluded_not_computed_total')} rows; by source: {json.dumps(pool.get('excluded_not_computed'))}.",
            f"- Dropped: {json.dumps(pool.get('dropped'))} (downstream_overlap: same reduced formula or id as a downstream row, any split).",
            f"- Downstream ({prop}, {unit}; from {ds.get('origin') or 'n/a'}): train {ds.get('train', {}).get('n')}, val {ds.get('val', {}).get('n')}, "
            f"test {ds.get('test', {}).get('n')}; dropped {json.dumps(ds.get('dropped'))}.",
        ]
    md += [
        "", "## Method", "",
        "Each size is pretrained until its validation loss stops improving (early stopping with patience on a fixed "
        "validation set of computed CIFs; the step cap is a safety bound and a run that reaches it counts as not converged; "
        "best checkpoint restored; `cifllm/scaling/protocol.py`), then the whole model plus a small regression head is "
        f"fine-tuned on the measured {name} of the downstream train split (epoch chosen on its val split) and scored on its "
        "test split (`cifllm/scaling/downstream.py`). `err(n) = D n^-α + C` is fitted per metric over every converged run "
        "with cluster-bootstrap 95% intervals, a lack-of-fit F-test of the per-size means against the repeat noise "
        "(`cifllm/scaling/fit.py`). Targets: given, or the composition-only GBT's error (how much computed data the "
        "model needs to match it); a target at or below C is not reachable on this curve.",
        "",
    ]
    return "\n".join(md)
