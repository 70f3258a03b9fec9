"""Model resolution lives in the base layer (:mod:`cifllm.core.models`: training and sampling need it too); these
are its names under :mod:`cifllm.hub`."""

from __future__ import annotations

from cifllm.core.models import (
    DEFAULT_MODEL_DIR,
    DOWNLOAD_PATTERNS,
    HUB_ID_RE,
    MODEL_ENV,
    ModelNotFoundError,
    is_hub_id,
    resolve_model,
)

__all__ = ["DEFAULT_MODEL_DIR", "DOWNLOAD_PATTERNS", "HUB_ID_RE", "MODEL_ENV", "ModelNotFoundError", "is_hub_id", "resolve_model"]
