"""``PretrainConfig``: every knob of a pretraining run, filled from a YAML file plus ``key=value`` overrides.

Units: steps are optimizer steps (one step = ``batch_size x grad_accum x world_size`` sequences); ``batch_size`` counts
sequences per device per micro-step (packed blocks in ``packed`` mode, CIFs in ``grouped`` mode); lengths are in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cifllm.core.config import ConfigError, config_to_dict, load_config
from cifllm.modeling import PRESETS

__all__ = ["PretrainConfig", "RESUME_MUTABLE_KEYS", "merge_for_resume", "load_pretrain_config"]


@dataclass(frozen=True)
class PretrainConfig:
    """Resolved configuration of one pretraining run (written to ``<out>/config.yaml``)."""

    # -- data ---------------------------------------------------------------------------------------------------
    corpus: str = "data/corpus"  #: corpus folder (``cifllm data`` output)
    out: str = "runs/pretrain-tiny"  #: run folder: config.yaml, log.jsonl, checkpoint-*/, model/
    tokenizer: str | None = None  #: saved tokenizer folder; None = the built-in CIF tokenizer
    #: length-grouped batches (measured faster on CPU, benchmarks/results/train_cpu.md) or whole CIFs packed into blocks
    data_mode: Literal["grouped", "packed"] = "grouped"
    block_size: int = 0  #: tokens per packed block; 0 = the model's max_position_embeddings
    eval_max_sequences: int = 0  #: cap on validation blocks/CIFs per evaluation (0 = the whole val split)
    #: training-split weight per corpus source (e.g. {perov_5: 0.3}); a CIF takes the largest weight of its sources
    #: (default 1.0); weight w < 1 keeps a fixed hashed fraction w of those CIFs, w >= 1 repeats each floor(w) times
    #: plus a hashed fraction of the remainder; the validation split is never reweighted
    source_weights: dict[str, float] = field(default_factory=dict)
    # -- model --------------------------------------------------------------------------------------------------
    preset: str = "tiny"  #: model preset (cifllm.modeling.PRESETS)
    max_position_embeddings: int = 0  #: 0 = longest CIF in the corpus + BOS/EOS, rounded up to a multiple of 64
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # -- optimisation -------------------------------------------------------------------------------------------
    max_steps: int = 300  #: optimizer steps
    batch_size: int = 8  #: sequences per device per micro-step
    grad_accum: int = 1  #: micro-steps per optimizer step
    lr: float = 1e-3  #: peak learning rate
    min_lr_ratio: float = 0.1  #: cosine floor, as a fraction of the peak
    warmup_steps: int = 30  #: linear warm-up, in optimizer steps
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"  #: auto = bf16 autocast where the hardware supports it
    seed: int = 0
    # -- bookkeeping --------------------------------------------------------------------------------------------
    logging_steps: int = 10
    eval_steps: int = 100  #: 0 = evaluate only at the end
    save_steps: int = 100  #: checkpoint interval (a killed run loses at most this many steps)
    save_total_limit: int = 3  #: checkpoints kept (oldest removed)
    num_workers: int = 0  #: DataLoader workers
    deepspeed: str | None = None  #: DeepSpeed JSON (train/deepspeed/*.json); None = plain Trainer / DDP
    tensorboard: bool = False
    progress: bool = True  #: tqdm progress bar (off: one printed line per log)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; presets: {', '.join(PRESETS)}")
        positive = ("max_steps", "batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("block_size", "eval_max_sequences", "max_position_embeddings", "eval_steps", "warmup_steps", "num_workers"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.block_size and self.block_size < 16:
            raise ValueError(f"block_size {self.block_size} is too small (>= 16 tokens, 0 = automatic)")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < max_steps ({self.max_steps})")
        for src, w in self.source_weights.items():
            if not (isinstance(w, (int, float)) and 0.0 <= w <= 100.0):
                raise ValueError(f"source_weights[{src!r}] must be a number in [0, 100], got {w!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            raise ValueError("adam betas must be in [0, 1)")

    @property
    def run_dir(self) -> Path:
        return Path(self.out)


#: keys that may change when a run is resumed (they do not change the data order or the loss curve)
RESUME_MUTABLE_KEYS = frozenset(
    {"corpus", "out", "logging_steps", "eval_steps", "save_steps", "save_total_limit", "num_workers", "tensorboard", "progress"}
)


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> PretrainConfig:
    """``PretrainConfig`` from defaults <- YAML file <- ``key=value`` overrides (unknown keys are errors)."""
    return load_config(PretrainConfig, path, overrides)


def merge_for_resume(saved: PretrainConfig, explicit: dict[str, Any]) -> PretrainConfig:
    """The config to resume with: the run's saved config, with explicitly given values that are allowed to change.

    ``explicit`` holds the keys the user gave (config file + overrides), already coerced. A differing value for any
    key outside :data:`RESUME_MUTABLE_KEYS` is an error: it would change the data order or the loss curve.
    """
    old = config_to_dict(saved)
    changed = {k: v for k, v in explicit.items() if k in old and old[k] != (list(v) if isinstance(v, tuple) else v)}
    bad = sorted(k for k in changed if k not in RESUME_MUTABLE_KEYS)
    if bad:
        detail = ", ".join(f"{k}: run has {old[k]!r}, given {changed[k]!r}" for k in bad)
        raise ConfigError(
            f"cannot resume {saved.out} with a different config ({detail}); these keys change the data order or the "
            f"loss curve. Drop them from the command, or start a new run with another out=..."
        )
    merged = dict(old)
    merged.update({k: changed[k] for k in changed})
    return load_config(PretrainConfig, None, merged)
