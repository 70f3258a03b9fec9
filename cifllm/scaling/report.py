"""Plot and Markdown/JSON report of a transfer scaling-law fit (see :mod:`cifllm.scaling.fit`).

Sizes are numbers of structures (CIFs) in the pretraining corpus; errors are in the units of the downstream metric
(lower is better). Every file is written atomically (temp file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cifllm.core.records import SCALING_REPORT
from cifllm.scaling.fit import (
    MODEL_PLUS_CONSTANT,
    MODEL_PURE,
    PowerLawAssessment,
    ScalingFit,
    TargetEstimate,
    _json_safe,
    _per_size,
    _prepare,
    assess_power_law,
    marginal_gain,
    size_for_target,
)
from cifllm.utils.files import atomic_write_bytes, atomic_write_text

__all__ = ["plot_fit", "render_report", "write_report"]

#: How far beyond the largest measured size the fitted curve is drawn.
EXTEND = 4.0


def _g(x: Any, nd: int = 4) -> str:
    """Number with ``nd`` significant digits; ``n/a`` for None/NaN, ``inf`` kept."""
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{nd}g}"


def _size(x: Any) -> str:
    """A corpus size in structures, with thousands separators (``∞`` for unreachable)."""
    if x is None:
        return "n/a"
    x = float(x)
    if math.isinf(x):
        return "∞"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _ci(pair: Any, nd: int = 4) -> str:
    if pair is None or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in pair):
        return "n/a"
    return f"[{_g(pair[0], nd)}, {_g(pair[1], nd)}]"


# ---------------------------------------------------------------------------------------------------------- plot


def plot_fit(
    rows: Iterable[Mapping[str, Any]], fit: ScalingFit, path: str | Path, pure_fit: ScalingFit | None = None, title: str | None = None
) -> Path:
    """Draw the fit and save it as a PNG at ``path`` (atomically); returns the path.

    Top: every run (faint points) and the per-size mean +- standard deviation on log-log axes (linear y if some error
    is <= 0), the fitted curve extended to 4x the largest size with its bootstrap percentile band, a dashed line at
    the transfer gap C and, if given, the pure power-law fit. Bottom: residuals (mean per size minus fit) vs size.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = _prepare(rows)
    means, std, _ = _per_size(d)
    lo_n, hi_n = float(d.sizes[0]), float(d.sizes[-1])
    grid = np.geomspace(lo_n / 1.25, hi_n * EXTEND, 240)
    curve = np.asarray(fit.predict(grid))
    log_y = bool(np.all(d.y > 0))

    fig = Figure(figsize=(7.5, 7.0))
    FigureCanvasAgg(fig)
    ax, axr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.scatter(d.n, d.y, s=12, color="#999999", alpha=0.5, label="runs", zorder=2)
    ax.errorbar(d.sizes, means, yerr=std, fmt="o", color="#4477aa", capsize=3, label="mean ± std over repeats", zorder=3)
    if fit.n_boot_ok:
        band_lo, band_hi = fit.predict_band(grid)
        ax.fill_between(grid, band_lo, band_hi, color="#ee6677", alpha=0.2, lw=0, label=f"{fit.ci:.0%} bootstrap band")
    if fit.model == MODEL_PURE:
        label = rf"fit: $D\,n^{{-\alpha}}$ ($\alpha$ = {_g(fit.alpha, 3)})"
    else:
        label = rf"fit: $D\,n^{{-\alpha}} + C$ ($\alpha$ = {_g(fit.alpha, 3)}, C = {_g(fit.C, 3)})"
    ax.plot(grid, curve, color="#ee6677", lw=2, label=label, zorder=4)
    if pure_fit is not None:
        ax.plot(grid, np.asarray(pure_fit.predict(grid)), color="#228833", lw=1.5, ls=":", label=rf"pure power law $D\,n^{{-\alpha}}$ ($\alpha$ = {_g(pure_fit.alpha, 3)})")
    if fit.C > 0:
        ax.axhline(fit.C, color="#ee6677", ls="--", lw=1, label=f"transfer gap C = {_g(fit.C, 3)}")
    ax.axvline(hi_n, color="#bbbbbb", ls=":", lw=1)
    ax.set_xscale("log")
    # Keep the bootstrap band from dictating the axis when it fans out far beyond the data.
    shown = np.concatenate([d.y, curve, [fit.C] if fit.C > 0 else []])
    if pure_fit is not None:
        shown = np.concatenate([shown, np.asarray(pure_fit.predict(grid))])
    ymin, ymax = float(np.min(shown)), float(np.max(shown))
    if log_y:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.set_ylim(ymin / 1.25, ymax * 1.25)
        # Plain numbers on the error axis; label minor ticks too when the range is short (less than a decade or so).
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter() if ymax / ymin < 20 else NullFormatter())
    else:
        pad = 0.1 * (ymax - ymin or abs(ymax) or 1.0)
        ax.set_ylim(ymin - pad, ymax + pad)
    metric = fit.metric or "error"
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title(title or f"Transfer scaling: {metric} vs pretraining corpus size")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.25)

    resid_runs = d.y - np.asarray(fit.predict(d.n))
    resid_means = means - np.asarray(fit.predict(d.sizes))
    axr.scatter(d.n, resid_runs, s=10, color="#999999", alpha=0.5)
    axr.errorbar(d.sizes, resid_means, yerr=std, fmt="o", color="#4477aa", capsize=3)
    axr.axhline(0.0, color="#ee6677", lw=1)
    axr.axvline(hi_n, color="#bbbbbb", ls=":", lw=1)
    axr.set_xscale("log")
    axr.set_xlabel("pretraining corpus size n (structures)")
    axr.set_ylabel("mean − fit")
    axr.grid(True, which="both", alpha=0.25)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


