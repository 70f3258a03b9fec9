"""The record every per-sample check returns (shared by :mod:`cifllm.evaluation.checks` and
:mod:`cifllm.evaluation.crystallm_consistency`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckResult"]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check. ``ok`` is None when the check was not run (``reason`` says why: ``skipped_<check>``)."""

    name: str
    ok: bool | None
    reason: str = ""
    detail: str = ""
    value: float | None = None
