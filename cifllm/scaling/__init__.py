"""Transfer scaling laws: fit ``err(n) = D * n**-alpha + C`` (downstream error of a fine-tuned model against the
number of structures n in its pretraining corpus; Minami et al., npj Comput. Mater. 11, 146 (2025)), judge whether
the data support a power law, and report it (Markdown, JSON, plot)."""

from cifllm.scaling.fit import (
    PowerLawAssessment,
    ScalingError,
    ScalingFit,
    TargetEstimate,
    assess_power_law,
    compare_models,
    fit_scaling,
    holdout_check,
    load_rows,
    marginal_gain,
    size_for_target,
)
from cifllm.scaling.report import plot_fit, render_report, write_report

__all__ = [
    "PowerLawAssessment",
    "ScalingError",
    "ScalingFit",
    "TargetEstimate",
    "assess_power_law",
    "compare_models",
    "fit_scaling",
    "holdout_check",
    "load_rows",
    "marginal_gain",
    "plot_fit",
    "render_report",
    "size_for_target",
    "write_report",
]