# -------------------------------------------------------------------------------------------------------- report


def render_report(
    rows: Iterable[Mapping[str, Any]],
    fit: ScalingFit,
    assessment: PowerLawAssessment,
    holdout: Mapping[str, Any] | None = None,
    target: TargetEstimate | None = None,
    meta: Mapping[str, Any] | None = None,
    plot_name: str | None = "scaling.png",
    comparison: Mapping[str, Any] | None = None,
) -> str:
    """Markdown report explaining the fit in plain words.

    Sections: header from ``meta`` (task, metric, command, ...), a prominent warning when ``assessment`` says the
    data do not support a power law, a summary of what alpha and C mean for these data and what the next doubling
    of the corpus buys, the table of runs, the parameters with CIs, the assessment, and the optional model comparison
    (:func:`~cifllm.scaling.fit.compare_models`), held-out-size check, target size and plot (``plot_name``; None
    leaves the plot out).
    """
    rows = list(rows)
    d = _prepare(rows)
    means, std, counts = _per_size(d)
    meta = dict(meta or {})
    metric = str(meta.get("metric") or fit.metric or "error")
    pure = fit.model == MODEL_PURE
    largest = int(d.sizes[-1])
    ci_pct = f"{fit.ci:.0%}"
    md: list[str] = [f"# Transfer scaling law: {metric} vs pretraining corpus size", ""]

    if meta:
        md += ["| | |", "|---|---|"]
        for k, v in meta.items():
            val = (f"`{v}`" if k in ("command", "cmd", "command_line") else str(v)).replace("|", "\\|")
            md.append(f"| {k} | {val} |")
        md.append("")

    if not assessment.supported:
        md += [
            "> **⚠ Warning: these data do not support a power law.** The numbers below are what the least-squares fit",
            "> returns, but they should not be used to extrapolate to larger corpora or to plan data collection.",
            ">",
            "> Reasons:",
        ]
        md += [f"> - {r}" for r in assessment.reasons]
        md.append("")

    # Summary in plain words.
    formula = "err(n) = D · n^-α" + ("" if pure else " + C")
    md += [
        "## Summary",
        "",
        f"Fitted `{formula}` to {fit.n_points} runs at {len(fit.sizes)} pretraining sizes from {_size(d.sizes[0])} to "
        f"{_size(largest)} structures (n = number of CIFs in the pretraining corpus; error = "
        f"{'the downstream metric' if metric == 'error' else metric}, lower is better, in the metric's units). {ci_pct} confidence intervals from {fit.n_boot_ok} bootstrap refits.",
        "",
    ]
    shrink = fit.doubling_factor
    md.append(
        f"- **Scaling strength α = {_g(fit.alpha, 3)}** ({ci_pct} CI {_ci(fit.alpha_ci, 3)}): each doubling of the corpus "
        f"reduces the reducible error by a factor 2^-α = {_g(shrink, 3)}, i.e. removes {100 * (1 - shrink):.1f}% of it."
    )
    err_max = float(fit.predict(largest))
    red_max = float(fit.reducible(largest))
    if pure:
        md.append(
            "- **No transfer gap in this model (C = 0)**: the pure power law assumes the error keeps falling towards 0 as the "
            "corpus grows; compare with the fit that has C before trusting that."
        )
    else:
        md.append(
            f"- **Transfer gap C = {_g(fit.C, 3)}** ({ci_pct} CI {_ci(fit.C_ci, 3)}): no amount of pretraining data will bring "
            f"the error below C ≈ {_g(fit.C, 3)}. At the largest measured size ({_size(largest)}) the fitted error is "
            f"{_g(err_max, 3)}, of which {_g(red_max, 3)} ({100 * red_max / err_max:.0f}%) is reducible by more data."
            if err_max > 0
            else f"- **Transfer gap C = {_g(fit.C, 3)}** ({ci_pct} CI {_ci(fit.C_ci, 3)}): no amount of pretraining data will bring the error below C."
        )
    gain = marginal_gain(fit, largest)
    gain_rel = marginal_gain(fit, largest, relative=True)
    shares = []
    if err_max > 0:
        shares.append(f"{100 * gain / err_max:.1f}% of the current error")
    if math.isfinite(gain_rel):
        shares.append(f"{100 * gain_rel:.1f}% of its reducible part")
    md.append(
        f"- **Next doubling** ({_size(largest)} → {_size(2 * largest)} structures): predicted error {_g(err_max, 4)} → "
        f"{_g(float(fit.predict(2 * largest)), 4)}, a gain of {_g(gain, 3)}" + (f" ({'; '.join(shares)})." if shares else ".")
    )
    if target is not None:
        md.append(f"- **Target {metric} = {_g(target.target)}**: {target.message}.")
    if holdout is not None and holdout.get("models", {}).get(fit.model, {}).get("rel_error") is not None:
        h = holdout["models"][fit.model]
        md.append(
            f"- **Extrapolation check**: fitted without the largest size, the model predicts {_g(h['predicted'])} there; "
            f"observed {_g(holdout['observed_mean'])} (relative error {100 * h['rel_error']:.1f}%)."
        )
    md.append("")

    # Runs.
    pred = np.asarray(fit.predict(d.sizes))
    md += ["## Runs", "", f"| size (structures) | repeats | mean {metric} ± std | fit | mean − fit |", "|---:|---:|---:|---:|---:|"]
    for s, mu, sd, c, pr in zip(d.sizes, means, std, counts, pred):
        md.append(f"| {_size(s)} | {int(c)} | {float(mu):#.4g} ± {float(sd):#.2g} | {float(pr):#.4g} | {float(mu - pr):+.3g} |")
    md.append("")

    # Parameters.
    md += [
        "## Fitted parameters",
        "",
        f"Model `{formula}` ({fit.model}), least squares over all {fit.n_points} runs.",
        "",
        f"| parameter | estimate | {ci_pct} CI | meaning |",
        "|---|---:|---|---|",
        f"| D | {_g(fit.D)} | {_ci(fit.D_ci)} | scale of the reducible error (metric units × structures^α) |",
        f"| α | {_g(fit.alpha)} | {_ci(fit.alpha_ci)} | scaling strength (dimensionless) |",
        f"| C | {_g(fit.C)} | {_ci(fit.C_ci)} | transfer gap, the error no data removes (metric units) |",
        "",
        f"RMSE of the per-size means: {_g(fit.rmse, 3)}; R² of the per-size means: {_g(fit.r2, 4)}; reducible error at the "
        f"geometric-mean size {_size(fit.n_ref)}: {_g(fit.d_ref, 4)}.",
        f"Bootstrap: {fit.bootstrap_method}, {fit.n_boot_ok} of {fit.n_boot} refits converged ({fit.n_boot_failed} failed), seed {fit.seed}.",
    ]
    if fit.at_bounds:
        md.append(f"Parameters at a bound of the fit: {', '.join(fit.at_bounds)}.")
    md.append("")

    # Assessment.
    verdict = "**yes**" if assessment.supported else "**no**"
    md += ["## Does a power law describe these data?", "", f"Verdict: {verdict}.", ""]
    if assessment.reasons:
        md += ["Failed criteria:", ""] + [f"- {r}" for r in assessment.reasons] + [""]
    if assessment.evidence:
        md += ["Passed criteria:", ""] + [f"- {r}" for r in assessment.evidence] + [""]
    if assessment.caveats:
        md += ["Caveats:", ""] + [f"- {r}" for r in assessment.caveats] + [""]

    if comparison is not None:
        md += ["## With or without a transfer gap", "", "| model | α | C | RSS | AIC | BIC |", "|---|---:|---:|---:|---:|---:|"]
        for name in (MODEL_PLUS_CONSTANT, MODEL_PURE):
            m = comparison["models"][name]
            md.append(f"| {name} | {_g(m['alpha'])} | {_g(m['C'])} | {_g(m['rss'])} | {_g(m['aic'])} | {_g(m['bic'])} |")
        md += [
            "",
            f"ΔAIC (pure − with C) = {_g(comparison['delta_aic'], 3)}, ΔBIC = {_g(comparison['delta_bic'], 3)}; "
            f"likelihood-ratio test of C = 0: p = {_g(comparison['c_test_p'], 2)}. {comparison['verdict']}",
            "",
        ]

    if holdout is not None:
        md += [
            "## Held-out size check",
            "",
            f"Both models fitted on sizes {', '.join(_size(s) for s in holdout['train_sizes'])} only, then asked for the mean "
            f"error at the held-out largest size {_size(holdout['held_out_size'])} (observed {_g(holdout['observed_mean'])} ± "
            f"{_g(holdout['observed_std'], 2)} over {holdout['n_repeats']} repeat{'' if holdout['n_repeats'] == 1 else 's'}).",
            "",
            "| model | predicted | observed | abs. error | rel. error | abs. error / std |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, h in holdout["models"].items():
            if "error" in h:
                md.append(f"| {name} | fit failed: {h['error']} | | | | |")
            else:
                rel = "n/a" if h.get("rel_error") is None else f"{100 * h['rel_error']:.1f}%"
                md.append(
                    f"| {name} | {_g(h['predicted'])} | {_g(holdout['observed_mean'])} | {_g(h['abs_error'], 3)} | {rel} | {_g(h.get('abs_error_in_std'), 2)} |"
                )
        md.append("")

    if target is not None:
        md += ["## Corpus size for a target error", ""]
        if target.reachable:
            md.append(
                f"To reach {metric} = {_g(target.target)} the fit needs n ≈ {_size(target.n)} structures "
                f"({ci_pct} CI {_size(target.n_ci[0]) if target.n_ci else 'n/a'} to {_size(target.n_ci[1]) if target.n_ci else 'n/a'}), "
                f"{_g(target.times_largest, 3)}× the largest measured size {_size(target.largest_size)}."
            )
        else:
            md.append(f"Target {metric} = {_g(target.target)} is **unreachable**: it is at or below the transfer gap C = {_g(target.C, 4)}.")
        if target.frac_boot_unreachable is not None:
            md.append(f"{100 * target.frac_boot_unreachable:.0f}% of the {target.n_boot_used} bootstrap fits put the target below their C (unreachable).")
        if target.reachable and target.times_largest is not None and target.times_largest > EXTEND:
            md.append(f"This is more than {EXTEND:g}× beyond the measured sizes: a far extrapolation.")
        md.append("")

    if plot_name:
        md += ["## Plot", "", f"![scaling fit]({plot_name})", "", "Top: runs, per-size mean ± std, fit with bootstrap band (curve drawn to "
               f"{EXTEND:g}× the largest size), transfer gap C dashed. Bottom: per-size mean minus fit.", ""]

    md += [
        "## Method",
        "",
        f"Nonlinear least squares (scipy `least_squares`, trust region reflective) of `{formula}` on every run, with "
        "bounds D > 0, 0 < α ≤ 10" + ("" if pure else ", C ≥ 0") + "; sizes normalized by their geometric mean for numerical "
        "stability, starting point from a profile of the cost over a grid of α. Confidence intervals are percentile intervals "
        "of bootstrap refits that resample each size's repeats with replacement. The law follows Minami et al., "
        "npj Comput. Mater. 11, 146 (2025).",
        "",
    ]
    return "\n".join(md)


def write_report(
    out_dir: str | Path,
    rows: Iterable[Mapping[str, Any]],
    fit: ScalingFit,
    assessment: PowerLawAssessment | None = None,
    holdout: Mapping[str, Any] | None = None,
    target: TargetEstimate | float | None = None,
    comparison: Mapping[str, Any] | None = None,
    pure_fit: ScalingFit | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``scaling.png``, ``scaling_fit.json`` and ``REPORT.md`` to ``out_dir`` (each atomically).

    ``assessment`` is computed when not given; ``target`` may be a :class:`TargetEstimate` or a target error value.
    The JSON holds ``fit`` (:meth:`ScalingFit.to_dict`), ``assessment``, ``holdout``, ``target``, ``comparison``,
    ``pure_fit`` and ``meta``; non-finite numbers are written as null. Returns the three paths by kind
    (``plot``, ``json``, ``report``).
    """
    rows = list(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if assessment is None:
        assessment = assess_power_law(rows, fit)
    if target is not None and not isinstance(target, TargetEstimate):
        target = size_for_target(fit, float(target))
    plot = plot_fit(rows, fit, out / "scaling.png", pure_fit=pure_fit, title=(meta or {}).get("title"))
    payload = {
        "fit": fit.to_dict(),
        "assessment": assessment.to_dict(),
        "holdout": holdout,
        "target": None if target is None else target.to_dict(),
        "comparison": comparison,
        "pure_fit": None if pure_fit is None else pure_fit.to_dict(),
        "meta": dict(meta) if meta is not None else None,
    }
    js = out / "scaling_fit.json"
    atomic_write_text(js, json.dumps(_json_safe(payload), indent=2, allow_nan=False, default=str) + "\n")
    md = out / SCALING_REPORT
    atomic_write_text(md, render_report(rows, fit, assessment, holdout=holdout, target=target, meta=meta, plot_name=plot.name, comparison=comparison))
    return {"plot": plot, "json": js, "report": md}
