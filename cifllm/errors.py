"""Compatibility name of :mod:`cifllm.core.errors` (the one base class of user errors)."""

from __future__ import annotations

from cifllm.core.errors import CifllmError

__all__ = ["CifllmError"]
