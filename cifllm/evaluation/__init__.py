"""Evaluation of sampled CIFs: per-sample checks, uniqueness, novelty, CSP match, metrics and reports."""

from cifllm.evaluation.checks import (
    CHECK_NAMES,
    CONSISTENCY_CHECKS,
    STRICT_CONSISTENCY_CHECKS,
    VALIDITY_CHECKS,
    CheckResult,
    CheckSettings,
    SampleVerdict,
    check_sample,
)
from cifllm.evaluation.crystallm_consistency import CrystaLLMVerdict, crystallm_is_valid
from cifllm.evaluation.limits import map_with_time_limit
from cifllm.evaluation.matching import ReferenceIndex, csp_match_task, csp_metrics
from cifllm.evaluation.run import EvalConfig, evaluate, evaluate_texts, summarize

__all__ = [
    "CHECK_NAMES",
    "CONSISTENCY_CHECKS",
    "STRICT_CONSISTENCY_CHECKS",
    "VALIDITY_CHECKS",
    "CheckResult",
    "CheckSettings",
    "CrystaLLMVerdict",
    "EvalConfig",
    "ReferenceIndex",
    "SampleVerdict",
    "check_sample",
    "crystallm_is_valid",
    "csp_match_task",
    "csp_metrics",
    "evaluate",
    "evaluate_texts",
    "map_with_time_limit",
    "summarize",
]
