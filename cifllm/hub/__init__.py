"""Sharing models: resolve (default / folder / Hub id), export (bf16 safetensors), model cards, push. (Sampling and
checking structures from a shared model: :func:`cifllm.generate`, the one front-end.)

Submodules import their heavy dependencies (torch, transformers, huggingface_hub) inside functions, so importing
``cifllm.hub`` is cheap.
"""

from __future__ import annotations

from cifllm.core.models import DEFAULT_MODEL_DIR, ModelNotFoundError, resolve_model
from cifllm.hub.card import CardError, render_model_card, write_model_card
from cifllm.hub.export import ExportError, ExportResult, export_model
from cifllm.hub.push import PushError, PushResult, plan_upload, push_to_hub

__all__ = [
    "DEFAULT_MODEL_DIR",
    "CardError",
    "ExportError",
    "ExportResult",
    "ModelNotFoundError",
    "PushError",
    "PushResult",
    "export_model",
    "plan_upload",
    "push_to_hub",
    "render_model_card",
    "resolve_model",
    "write_model_card",
]
