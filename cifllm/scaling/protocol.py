"""Data-limited pretraining for the transfer scaling law: train each corpus size until its validation loss stops
improving.

Why: a fixed optimizer-step budget measures the compute limit, not the data (with 150 steps x 16 CIFs every corpus
above ~2,400 CIFs is never read). Here every size gets a step cap that grows with its size and stops early when the
fixed validation set says more steps no longer help, so each point of the curve is (close to) the best a model of
this shape can do with that much data.

Schedule of one size ``n`` (:func:`plan_steps`; one step = ``per_step`` = batch x grad_accum CIFs):

* learning rate (``lr_schedule``): ``constant`` (default) = linear warm-up over ``warmup_steps`` then the peak rate
  until the stop, so the trajectory does not depend on the cap and the stop comes from the validation loss alone (the
  ``wsd`` schedule of :class:`cifllm.training.config.TrainArgs` with a one-step decay); ``cosine`` = the issue-17
  protocol, a cosine decay spanning the cap with ``warmup_fraction`` of it as warm-up (with a cap of ~10 passes every
  run of that sweep ended on the cap, its best validation loss at the last step);
* step cap ``max_steps = clip(ceil(epochs_cap * n / per_step), min_steps, max_steps_cap)``, rounded up to a whole
  number of evaluation intervals: a *safety bound*; a run that reaches it is reported ``stop_reason = step_cap`` and
  counts as not converged;
* an evaluation on the fixed validation set every ``eval_steps = clip(round(eval_epochs * n / per_step),
  eval_min_steps, eval_max_steps)`` steps (a checkpoint at each);
* stop when ``patience`` evaluations in a row did not lower the validation loss by more than ``min_delta``
  (nats/token; Hugging Face ``EarlyStoppingCallback``), then restore the best checkpoint
  (``load_best_model_at_end``): the saved model is the one with the lowest validation loss.

:func:`pretrain_early_stopping` is :func:`cifllm.training.pretrain.pretrain` (same preparation, data, training
arguments, run folder and resume) plus those two Trainer settings; ``model/cifllm_run.json`` gains ``early_stopping``:
``max_steps``, ``eval_steps``, ``steps_run``, ``best_step``, ``best_val_loss`` (nats/token), ``init_val_loss`` (at step
0), ``stop_reason`` (``early_stop`` / ``step_cap``), ``restored_best`` and the validation curve. A killed run resumes
from its last checkpoint with the early-stopping counter (``restore_callback_states_from_checkpoint``) and the best
checkpoint restored from the trainer state.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cifllm.core.config import config_to_dict, save_config
from cifllm.core.records import MANIFEST_FILE
from cifllm.data.corpus import write_corpus
from cifllm.tokenization import TOKENIZER_VERSION, tokenizer_fingerprint
from cifllm.training.callbacks import CheckpointMarkerCallback, JsonlLogCallback
from cifllm.training.config import PretrainConfig
from cifllm.training.guards import check_enough_data
from cifllm.training.pretrain import _datasets, _training_args, new_model, prepare, start_run_folder
from cifllm.training.trainer import CifTrainer
from cifllm.utils import atomic_write_json

__all__ = ["EarlyStopConfig", "StepPlan", "nested_subset_corpus", "plan_steps", "pretrain_early_stopping", "STOP_EARLY", "STOP_CAP"]

STOP_EARLY = "early_stop"  #: the validation loss stopped improving before the step cap
STOP_CAP = "step_cap"  #: the step cap was reached (the model may still have been improving)


def nested_subset_corpus(run: Path, train: list[dict], val: list[dict], manifest: dict[str, Any], size: int, seed: int, meta: dict[str, Any]) -> Path:
    """``run/corpus``: the first ``size`` training rows after a shuffle with ``seed`` (so within one seed every smaller
    subset is inside every larger one) plus the fixed ``val`` rows; written once, reused on a rerun. ``meta`` is
    recorded in the corpus manifest under ``scaling`` (with size, repeat seed)."""
    corpus_dir = run / "corpus"
    if not (corpus_dir / MANIFEST_FILE).is_file():
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        subset = [train[i] for i in order[:size]]
        man = {k: v for k, v in manifest.items() if k not in ("n_rows", "n_train", "n_val", "max_tokens")}
        man.update(scaling={**meta, "size": size, "seed": seed})
        write_corpus(subset + val, corpus_dir, man)
    return corpus_dir


@dataclass(frozen=True)
class EarlyStopConfig:
    """Step cap, evaluation interval and patience of the data-limited protocol (see module docstring)."""

    #: constant: warm-up then the peak rate until the stop (the cap is only a safety bound); cosine: decay over the cap
    lr_schedule: Literal["constant", "cosine"] = "constant"
    epochs_cap: float = 200.0  #: step cap (safety bound) in passes over the size's subset (before clipping)
    min_steps: int = 2000  #: smallest step cap (optimizer steps)
    max_steps_cap: int = 40000  #: largest step cap (optimizer steps): bounds the cost of the largest sizes
    eval_epochs: float = 0.5  #: evaluation interval in passes over the subset (before clipping)
    eval_min_steps: int = 50  #: smallest evaluation interval (steps)
    eval_max_steps: int = 200  #: largest evaluation interval (steps)
    patience: int = 5  #: evaluations in a row without an improvement larger than min_delta before stopping
    min_delta: float = 0.001  #: smallest validation-loss improvement that counts (nats/token)
    warmup_steps: int = 100  #: constant schedule: linear warm-up (optimizer steps; at most half the cap)
    warmup_fraction: float = 0.05  #: cosine schedule: linear warm-up as a fraction of the step cap

    def __post_init__(self) -> None:
        if not self.epochs_cap > 0:
            raise ValueError(f"epochs_cap must be > 0, got {self.epochs_cap}")
        if not 0 < self.min_steps <= self.max_steps_cap:
            raise ValueError(f"need 0 < min_steps <= max_steps_cap, got {self.min_steps} and {self.max_steps_cap}")
        if not self.eval_epochs > 0:
            raise ValueError(f"eval_epochs must be > 0, got {self.eval_epochs}")
        if not 0 < self.eval_min_steps <= self.eval_max_steps:
            raise ValueError(f"need 0 < eval_min_steps <= eval_max_steps, got {self.eval_min_steps} and {self.eval_max_steps}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_fraction < 0.5:
            raise ValueError(f"warmup_fraction must be in [0, 0.5), got {self.warmup_fraction}")


@dataclass(frozen=True)
class StepPlan:
    """Step cap, evaluation interval and warm-up of one corpus size (optimizer steps)."""

    n: int  #: training CIFs
    per_step: int  #: CIFs per optimizer step
    max_steps: int
    eval_steps: int
    warmup_steps: int
    lr_schedule: str = "constant"  #: ``constant`` or ``cosine`` (:class:`EarlyStopConfig`)

    @property
    def epochs_at_cap(self) -> float:
        """Passes over the subset if the cap is reached."""
        return self.max_steps * self.per_step / self.n

    def overrides(self) -> dict[str, Any]:
        """``PretrainConfig`` keys that apply the plan (a checkpoint at every evaluation; ``constant``: the wsd schedule
        with a one-step decay at the cap, i.e. the peak rate until the stop)."""
        out: dict[str, Any] = {"max_steps": self.max_steps, "eval_steps": self.eval_steps, "save_steps": self.eval_steps, "warmup_steps": self.warmup_steps}
        out.update({"lr_schedule": "wsd", "decay_steps": 1} if self.lr_schedule == "constant" else {"lr_schedule": "cosine", "decay_steps": 0})
        return out


def plan_steps(n: int, per_step: int, es: EarlyStopConfig) -> StepPlan:
    """The schedule of a corpus of ``n`` training CIFs at ``per_step`` CIFs per optimizer step (module docstring)."""
    if n <= 0 or per_step <= 0:
        raise ValueError(f"need n > 0 and per_step > 0, got n={n}, per_step={per_step}")
    steps_per_epoch = n / per_step
    cap = min(max(math.ceil(es.epochs_cap * steps_per_epoch), es.min_steps), es.max_steps_cap)
    every = min(max(round(es.eval_epochs * steps_per_epoch), es.eval_min_steps), es.eval_max_steps, cap)
    cap = math.ceil(cap / every) * every  # the last step is an evaluation step
    if es.lr_schedule == "constant":
        warm = min(max(1, es.warmup_steps), cap // 2)
    else:
        warm = min(max(1, round(es.warmup_fraction * cap)), cap - 1)
    return StepPlan(n=n, per_step=per_step, max_steps=cap, eval_steps=every, warmup_steps=warm, lr_schedule=es.lr_schedule)


def _say(msg: str) -> None:
    print(f"[cifllm scaling] {msg}", file=sys.stderr, flush=True)


def pretrain_early_stopping(cfg: PretrainConfig, patience: int, min_delta: float, resume: bool = True) -> Path:
    """Pretrain ``cfg`` (whose ``eval_steps`` = ``save_steps`` > 0 and whose corpus has a val split) with early stopping
    on the validation loss and the best checkpoint restored; returns the ``model/`` folder (module docstring)."""
    from transformers import EarlyStoppingCallback


    if cfg.eval_steps <= 0 or cfg.save_steps != cfg.eval_steps:
        raise ValueError(f"early stopping needs eval_steps = save_steps > 0 (got eval_steps={cfg.eval_steps}, save_steps={cfg.save_steps})")
    if cfg.deepspeed:
        raise ValueError("the early-stopping protocol runs without DeepSpeed (one process); unset deepspeed=")
    prep = prepare(cfg, resume=resume)
    cfg = prep.cfg
    run_dir = cfg.run_dir
    train_ds, val_ds, collator, lengths, stats = _datasets(prep)
    if val_ds is None or len(val_ds) == 0:
        raise ValueError(f"{cfg.corpus}: early stopping needs a validation split, the corpus has none")
    check_enough_data("pretrain", str(cfg.corpus), len(train_ds), len(val_ds), cfg.batch_size, prep.world_size, unit="sequences")
    stats.update(block_size=prep.block_size, data_mode=cfg.data_mode)
    data_manifest = {"corpus": str(cfg.corpus), "manifest_sha256": prep.manifest_sha256, "manifest": prep.manifest, "stats": stats}

    args = _training_args(prep, resuming=prep.resume_from is not None, has_eval=True)
    # the two settings early stopping needs; eval and save strategies are both "steps" with equal intervals (checked)
    args.load_best_model_at_end = True
    args.metric_for_best_model = "eval_loss"
    args.greater_is_better = False
    # a resumed run takes the early-stopping counter over from the checkpoint (transformers' default is to reset it,
    # which would let an interrupted run train `patience` evaluations longer than an uninterrupted one)
    args.restore_callback_states_from_checkpoint = True

    start_run_folder(prep, data_manifest)
    tok = prep.tokenizer
    model, _, n_params = new_model(prep)
    trainer = CifTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator, processing_class=tok,
        callbacks=[
            JsonlLogCallback(run_dir / "log.jsonl"),
            CheckpointMarkerCallback(),
            EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=min_delta),
        ],
        grouped_lengths=lengths,
    )
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(prep.resume_from) if prep.resume_from else None)
    train_s = time.time() - t0
    st = trainer.state
    curve = [(int(h["step"]), float(h["eval_loss"])) for h in st.log_history if "eval_loss" in h]
    steps_run = int(st.global_step)
    best_step = int(st.best_global_step) if st.best_global_step is not None else None
    early = {
        "max_steps": cfg.max_steps,
        "eval_steps": cfg.eval_steps,
        "patience": patience,
        "min_delta": min_delta,
        "steps_run": steps_run,
        "best_step": best_step,
        "best_val_loss": None if st.best_metric is None else float(st.best_metric),
        "init_val_loss": next((v for s, v in curve if s == 0), None),
        "last_val_loss": curve[-1][1] if curve else None,
        "stop_reason": STOP_EARLY if steps_run < cfg.max_steps else STOP_CAP,
        "restored_best": st.best_model_checkpoint is not None and best_step != steps_run,
        "best_checkpoint": st.best_model_checkpoint,
        "n_evals": len(curve),
        "val_curve": curve,
        "epochs_run": round(steps_run * cfg.batch_size * cfg.grad_accum / max(1, int(stats["train"]["n_cifs"])), 3),
    }
    final = run_dir / "model"
    trainer.model.config.use_cache = True
    trainer.save_model(str(final))
    atomic_write_json(
        final / "cifllm_tokenizer.json",
        {"version": TOKENIZER_VERSION, "fingerprint": tokenizer_fingerprint(tok.backend_tokenizer), "vocab_size": len(tok)},
    )
    save_config(cfg, final / "config.yaml")
    atomic_write_json(final / "data_manifest.json", data_manifest)
    atomic_write_json(
        final / "cifllm_run.json",
        {
            "preset": cfg.preset,
            "n_parameters": n_params,
            "max_position_embeddings": prep.max_position_embeddings,
            "longest_cif_tokens": prep.max_tokens,
            "block_size": prep.block_size,
            "data_mode": cfg.data_mode,
            "precision": "bf16" if prep.bf16 else "fp32",
            "world_size": prep.world_size,
            "deepspeed": None,
            "global_step": steps_run,
            "tokens_seen": int(st.num_input_tokens_seen),
            "train_loss": result.training_loss,
            "eval_loss": early["best_val_loss"],
            "train_seconds_this_session": round(train_s, 1),
            "resumed_from": str(prep.resume_from) if prep.resume_from else None,
            "early_stopping": early,
            "config": config_to_dict(cfg),
            "data": stats,
        },
    )
    _say(
        f"pretrain {run_dir}: {early['stop_reason']} at step {steps_run}/{cfg.max_steps}, best val loss "
        f"{early['best_val_loss']} at step {best_step} ({json.dumps({'train_s': round(train_s, 1)})})"
    )
    return final


def read_early_stopping(model_dir: str | Path) -> dict[str, Any]:
    """The ``early_stopping`` record of a model saved by :func:`pretrain_early_stopping` (``{}`` when absent)."""
    rec = json.loads((Path(model_dir) / "cifllm_run.json").read_text())
    return dict(rec.get("early_stopping") or {})
