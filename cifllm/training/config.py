"""Training configs: :class:`TrainArgs`, the training-arguments block shared by pretraining, LoRA fine-tuning and the
scaling sweep, and :class:`PretrainConfig`, every knob of a pretraining run (YAML file + ``key=value`` overrides).

Units: steps are optimizer steps (one step = ``batch_size x grad_accum x world_size`` sequences); ``batch_size`` counts
sequences per device per micro-step (packed blocks in ``packed`` mode, CIFs in ``grouped`` mode); lengths are in tokens.

In YAML the block is a mapping (``train: {lr: 1e-3}``), on the command line a dotted key (``train.lr=1e-3``); the
plain key (``lr=1e-3``) still works because no other key of the config has that name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cifllm.core.config import BlockAccess, config_to_dict, explicit_keys, flatten, load_config
from cifllm.core.config import merge_for_resume as _merge_for_resume
from cifllm.modeling import PRESETS

__all__ = ["PretrainConfig", "RESUME_MUTABLE_KEYS", "TrainArgs", "load_pretrain_config", "merge_for_resume"]


@dataclass(frozen=True)
class TrainArgs:
    """The training loop: budget, optimiser, schedule, precision, bookkeeping (pretraining and fine-tuning alike)."""

    max_steps: int = 300  #: optimizer steps
    batch_size: int = 8  #: sequences per device per micro-step
    grad_accum: int = 1  #: micro-steps per optimizer step
    lr: float = 1e-3  #: peak learning rate
    min_lr_ratio: float = 0.1  #: floor of the decay, as a fraction of the peak
    warmup_steps: int = 30  #: linear warm-up, in optimizer steps
    #: cosine: warm-up then cosine decay over the whole run; wsd: warm-up, constant, then a cosine decay over the last
    #: ``decay_steps`` (a run can be extended, and a cooldown branch made from any checkpoint: ``init_from``)
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    decay_steps: int = 0  #: wsd only: steps of the final decay (0 = the last 20% of max_steps)
    weight_decay: float = 0.1  #: AdamW weight decay
    max_grad_norm: float = 1.0  #: gradient-norm clipping threshold
    precision: Literal["auto", "bf16", "fp32"] = "auto"  #: auto = bf16 autocast where the hardware supports it
    seed: int = 0  #: seed of the model initialisation and the data order
    logging_steps: int = 10  #: optimizer steps between log lines (log.jsonl)
    eval_steps: int = 100  #: 0 = evaluate only at the end
    save_steps: int = 100  #: checkpoint interval (a killed run loses at most this many steps)
    save_total_limit: int = 3  #: checkpoints kept (oldest removed)
    eval_max_sequences: int = 0  #: cap on validation blocks/CIFs per evaluation (0 = the whole val split)
    progress: bool = True  #: tqdm progress bar (off: one printed line per log)

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("eval_max_sequences", "eval_steps", "warmup_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < max_steps ({self.max_steps})")
        if self.decay_steps < 0 or self.warmup_steps + self.decay_steps > self.max_steps:
            raise ValueError(f"decay_steps ({self.decay_steps}) must be >= 0 and warmup_steps + decay_steps <= max_steps ({self.max_steps})")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def scheduler(self) -> tuple[str, dict[str, Any]]:
        """``(lr_scheduler_type, lr_scheduler_kwargs)`` for ``transformers.TrainingArguments``."""
        if self.lr_schedule == "wsd":
            decay = self.decay_steps or max(1, self.max_steps // 5)
            decay = min(decay, self.max_steps - self.warmup_steps)
            return "warmup_stable_decay", {"num_decay_steps": decay, "min_lr_ratio": self.min_lr_ratio, "decay_type": "cosine"}
        return "cosine_with_min_lr", {"min_lr_rate": self.min_lr_ratio}


@dataclass(frozen=True)
class PretrainConfig(BlockAccess):
    """Resolved configuration of one pretraining run (written to ``<out>/config.yaml``)."""

    # -- data ---------------------------------------------------------------------------------------------------
    corpus: str = "data/corpus"  #: corpus folder (``cifllm data`` output)
    out: str = "runs/pretrain-tiny"  #: run folder: config.yaml, log.jsonl, checkpoint-*/, model/
    tokenizer: str | None = None  #: saved tokenizer folder; None = the built-in CIF tokenizer
    #: a finished checkpoint of another run (``runs/x/checkpoint-N``) to start from: weights, optimizer, step N and
    #: data position are taken over and this run's schedule applies from step N on (a cooldown branch of a wsd run:
    #: max_steps = N + decay_steps); only read when this run has no checkpoint of its own
    init_from: str | None = None
    #: length-grouped batches (measured faster on CPU, benchmarks/results/train_cpu.md) or whole CIFs packed into blocks
    data_mode: Literal["grouped", "packed"] = "grouped"
    block_size: int = 0  #: tokens per packed block; 0 = the model's max_position_embeddings
    #: training-split weight per corpus source (e.g. {perov_5: 0.3}); a CIF takes the largest weight of its sources
    #: (default 1.0); weight w < 1 keeps a fixed hashed fraction w of those CIFs, w >= 1 repeats each floor(w) times
    #: plus a hashed fraction of the remainder; the validation split is never reweighted
    source_weights: dict[str, float] = field(default_factory=dict)
    # -- model --------------------------------------------------------------------------------------------------
    preset: str = "tiny"  #: model preset (cifllm.modeling.PRESETS)
    max_position_embeddings: int = 0  #: 0 = longest CIF in the corpus + BOS/EOS, rounded up to a multiple of 64
    attn_implementation: str = "sdpa"  #: attention kernel passed to transformers: sdpa, eager or flash_attention_2
    gradient_checkpointing: bool = False  #: recompute activations in the backward pass (less memory, slower)
    # -- training loop (shared with fine-tuning) ----------------------------------------------------------------
    train: TrainArgs = field(default_factory=TrainArgs)
    adam_beta1: float = 0.9  #: AdamW beta1 of pretraining (fine-tuning keeps the transformers defaults)
    adam_beta2: float = 0.95  #: AdamW beta2 of pretraining
    adam_eps: float = 1e-8  #: AdamW epsilon of pretraining
    # -- system -------------------------------------------------------------------------------------------------
    num_workers: int = 0  #: DataLoader workers
    deepspeed: str | None = None  #: DeepSpeed JSON (train/deepspeed/*.json); None = plain Trainer / DDP
    tensorboard: bool = False  #: also log to TensorBoard (<out>/runs)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; presets: {', '.join(PRESETS)}")
        for key in ("block_size", "max_position_embeddings", "num_workers"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.block_size and self.block_size < 16:
            raise ValueError(f"block_size {self.block_size} is too small (>= 16 tokens, 0 = automatic)")
        for src, w in self.source_weights.items():
            if not (isinstance(w, (int, float)) and 0.0 <= w <= 100.0):
                raise ValueError(f"source_weights[{src!r}] must be a number in [0, 100], got {w!r}")
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
    """The config to resume with: the run's saved config, with explicitly given values that are allowed to change
    (the resume policy of :func:`cifllm.core.config.merge_for_resume` with :data:`RESUME_MUTABLE_KEYS`).

    ``explicit`` holds the keys the user gave (nested, dotted or plain). A differing value for any key outside
    :data:`RESUME_MUTABLE_KEYS` is an error: it would change the data order or the loss curve.
    """
    given = load_config(PretrainConfig, None, {**flatten(config_to_dict(saved), PretrainConfig), **flatten(explicit, PretrainConfig)})
    return _merge_for_resume(saved, given, explicit_keys(PretrainConfig, None, explicit), RESUME_MUTABLE_KEYS)
