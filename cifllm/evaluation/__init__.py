"""Evaluation of sampled CIFs: per-sample checks, uniqueness, novelty, CSP match, metrics and reports."""

from cifllm.evaluation.checks import (
    CHECK_NAMES,
    CONSISTENCY_CHECKS,
    VALIDITY_CHECKS,
    CheckResult,
    CheckSettings,
    SampleVerdict,
    check_sample,
)
from cifllm.evaluation.limits import map_with_time_limit
from cifllm.evaluation.matching import ReferenceIndex, csp_match_task, csp_metrics
from cifllm.evaluation.run import EvalConfig, evaluate, evaluate_texts, summarize

__all__ = [
    "CHECK_NAMES",
    "CONSISTENCY_CHECKS",
    "VALIDITY_CHECKS",
    "CheckResult",
    "CheckSettings",
    "EvalConfig",
    "ReferenceIndex",
    "SampleVerdict",
    "check_sample",
    "csp_match_task",
    "csp_metrics",
    "evaluate",
    "evaluate_texts",
    "map_with_time_limit",
    "summarize",
]
