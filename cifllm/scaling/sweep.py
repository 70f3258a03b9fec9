"""The transfer scaling-law sweep: pretrain on nested subsets of a task's pretraining corpus, fine-tune each on the
task, measure the downstream error, fit ``err(n) = D n^-alpha + C``.

Two protocols (``protocol``):

* ``early_stop`` (default; :mod:`cifllm.scaling.transfer`): the Sim2Real sweep of issue 17. Computed structures only
  (``include_sources``), every size pretrained until its validation loss stops improving (``early_stop`` block,
  :mod:`cifllm.scaling.protocol`), the downstream error is a *measured* property (SuperCon3D Tc, ``downstream`` block,
  :mod:`cifllm.scaling.downstream`) plus the generative test NLL below as a second curve; n = 0 and a composition-only
  GBT are reference rows.
* ``fixed_steps``: the protocol described next (same optimizer steps for every size; measures the compute limit).

Protocol ``fixed_steps`` (one *run* = one (size, repeat)):

1. **Pretraining corpus** of the task: the corpus minus everything the task excludes (its test side; for Case 1 all
   held-out elements/prototypes), so no run ever sees a test structure. Its ``val`` rows (first ``val_rows``) are the
   same fixed validation set for every run and are not counted in n.
2. **Nested subsets**: repeat ``r`` shuffles the training rows with seed ``seed + r``; size ``n`` takes the first ``n``.
   Within a repeat, every smaller corpus is contained in every larger one (the curve measures added data, not a new
   draw); repeats differ in the draw and in the model initialisation seed.
3. **Budget: optimizer steps are held fixed** for every size (pretraining and fine-tuning alike). Every run gets the
   same compute and sees the same number of tokens; a small corpus is repeated over many epochs (the data-limited
   regime a lab is in), a large one is seen about once. Fixing epochs instead would give small corpora fewer steps
   and confound "less data" with "less training". Choose ``sizes`` up to about ``steps x batch`` sequences: beyond
   that, extra data is never read.
4. **Downstream error**: ``test_nll``, negative log-likelihood per token (nats) of the task's test split after LoRA
   fine-tuning (each test CIF preceded by its property lines when the task is conditioned).

Files (``out``)::

    config.yaml       resolved ScalingConfig
    runs.jsonl        one row per finished run: size, repeat, seed, metric, value, wall_s, status, losses
    runs/<n>-r<r>/    pretrain/ and finetune/ run folders (deleted after the row is written unless keep_models)
    scaling_fit.json, scaling.png, REPORT.md   the fit (:mod:`cifllm.scaling.report`)
    pbs/              with ``emit_pbs``: one Miyabi job file per run

An interrupted sweep resumes: finished (size, repeat) rows are skipped; an unfinished run resumes its pretraining
from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cifllm.bench.splits import load_split
from cifllm.bench.tasks import load_task
from cifllm.conditioning import format_property_lines, property_values
from cifllm.core.config import config_to_dict, flatten, load_config, merge_for_resume, save_config
from cifllm.core.records import ADAPTER_DIR, ADAPTER_RECORD, CONFIG_FILE, MANIFEST_FILE, MODEL_DIR, SWEEP_ROWS
from cifllm.data.corpus import load_corpus, load_manifest
from cifllm.evaluation.nll import nll_per_token
from cifllm.scaling.downstream import DownstreamConfig
from cifllm.scaling.fit import (
    ScalingError,
    assess_power_law,
    compare_models,
    fit_scaling,
    holdout_check,
    load_rows,
    size_for_target,
)
from cifllm.scaling.protocol import EarlyStopConfig, nested_subset_corpus
from cifllm.scaling.report import write_report
from cifllm.scaling.transfer import COMPUTED_SOURCES, fit_transfer, run_transfer_sweep
from cifllm.training.cluster import DEFAULT_MODULES, render_template
from cifllm.training.config import PretrainConfig
from cifllm.training.finetune import FinetuneConfig, finetune
from cifllm.training.pretrain import pretrain
from cifllm.utils import append_jsonl
from cifllm.utils.resources import resolve_path, resources_root

__all__ = ["ScalingConfig", "run_sweep", "fit_sweep", "render_sweep_pbs", "load_scaling_config"]


@dataclass(frozen=True)
class ScalingConfig:
    """A sweep (see module docstring). Sizes count training CIFs of the pretraining corpus."""

    task: str = "tc_top"  #: task name (eval/tasks/<task>.yaml) whose property is fine-tuned and scored
    #: ``early_stop``: pretrain each size until its validation loss stops improving, on computed structures only, and
    #: score a measured property (issue 17); ``fixed_steps``: the same optimizer steps for every size (the old sweep)
    protocol: Literal["early_stop", "fixed_steps"] = "early_stop"
    #: training CIFs per run; the default spans 1.5 decades (early_stop; for fixed_steps keep sizes <= steps x batch)
    sizes: tuple[int, ...] = (625, 1250, 2500, 5000, 10000, 20000)
    repeats: int = 2  #: runs per size (different data draw and initialisation seed)
    splits: str = "data/tasks"  #: folder of task splits (`cifllm split` output)
    corpus: str = "data/corpus"  #: pretraining corpus folder the sizes are drawn from
    out: str = ""  #: "" = results/scaling/<task>
    pretrain_config: str = "train/configs/tiny.yaml"  #: a path, or builtin:<preset>; the checkout path falls back to the packaged preset
    #: PretrainConfig keys over ``pretrain_config`` for every run (nested or dotted; checked when the sweep starts);
    #: every run gets the same context (else a small corpus's shorter longest CIF would skip long test CIFs)
    pretrain_overrides: dict[str, Any] = field(default_factory=lambda: {
        "max_position_embeddings": 2048,
        "train": {"max_steps": 150, "batch_size": 16, "warmup_steps": 15, "eval_steps": 0, "save_steps": 50, "logging_steps": 50},
    })
    finetune_config: str = "train/configs/lora.yaml"  #: FinetuneConfig YAML for every run (a path, or builtin:<preset>)
    #: FinetuneConfig keys over ``finetune_config`` for every run
    finetune_overrides: dict[str, Any] = field(default_factory=lambda: {
        "train": {"max_steps": 60, "warmup_steps": 6, "eval_steps": 0, "save_steps": 1000, "logging_steps": 20},
    })
    val_rows: int = 256  #: fixed pretraining validation rows (from the corpus' val split)
    test_rows: int = 0  #: test CIFs scored (0 = all)
    seed: int = 0  #: base seed of the draws and runs
    target: float | None = None  #: a downstream error to reach: the report gives the size needed
    keep_models: bool = False  #: keep each run's pretrain/ and finetune/ folders (default: deleted once its row is written)
    threads: int = 0  #: torch CPU threads; 0 = torch default
    only: str = ""  #: run one (size, repeat) only, "SIZE:REPEAT" (cluster jobs); the fit is skipped
    progress: bool = False  #: progress bars
    # -- protocol early_stop (cifllm.scaling.transfer) ----------------------------------------------------------------
    #: corpus sources whose structures may be pretrained on (DFT-computed); rows of other sources only are excluded
    include_sources: tuple[str, ...] = COMPUTED_SOURCES
    #: also run the whole computed pool (all its training CIFs) as the largest size; its row's size is the pool size
    full_pool: bool = False
    #: also LoRA-fine-tune on ``task`` and score its test NLL (the generative curve; needs ``splits``)
    generative_metric: bool = True
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def __post_init__(self) -> None:
        if not self.include_sources:
            raise ValueError("include_sources must name at least one corpus source")
        if len(set(self.sizes)) < 3:
            raise ValueError(f"sizes: a power law needs at least 3 distinct sizes, got {list(self.sizes)}")
        if any(s <= 0 for s in self.sizes):
            raise ValueError(f"sizes must be positive, got {list(self.sizes)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.only and not _parse_only(self.only):
            raise ValueError(f"only must be 'SIZE:REPEAT', got {self.only!r}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"results/scaling/{Path(self.task).stem}")


def _parse_only(s: str) -> tuple[int, int] | None:
    try:
        a, b = s.split(":")
        return int(a), int(b)
    except ValueError:
        return None


#: keys a sweep may change when it continues in the same ``out`` (the rest define the runs already in runs.jsonl)
RESUME_MUTABLE_KEYS = frozenset({"sizes", "full_pool", "repeats", "out", "target", "keep_models", "threads", "only", "progress"})
#: step-cap keys a sweep may also change when it continues, if its learning rate is constant (``early_stop.lr_schedule``):
#: the cap is then only a safety bound and moving it changes no run that stopped before it
CAP_KEYS = frozenset({"early_stop.epochs_cap", "early_stop.min_steps", "early_stop.max_steps_cap"})


def pretrain_config_for(cfg: ScalingConfig) -> PretrainConfig:
    """The sweep's pretraining config: ``pretrain_config`` with ``pretrain_overrides`` (before the per-run values)."""
    return load_config(PretrainConfig, resolve_path(cfg.pretrain_config, folders=("configs/train",)), cfg.pretrain_overrides)


