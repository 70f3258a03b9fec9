"""LoRA adapters and the base model they belong to.

Every adapter folder written by ``cifllm finetune`` holds, beside peft's ``adapter_config.json`` and
``adapter_model.safetensors``, a ``cifllm_adapter.json`` record: the base model's weight fingerprint, the task, the
conditioning properties with the range of values seen in training, the LoRA settings and the training figures.

The fingerprint (:func:`model_fingerprint`) hashes every weight tensor *cast to bfloat16*, so a float32 training
output and its bf16 export (``cifllm export``) have the same fingerprint, and an adapter trained on one loads on the
other; any other model (different weights, shapes or names) is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTER_RECORD",
    "AdapterError",
    "ConditionCheck",
    "check_adapter_base",
    "check_conditions",
    "model_fingerprint",
    "read_adapter_record",
]

ADAPTER_RECORD = "cifllm_adapter.json"


class AdapterError(ValueError):
    """An adapter that does not belong to the model, or a property it was not trained on."""


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 (16 hex) over the sorted tensor names, shapes and bf16-cast values of a model folder's safetensors."""
    import torch
    from safetensors import safe_open

    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("adapter_")]
    if not files:
        raise AdapterError(f"{d}: no *.safetensors weights to fingerprint")
    h = hashlib.sha256()
    tensors: dict[str, tuple[Path, str]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensors[k] = (f, k)
    handles: dict[Path, Any] = {}
    try:
        for name in sorted(tensors):
            f, k = tensors[name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt").__enter__()
            t = handles[f].get_tensor(k)
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    finally:
        for fh in handles.values():
            fh.__exit__(None, None, None)
    return h.hexdigest()[:16]


def read_adapter_record(adapter_dir: str | Path) -> dict[str, Any]:
    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise AdapterError(f"{d}: not a LoRA adapter folder (no adapter_config.json)")
    rec = d / ADAPTER_RECORD
    if not rec.is_file():
        raise AdapterError(f"{d}: no {ADAPTER_RECORD}; cannot tell which base model this adapter belongs to")
    return json.loads(rec.read_text())


def check_adapter_base(adapter_dir: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """The adapter's record if it was trained on ``model_dir``'s weights; else :class:`AdapterError`."""
    rec = read_adapter_record(adapter_dir)
    want = rec.get("base_fingerprint")
    have = model_fingerprint(model_dir)
    if want != have:
        raise AdapterError(
            f"adapter {adapter_dir} was trained on base model {rec.get('base_model')!r} (fingerprint {want}); "
            f"{model_dir} has fingerprint {have}: load it on its own base model"
        )
    return rec


@dataclass
class ConditionCheck:
    """Result of :func:`check_conditions`: ``flags`` maps property -> note for values outside the training range."""

    flags: dict[str, str] = field(default_factory=dict)

    @property
    def extrapolating(self) -> bool:
        return bool(self.flags)


def check_conditions(record: dict[str, Any], conditions: dict[str, float]) -> ConditionCheck:
    """Refuse properties the adapter was not trained on; flag values outside the training range (allowed: asking
    beyond the range is the point of output extrapolation, but it is reported with every sample)."""
    trained = record.get("conditioning") or {}
    unknown = sorted(set(conditions) - set(trained))
    if unknown:
        raise AdapterError(
            f"the adapter was not trained on propert{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"it knows {sorted(trained) or 'none (unconditioned adapter)'}"
        )
    out = ConditionCheck()
    for k, v in conditions.items():
        st = trained[k]
        lo, hi = st.get("min"), st.get("max")
        if lo is None or hi is None or not math.isfinite(float(v)):
            continue
        span = max(hi - lo, 1e-12)
        if v > hi:
            out.flags[k] = f"{k}={v:g} is above the training maximum {hi:g} {st.get('unit', '')} (+{(v - hi) / span:.2f} x range)".strip()
        elif v < lo:
            out.flags[k] = f"{k}={v:g} is below the training minimum {lo:g} {st.get('unit', '')} (-{(lo - v) / span:.2f} x range)".strip()
    return out
