"""Pretraining: config, data packing, Trainer, checkpoints/resume, DeepSpeed config checks, cluster job rendering.

Heavy modules (``transformers``, ``torch``) load only when :func:`pretrain` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cifllm.training.config import PretrainConfig, load_pretrain_config

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PretrainConfig", "load_pretrain_config", "pretrain"]


def pretrain(cfg: PretrainConfig, resume: bool = False) -> Path:
    """Train ``cfg`` (see :func:`cifllm.training.pretrain.pretrain`); returns the saved ``model/`` folder."""
    from cifllm.training.pretrain import pretrain as _pretrain

    return _pretrain(cfg, resume=resume)