def finetune_config_for(cfg: ScalingConfig) -> FinetuneConfig:
    """The sweep's fine-tuning config: ``finetune_config`` with ``finetune_overrides`` (before the per-run values)."""
    return load_config(FinetuneConfig, resolve_path(cfg.finetune_config, folders=("configs/train",)), cfg.finetune_overrides)


def load_scaling_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> ScalingConfig:
    return load_config(ScalingConfig, path, overrides)


def _say(msg: str) -> None:
    import sys

    print(f"[cifllm scaling] {msg}", file=sys.stderr, flush=True)


def _done_runs(path: Path) -> set[tuple[int, int]]:
    if not path.is_file():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("status") == "ok":
                done.add((int(r["size"]), int(r["repeat"])))
    return done


def _pool(cfg: ScalingConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], Any]:
    """(train rows, fixed val rows, corpus manifest, task) of the task's pretraining corpus."""
    task = load_task(cfg.task)
    d = Path(cfg.splits) / task.name
    if not (d / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{d}: no split for task {task.name}; build it with `cifllm split --task {task.name}`")
    load_split(d, "test")
    excl = set((d / "pretrain_exclude.txt").read_text().split())
    ds = load_corpus(cfg.corpus)
    rows = [r for r in ds.to_list() if r["id"] not in excl]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"][: cfg.val_rows]
    big = max(cfg.sizes)
    if big > len(train):
        raise ValueError(f"size {big} is larger than the task's pretraining corpus ({len(train)} training CIFs after excluding {len(excl)})")
    return train, val, load_manifest(cfg.corpus), task


def _test_texts(cfg: ScalingConfig, task: Any) -> list[str]:
    rows = load_split(Path(cfg.splits) / task.name, "test")
    if cfg.test_rows:
        rows = rows[: cfg.test_rows]
    names = tuple(task.conditioning)
    return ["".join(ln + "\n" for ln in format_property_lines(property_values(r, names, task.property or None))) + r["text"] for r in rows]


def _one_run(cfg: ScalingConfig, size: int, repeat: int, train: list[dict], val: list[dict], manifest: dict, task: Any, test_texts: list[str]) -> dict[str, Any]:
    t0 = time.time()
    seed = cfg.seed + repeat
    run = cfg.out_dir / "runs" / f"{size}-r{repeat}"
    corpus_dir = nested_subset_corpus(run, train, val, manifest, size, seed, {"task": task.name, "repeat": repeat})
    pcfg = pretrain_config_for(cfg)
    pcfg = replace(pcfg, corpus=str(corpus_dir), out=str(run / "pretrain"), train=replace(pcfg.train, seed=seed, progress=cfg.progress))
    model = run / "pretrain" / MODEL_DIR
    if not (model / "config.json").is_file():
        pretrain(pcfg, resume=True)
    pre = json.loads((model / "cifllm_run.json").read_text())
    fdir = run / "finetune"
    if (fdir / ADAPTER_DIR / ADAPTER_RECORD).is_file():
        adapter = fdir / ADAPTER_DIR
    else:
        if fdir.exists():
            shutil.rmtree(fdir)  # fine-tuning is short: restart it rather than resume a half-written run
        fcfg = finetune_config_for(cfg)
        fcfg = replace(fcfg, task=cfg.task, base=str(model), splits=cfg.splits, out=str(fdir), train=replace(fcfg.train, seed=seed, progress=cfg.progress))
        adapter = finetune(fcfg)
    ft = json.loads((adapter / ADAPTER_RECORD).read_text())
    nll = nll_per_token(model, test_texts, adapter=adapter)
    if nll["n_skipped"]:
        raise ValueError(
            f"{nll['n_skipped']} test CIFs are longer than the run's context; set max_position_embeddings in "
            "pretrain_overrides so every run scores the same test set"
        )
    row = {
        "task": task.name, "size": size, "repeat": repeat, "seed": seed, "metric": "test_nll", "value": nll["nll"],
        "status": "ok", "wall_s": round(time.time() - t0, 1), "test_tokens": nll["n_tokens"], "test_texts": nll["n_texts"],
        "pretrain_steps": pre["global_step"], "pretrain_tokens": pre["tokens_seen"], "pretrain_val_loss": pre.get("eval_loss"),
        "finetune_steps": ft["global_step"], "finetune_val_loss": ft.get("eval_loss"), "preset": pre["preset"],
    }
    if not cfg.keep_models:
        shutil.rmtree(run)
    return row


def run_sweep(cfg: ScalingConfig) -> Path:
    """Run every missing (size, repeat) of ``cfg`` (or only ``cfg.only``), appending rows to ``runs.jsonl``; then fit
    (unless ``only``). Returns the output folder."""
    import math

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    saved = out / CONFIG_FILE
    if saved.is_file():  # the one resume policy (cifllm.core.config.merge_for_resume): only RESUME_MUTABLE_KEYS may change
        prev = load_scaling_config(saved)
        mutable = RESUME_MUTABLE_KEYS | (CAP_KEYS if prev.protocol == "early_stop" and prev.early_stop.lr_schedule == "constant" else frozenset())
        merge_for_resume(prev, cfg, flatten(config_to_dict(cfg), ScalingConfig), mutable)
        save_config(replace(cfg, only=""), saved)  # the continued sweep's config (differs only in mutable keys)
    else:
        save_config(cfg, saved)
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    if cfg.protocol == "early_stop":
        return run_transfer_sweep(cfg)

    pc = pretrain_config_for(cfg)
    finetune_config_for(cfg)  # a bad key fails now, not after the first pretraining
    per_step = pc.batch_size * pc.grad_accum
    if min(cfg.sizes) < per_step:
        raise ValueError(f"size {min(cfg.sizes)} is smaller than one pretraining batch ({per_step} CIFs per step): no step could be made")
    if max(cfg.sizes) > pc.max_steps * per_step:
        _say(f"note: size {max(cfg.sizes)} > {pc.max_steps} steps x {per_step} CIFs: part of the largest corpora is never read")
    train, val, manifest, task = _pool(cfg)
    tests = _test_texts(cfg, task)
    runs_file = out / SWEEP_ROWS
    done = _done_runs(runs_file)
    todo = [(s, r) for r in range(cfg.repeats) for s in sorted(set(cfg.sizes))]
    if cfg.only:
        todo = [_parse_only(cfg.only)]  # type: ignore[list-item]
    for size, repeat in todo:
        if (size, repeat) in done:
            _say(f"size {size} repeat {repeat}: done, skipped")
            continue
        _say(f"size {size} repeat {repeat}: pretrain -> finetune -> test NLL")
        row = _one_run(cfg, size, repeat, train, val, manifest, task, tests)
        if not math.isfinite(row["value"]):
            row["status"] = "non_finite"
        append_jsonl(runs_file, row)
        _say(f"size {size} repeat {repeat}: test_nll {row['value']:.4f} ({row['wall_s']} s)")
    if not cfg.only:
        fit_sweep(out, target=cfg.target, meta={"task": task.name, "metric": "test_nll (nats/token)", "config": str(saved)})
    return out


def fit_sweep(out: str | Path, target: float | None = None, meta: dict[str, Any] | None = None, n_boot: int = 1000) -> dict[str, Path]:
    """Fit ``runs.jsonl`` of a sweep folder and write ``scaling_fit.json``, ``scaling.png``, ``REPORT.md`` (an
    ``early_stop`` sweep: :func:`cifllm.scaling.transfer.fit_transfer`)."""
    out = Path(out)
    if (out / CONFIG_FILE).is_file() and load_scaling_config(out / CONFIG_FILE).protocol == "early_stop":
        return fit_transfer(out, target=target, meta=meta, n_boot=n_boot)
    rows = load_rows(out / SWEEP_ROWS, metric="test_nll")
    fit = fit_scaling(rows, n_boot=n_boot)
    pure = fit_scaling(rows, n_boot=n_boot, fix_c_zero=True)
    try:
        hold = holdout_check(rows)
    except ScalingError as exc:
        hold = {"skipped": str(exc)}
    tgt = size_for_target(fit, target) if target is not None else None
    return write_report(out, rows, fit, assessment=assess_power_law(rows, fit), holdout=hold, target=tgt, comparison=compare_models(rows), pure_fit=pure, meta=meta)


def render_sweep_pbs(cfg: ScalingConfig, job_dir: str | Path, workdir: str = ".", group: str | None = None, walltime: str = "02:00:00", queue: str = "regular-g", config_path: str | None = None) -> list[Path]:
    """One Miyabi PBS job file per (size, repeat): each runs ``cifllm scaling ... only=SIZE:REPEAT`` on one node and
    appends its row to the shared ``runs.jsonl``; ``cifllm scaling --fit-only`` collects and fits afterwards."""
    import shlex


    tpl = resources_root() / "templates" / "miyabi" / "scaling.pbs.tmpl"
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    if cfg.protocol == "early_stop" and cfg.full_pool:
        raise ValueError("--emit-pbs needs every size written out: full_pool=true is only resolved when the pool is built; list the pool size in sizes")
    group = group or os.environ.get("GROUP") or "CHANGE_ME"
    files = []
    base_args = ["--task", cfg.task]
    if config_path:
        base_args += ["--config", config_path]
    base_args += [f"sizes=[{','.join(str(s) for s in cfg.sizes)}]", f"repeats={cfg.repeats}", f"out={cfg.out_dir}"]
    for r in range(cfg.repeats):
        for s in sorted(set(cfg.sizes)):
            name = f"scal-{Path(cfg.task).stem[:8]}-{s}-r{r}"
            cmd = "cifllm scaling " + " ".join(shlex.quote(a) for a in [*base_args, f"only={s}:{r}"])
            text = render_template(tpl, {
                "queue": queue, "walltime": walltime, "group": group, "job_name": name,
                "log_file": str(Path(workdir) / cfg.out_dir / "pbs" / f"{name}.log"), "workdir": shlex.quote(workdir),
                "modules": " ".join(DEFAULT_MODULES), "venv": ".venv", "cache_root": f"/work/{group}/${{USER}}/.cache",
                "command": cmd,
            })
            f = job_dir / f"{name}.pbs"
            f.write_text(text)
            files.append(f)
    return files
