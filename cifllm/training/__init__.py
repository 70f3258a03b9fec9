"""Training: pretraining (:mod:`cifllm.training.pretrain`), LoRA fine-tuning (:mod:`cifllm.training.finetune`), their
configs, data packing, Trainer, checkpoints/resume, DeepSpeed config checks and cluster job rendering.

Importing the package loads only the configs; ``torch``/``transformers`` load with the modules that train.
"""

from __future__ import annotations

from cifllm.training.config import PretrainConfig, load_pretrain_config

__all__ = ["PretrainConfig", "load_pretrain_config"]
