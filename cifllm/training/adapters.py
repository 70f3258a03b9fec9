"""LoRA adapters and the base model they belong to: the record lives in the base layer
(:mod:`cifllm.core.records`, shared by sampling, evaluation, training and the benchmark); these are its names here."""

from __future__ import annotations

from cifllm.core.records import (
    ADAPTER_RECORD,
    AdapterError,
    ConditionCheck,
    check_adapter_base,
    check_conditions,
    model_fingerprint,
    read_adapter_record,
)

__all__ = [
    "ADAPTER_RECORD",
    "AdapterError",
    "ConditionCheck",
    "check_adapter_base",
    "check_conditions",
    "model_fingerprint",
    "read_adapter_record",
]
