"""Metrics of predicted against DFT energies above the hull, matbench-discovery style: MAE / RMSE / mean signed error
of E_hull (eV/atom) with bootstrap 95% intervals, and for each threshold (``stable``: E_hull <= 0, ``metastable``:
E_hull <= 0.1 eV/atom) the confusion counts, precision and recall (Wilson 95% intervals), F1 (bootstrap 95%
interval) and accuracy. A value at or below ``threshold + tol`` is "below"; ``tol`` (1e-6 eV/atom) absorbs the
floating-point noise of a hull phase's own E_hull (1e-17 rather than 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cifllm.core.report import wilson_interval

__all__ = ["THRESHOLDS", "classification", "error_stats", "hull_metrics"]

THRESHOLDS: dict[str, float] = {"stable": 0.0, "metastable": 0.1}
TOL = 1e-6


def _ci(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    return [round(float(np.quantile(v, 0.025)), 5), round(float(np.quantile(v, 0.975)), 5)] if len(v) else None


def error_stats(pred: Sequence[float], true: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """MAE, RMSE, mean signed error (pred - true) and R^2, with bootstrap 95% intervals of MAE and mean error."""
    p, t = np.asarray(pred, float), np.asarray(true, float)
    n = len(p)
    if n == 0:
        return {"n": 0, "mae": None, "mae_ci95": None, "rmse": None, "mean_error": None, "mean_error_ci95": None, "r2": None}
    err = p - t
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    ss = float(np.sum((t - t.mean()) ** 2))
    return {
        "n": n,
        "mae": round(float(np.mean(np.abs(err))), 5),
        "mae_ci95": _ci(np.abs(err)[idx].mean(axis=1)),
        "rmse": round(float(np.sqrt(np.mean(err**2))), 5),
        "mean_error": round(float(err.mean()), 5),
        "mean_error_ci95": _ci(err[idx].mean(axis=1)),
        "r2": round(1 - float(np.sum(err**2)) / ss, 4) if ss > 0 else None,
    }


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    d = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, 2 * tp / np.maximum(d, 1), np.nan)


def classification(pred: Sequence[float], true: Sequence[float], threshold: float, n_boot: int = 1000, seed: int = 0, tol: float = TOL) -> dict[str, Any]:
    """Confusion counts of "E_hull <= threshold" (predicted vs true), precision/recall with Wilson intervals, F1 with a
    bootstrap 95% interval, accuracy and the true positive share (prevalence)."""
    p = np.asarray(pred, float) <= threshold + tol
    t = np.asarray(true, float) <= threshold + tol
    n = len(p)
    tp, fp, fn, tn = int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t)), int(np.sum(~p & ~t))
    f1 = _f1(np.array(tp), np.array(fp), np.array(fn))
    out: dict[str, Any] = {
        "threshold": threshold,
        "n": n,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "prevalence": round(float(t.mean()), 4) if n else None,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "precision_ci95": wilson_interval(tp, tp + fp),
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "recall_ci95": wilson_interval(tp, tp + fn),
        "f1": None if np.isnan(f1) else round(float(f1), 4),
        "f1_ci95": None,
        "accuracy": round((tp + tn) / n, 4) if n else None,
    }
    if n:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        pp, tt = p[idx], t[idx]
        out["f1_ci95"] = _ci(_f1(np.sum(pp & tt, 1), np.sum(pp & ~tt, 1), np.sum(~pp & tt, 1)))
    return out


def hull_metrics(pred: Sequence[float], true: Sequence[float], thresholds: dict[str, float] = THRESHOLDS, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`error_stats` plus :func:`classification` for each named threshold (eV/atom)."""
    return {"error": error_stats(pred, true, n_boot, seed), **{k: classification(pred, true, v, n_boot, seed) for k, v in thresholds.items()}}
