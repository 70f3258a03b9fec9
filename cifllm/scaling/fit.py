"""Fit transfer scaling laws: downstream error against pretraining-corpus size.

The model (Minami et al., npj Comput. Mater. 11, 146 (2025), "Scaling law of Sim2Real transfer learning in
expanding computational materials databases") is

    err(n) = D * n**-alpha + C

with ``n`` the size of the pretraining corpus (number of CIFs / structures) and ``err`` the downstream error of the
fine-tuned model in the units of its metric (lower is better). ``alpha`` (dimensionless) is the scaling strength,
``C`` (metric units) the transfer gap that no amount of pretraining data removes, and ``D`` (metric units times
structures**alpha) the scale of the reducible part. ``fix_c_zero=True`` fits the pure power law ``D * n**-alpha``.

Input rows are dicts with at least ``size`` (int, structures), ``repeat`` (int) and ``value`` (float, the error);
optionally ``metric``, ``seed``, ``wall_s`` and ``status`` (rows whose status is present and not ``"ok"`` are
ignored). Every row (every repeat) is one point of the least-squares fit.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifllm.core.errors import CifllmError

__all__ = [
    "ALPHA_BOUNDS",
    "ALPHA_RESOLVED",
    "MODEL_PLUS_CONSTANT",
    "MODEL_PURE",
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
    "size_for_target",
]

MODEL_PLUS_CONSTANT = "power_law_plus_constant"
MODEL_PURE = "pure_power_law"
#: Bounds of the scaling exponent alpha during the fit.
ALPHA_BOUNDS: tuple[float, float] = (1e-6, 10.0)
#: An alpha CI whose lower end is at or below this value does not distinguish alpha from 0 (no scaling).
ALPHA_RESOLVED = 0.01
#: Significance level of the trend and constant-model tests in :func:`assess_power_law`.
SIGNIFICANCE = 0.05
#: Significance level of the lack-of-fit test in :func:`assess_power_law` (stricter: it rejects the functional form).
LACK_OF_FIT_SIGNIFICANCE = 0.01

_D_MIN = 1e-12  # lower bound of the normalized scale D' (in units of the mean |error|); D > 0
_ALPHA_GRID = np.concatenate([[ALPHA_BOUNDS[0]], np.geomspace(1e-3, ALPHA_BOUNDS[1], 80)])


class ScalingError(CifllmError, ValueError):
    """Input that cannot be fitted (too few sizes, bad values, ...) or a fit that did not converge."""


# ----------------------------------------------------------------------------------------------------------- input


def load_rows(path: str | Path, metric: str | None = None) -> list[dict[str, Any]]:
    """Read the sweep's ``runs.jsonl``: one JSON object per line (blank lines ignored).

    Rows whose ``status`` is present and not ``"ok"`` are skipped; with ``metric`` only rows whose ``metric`` equals it
    are kept. A line that is not a JSON object raises :class:`ScalingError` naming the file and line number; so does a
    ``metric`` that no row has.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ScalingError(f"cannot read {p}: {e}") from e
    rows: list[dict[str, Any]] = []
    seen_metrics: set[str] = set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScalingError(f"{p}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise ScalingError(f"{p}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        if "status" in row and row["status"] != "ok":
            continue
        if "metric" in row:
            seen_metrics.add(str(row["metric"]))
        if metric is not None and row.get("metric") != metric:
            continue
        rows.append(row)
    if metric is not None and not rows:
        raise ScalingError(f"{p}: no successful rows with metric {metric!r} (metrics present: {sorted(seen_metrics) or 'none'})")
    return rows


@dataclass(frozen=True)
class _Data:
    n: np.ndarray  # size of each row (structures), float
    y: np.ndarray  # error of each row (metric units)
    sizes: np.ndarray  # sorted distinct sizes
    group: np.ndarray  # index into sizes for each row
    metric: str | None


def _prepare(rows: Iterable[Mapping[str, Any]]) -> _Data:
    """Validate rows and turn them into arrays; rows with a status other than ``"ok"`` are dropped."""
    ns: list[float] = []
    ys: list[float] = []
    metrics: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ScalingError(f"row {i}: expected a dict with size, repeat and value, got {type(row).__name__}")
        if "status" in row and row["status"] != "ok":
            continue
        size, rep, value = row.get("size"), row.get("repeat"), row.get("value")
        where = f"row {i} (size={size!r}, repeat={rep!r})"
        if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
            raise ScalingError(f"{where}: size must be a positive whole number of structures, got {size!r}")
        if not (math.isfinite(float(size)) and float(size) > 0 and float(size).is_integer()):
            raise ScalingError(f"{where}: size must be a positive whole number of structures, got {size!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
            raise ScalingError(f"{where}: value is not a finite number ({value!r})")
        if "metric" in row and row["metric"] is not None:
            metrics.add(str(row["metric"]))
        ns.append(float(size))
        ys.append(float(value))
    if not ns:
        raise ScalingError("no rows to fit (empty input, or every run failed or was filtered out)")
    if len(metrics) > 1:
        raise ScalingError(f"rows mix metrics {sorted(metrics)}; fit one metric at a time (load_rows(path, metric=...))")
    n, y = np.asarray(ns), np.asarray(ys)
    sizes, group = np.unique(n, return_inverse=True)
    if len(sizes) < 3:
        raise ScalingError(
            f"need at least 3 distinct pretraining sizes to fit err(n) = D*n^-alpha + C; got {len(sizes)} ({[int(s) for s in sizes]})"
        )
    return _Data(n=n, y=y, sizes=sizes, group=group, metric=next(iter(metrics)) if metrics else None)


def _per_size(d: _Data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample standard deviation (0 for a single repeat) and count of the error at each distinct size."""
    counts = np.bincount(d.group, minlength=len(d.sizes))
    means = np.bincount(d.group, weights=d.y, minlength=len(d.sizes)) / counts
    sq = np.bincount(d.group, weights=(d.y - means[d.group]) ** 2, minlength=len(d.sizes))
    std = np.sqrt(np.where(counts > 1, sq / np.maximum(counts - 1, 1), 0.0))
    return means, std, counts


# ------------------------------------------------------------------------------------------------------------ core


@dataclass(frozen=True)
class _Params:
    d_ref: float  # reducible error at n_ref (metric units): D * n_ref**-alpha
    alpha: float
    c: float
    rss: float  # residual sum of squares over all rows (metric units squared)


def _grid_start(x: np.ndarray, y: np.ndarray, fix_c_zero: bool) -> tuple[float, float, float]:
    """Profile the least-squares cost over a grid of alpha, solving (D', C) >= 0 exactly for each alpha.

    Returns the best (D', alpha, C) on the grid, the starting point of the nonlinear polish. For fixed alpha the
    model is linear in (D', C), so the constrained optimum is the unconstrained one if feasible, else the better of
    the two faces (C = 0, D' >= 0) and (D' = 0, C >= 0).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f = x[None, :] ** -_ALPHA_GRID[:, None]  # (A, N)
        m = len(y)
        sf, sff, sfy = f.sum(1), (f * f).sum(1), f @ y
        sy, syy = y.sum(), float(y @ y)

        def rss(dd: np.ndarray, cc: np.ndarray) -> np.ndarray:
            return syy - 2 * dd * sfy - 2 * cc * sy + dd * dd * sff + 2 * dd * cc * sf + m * cc * cc

        d_c0 = np.maximum(sfy / sff, 0.0)  # face C = 0
        cand_d, cand_c = [d_c0], [np.zeros_like(d_c0)]
        if not fix_c_zero:
            det = m * sff - sf * sf
            ok = det > 1e-12 * m * sff
            d_u = np.where(ok, (m * sfy - sf * sy) / np.where(ok, det, 1.0), np.nan)
            c_u = (sy - d_u * sf) / m
            feas = ok & (d_u >= 0) & (c_u >= 0)
            cand_d.append(np.where(feas, d_u, np.nan))
            cand_c.append(np.where(feas, c_u, np.nan))
            cand_d.append(np.zeros_like(d_c0))  # face D' = 0
            cand_c.append(np.full_like(d_c0, max(sy / m, 0.0)))
        costs = np.stack([rss(dd, cc) for dd, cc in zip(cand_d, cand_c)])  # (K, A)
        costs = np.where(np.isfinite(costs), costs, np.inf)
    k, a = np.unravel_index(int(np.argmin(costs)), costs.shape)
    return float(cand_d[k][a]), float(_ALPHA_GRID[a]), float(cand_c[k][a])


def _fit_core(n: np.ndarray, y: np.ndarray, n_ref: float, fix_c_zero: bool) -> _Params:
    """Least-squares fit of ``y = D' (n/n_ref)^-alpha + C`` with D' > 0, alpha in ALPHA_BOUNDS, C >= 0.

    The fit runs on ``x = n / n_ref`` and ``y / mean|y|`` (well-scaled parameters of order 1), starts from the best
    point of an alpha grid (:func:`_grid_start`) and is polished with ``scipy.optimize.least_squares`` (trust region
    reflective, analytic Jacobian). A polish that does not converge raises :class:`ScalingError`.
    """
    from scipy.optimize import OptimizeWarning, least_squares

    x = n / n_ref
    lx = np.log(x)
    ys = float(np.mean(np.abs(y)))
    ys = ys if ys > 0 else 1.0
    yy = y / ys
    d0, a0, c0 = _grid_start(x, yy, fix_c_zero)
    lo_a, hi_a = ALPHA_BOUNDS
    d0 = max(d0, 1e-3 * float(np.std(yy)) + 10 * _D_MIN)
    a0 = min(max(a0, lo_a * 10), hi_a * 0.999)

    if fix_c_zero:
        p0, lb, ub = [d0, a0], [_D_MIN, lo_a], [np.inf, hi_a]
    else:
        p0, lb, ub = [d0, a0, max(c0, 0.0) + 1e-9], [_D_MIN, lo_a, 0.0], [np.inf, hi_a, np.inf]

    def resid(p: np.ndarray) -> np.ndarray:
        c = 0.0 if fix_c_zero else p[2]
        return p[0] * np.exp(-p[1] * lx) + c - yy

    def jac(p: np.ndarray) -> np.ndarray:
        f = np.exp(-p[1] * lx)
        cols = [f, -p[0] * f * lx] + ([] if fix_c_zero else [np.ones_like(f)])
        return np.stack(cols, axis=1)

    try:
        with warnings.catch_warnings(), np.errstate(over="ignore", under="ignore"):
            warnings.simplefilter("error", OptimizeWarning)
            res = least_squares(resid, p0, jac=jac, bounds=(lb, ub), method="trf", x_scale="jac", max_nfev=2000)
    except (RuntimeError, OptimizeWarning, ValueError, np.linalg.LinAlgError) as e:
        raise ScalingError(f"the fit did not converge: {type(e).__name__}: {e}") from e
    if res.status <= 0 or not np.all(np.isfinite(res.x)):
        raise ScalingError(f"the fit did not converge: {res.message} (status {res.status}, {res.nfev} evaluations)")
    p = res.x
    c = 0.0 if fix_c_zero else float(p[2]) * ys
    r = float(p[0]) * ys * np.exp(-p[1] * lx) + c - y
    return _Params(d_ref=float(p[0]) * ys, alpha=float(p[1]), c=c, rss=float(r @ r))


def _percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float]:
    if samples.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(samples, [(1 - ci) / 2, (1 + ci) / 2])
    return (float(lo), float(hi))


# ------------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScalingFit:
    """A fitted scaling law ``err(n) = D * n**-alpha + C`` with percentile bootstrap intervals.

    Units: ``n`` and ``sizes`` in structures (CIFs in the pretraining corpus); ``C``, errors, ``rmse`` in the units of
    the metric; ``D`` in metric units times structures**alpha; ``alpha`` dimensionless. ``d_ref = D * n_ref**-alpha``
    is the reducible error at the reference size ``n_ref`` (geometric mean of the distinct sizes), which is what
    the fit actually estimates and is numerically safer than ``D`` for large alpha.

    ``rmse`` and ``r2`` compare the curve with the per-size mean errors; ``rss`` is over all rows (every repeat).
    """

    model: str
    D: float
    alpha: float
    C: float
    D_ci: tuple[float, float]
    alpha_ci: tuple[float, float]
    C_ci: tuple[float, float]
    ci: float
    n_boot: int
    n_boot_ok: int
    bootstrap_method: str
    seed: int
    n_points: int
    sizes: tuple[int, ...]
    mean_error: tuple[float, ...]
    std_error: tuple[float, ...]
    n_repeats: tuple[int, ...]
    rss: float
    rmse: float
    r2: float
    n_params: int
    converged: bool
    at_bounds: tuple[str, ...]
    n_ref: float
    d_ref: float
    metric: str | None = None
    boot_D: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    boot_alpha: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    boot_C: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def n_boot_failed(self) -> int:
        """Bootstrap refits that raised (did not converge)."""
        return self.n_boot - self.n_boot_ok

    @property
    def doubling_factor(self) -> float:
        """Factor ``2**-alpha`` by which each doubling of the corpus multiplies the reducible error."""
        return float(2.0**-self.alpha)

    @property
    def boot_d_ref(self) -> np.ndarray:
        """Bootstrap samples of the reducible error at ``n_ref`` (metric units)."""
        with np.errstate(over="ignore", under="ignore"):
            return self.boot_D * np.exp(-self.boot_alpha * math.log(self.n_ref))

    def predict(self, n: Any) -> Any:
        """Predicted error (metric units) at corpus size(s) ``n`` (structures); float for a scalar, else an array."""
        arr = np.asarray(n, dtype=float)
        with np.errstate(over="ignore", divide="ignore"):
            out = self.d_ref * (arr / self.n_ref) ** -self.alpha + self.C
        return float(out) if out.ndim == 0 else out

    def reducible(self, n: Any) -> Any:
        """Reducible part ``D * n**-alpha`` of the predicted error at size(s) ``n`` (metric units)."""
        out = np.asarray(self.predict(n), dtype=float) - self.C
        return float(out) if out.ndim == 0 else out

    def predict_boot(self, n: Any) -> np.ndarray:
        """Predictions of every kept bootstrap fit, shape ``(n_boot_ok, len(n))``."""
        arr = np.atleast_1d(np.asarray(n, dtype=float))
        with np.errstate(over="ignore", divide="ignore", under="ignore"):
            return self.boot_d_ref[:, None] * (arr[None, :] / self.n_ref) ** -self.boot_alpha[:, None] + self.boot_C[:, None]

    def predict_band(self, n: Any, ci: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band (lower, upper) of the bootstrap curves at sizes ``n``; NaN without bootstrap."""
        level = self.ci if ci is None else ci
        arr = np.atleast_1d(np.asarray(n, dtype=float))
        if self.n_boot_ok == 0:
            nan = np.full(arr.shape, np.nan)
            return nan, nan.copy()
        lo, hi = np.quantile(self.predict_boot(arr), [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable summary (bootstrap samples summarized, not listed; non-finite numbers become null)."""
        boot: dict[str, Any] = {
            "method": self.bootstrap_method,
            "n_boot": self.n_boot,
            "n_ok": self.n_boot_ok,
            "n_failed": self.n_boot_failed,
            "seed": self.seed,
        }
        if self.n_boot_ok:
            boot["std"] = {"D": float(np.std(self.boot_D)), "alpha": float(np.std(self.boot_alpha)), "C": float(np.std(self.boot_C))}
        return _json_safe(
            {
                "model": self.model,
                "formula": "err(n) = D * n^-alpha" + ("" if self.model == MODEL_PURE else " + C"),
                "metric": self.metric,
                "D": self.D,
                "alpha": self.alpha,
                "C": self.C,
                "ci": self.ci,
                "D_ci": list(self.D_ci),
                "alpha_ci": list(self.alpha_ci),
                "C_ci": list(self.C_ci),
                "doubling_factor": self.doubling_factor,
                "n_ref": self.n_ref,
                "d_ref": self.d_ref,
                "n_points": self.n_points,
                "n_params": self.n_params,
                "sizes": list(self.sizes),
                "mean_error": list(self.mean_error),
                "std_error": list(self.std_error),
                "n_repeats": list(self.n_repeats),
                "rss": self.rss,
                "rmse": self.rmse,
                "r2": self.r2,
                "converged": self.converged,
                "at_bounds": list(self.at_bounds),
                "bootstrap": boot,
            }
        )


def _json_safe(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays to Python types and non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def fit_scaling(
    rows: Iterable[Mapping[str, Any]], n_boot: int = 1000, ci: float = 0.95, seed: int = 0, fix_c_zero: bool = False
) -> ScalingFit:
    """Fit ``err(n) = D * n**-alpha + C`` (or ``D * n**-alpha`` with ``fix_c_zero``) to the rows by least squares.

    Every row (every repeat) is a point; bounds ``D > 0``, ``alpha`` in ``ALPHA_BOUNDS``, ``C >= 0``. Confidence
    intervals at level ``ci`` are percentile intervals of ``n_boot`` bootstrap refits. The bootstrap is a cluster
    bootstrap: for every size it resamples that size's repeats with replacement (so each size keeps its number of
    points). Resampling r repeats shrinks their variance by (r-1)/r, which makes percentile intervals too narrow for
    few repeats; the resampled values' deviations from their size mean are therefore scaled by sqrt(r/(r-1)). When
    every size has a single run that resampling cannot vary anything, so residuals of the fit are resampled instead
    (``bootstrap_method`` says which). Refits that do not converge are counted, not kept.

    Raises :class:`ScalingError` for no rows, fewer than 3 distinct sizes, a non-positive or non-integral size, a
    non-finite value, mixed metrics, or a point fit that does not converge.
    """
    if not 0 < ci < 1:
        raise ScalingError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ScalingError(f"n_boot must be >= 0, got {n_boot}")
    d = _prepare(rows)
    n_ref = float(np.exp(np.mean(np.log(d.sizes))))
    p = _fit_core(d.n, d.y, n_ref, fix_c_zero)
    means, std, counts = _per_size(d)

    # Bootstrap.
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(d.group == g) for g in range(len(d.sizes))]
    residual_boot = bool(np.all(counts == 1))
    # Resampling r repeats shrinks their spread by (r-1)/r; inflating deviations from the size mean undoes that.
    inflate = np.sqrt(counts / np.maximum(counts - 1, 1))
    fitted = p.d_ref * (d.n / n_ref) ** -p.alpha + p.c
    k_params = 2 if fix_c_zero else 3
    resid = (d.y - fitted) * math.sqrt(len(d.y) / (len(d.y) - k_params)) if len(d.y) > k_params else d.y - fitted
    b_d, b_a, b_c = [], [], []
    for _ in range(n_boot):
        if residual_boot:
            nb, yb = d.n, fitted + rng.choice(resid, size=len(resid), replace=True)
        else:
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
            gi = d.group[idx]
            nb, yb = d.n[idx], means[gi] + inflate[gi] * (d.y[idx] - means[gi])
        try:
            q = _fit_core(nb, yb, n_ref, fix_c_zero)
        except ScalingError:
            continue
        b_d.append(q.d_ref * n_ref**q.alpha)
        b_a.append(q.alpha)
        b_c.append(q.c)
    boot_D, boot_alpha, boot_C = np.asarray(b_d, float), np.asarray(b_a, float), np.asarray(b_c, float)

    pred_means = p.d_ref * (d.sizes / n_ref) ** -p.alpha + p.c
    ss_res = float(np.sum((means - pred_means) ** 2))
    ss_tot = float(np.sum((means - means.mean()) ** 2))
    at_bounds = []
    if p.alpha <= ALPHA_BOUNDS[0] * 10:
        at_bounds.append("alpha_lower")
    if p.alpha >= ALPHA_BOUNDS[1] * 0.999:
        at_bounds.append("alpha_upper")
    scale = float(np.mean(np.abs(d.y))) or 1.0
    if p.d_ref <= 1e-9 * scale:
        at_bounds.append("D_zero")
    if not fix_c_zero and p.c <= 1e-9 * scale:
        at_bounds.append("C_zero")
    return ScalingFit(
        model=MODEL_PURE if fix_c_zero else MODEL_PLUS_CONSTANT,
        D=float(p.d_ref * n_ref**p.alpha),
        alpha=p.alpha,
        C=p.c,
        D_ci=_percentile_ci(boot_D, ci),
        alpha_ci=_percentile_ci(boot_alpha, ci),
        C_ci=(0.0, 0.0) if fix_c_zero else _percentile_ci(boot_C, ci),
        ci=ci,
        n_boot=n_boot,
        n_boot_ok=len(boot_alpha),
        bootstrap_method="residual (one run per size)" if residual_boot else "cluster (repeats resampled within each size, spread-corrected)",
        seed=seed,
        n_points=len(d.y),
        sizes=tuple(int(s) for s in d.sizes),
        mean_error=tuple(float(v) for v in means),
        std_error=tuple(float(v) for v in std),
        n_repeats=tuple(int(c) for c in counts),
        rss=p.rss,
        rmse=math.sqrt(ss_res / len(means)),
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        n_params=2 if fix_c_zero else 3,
        converged=True,
        at_bounds=tuple(at_bounds),
        n_ref=n_ref,
        d_ref=p.d_ref,
        metric=d.metric,
        boot_D=boot_D,
        boot_alpha=boot_alpha,
        boot_C=boot_C,
    )


# ----------------------------------------------------------------------------------------------------- model choice


def _criteria(rss: float, n: int, n_params: int) -> dict[str, float]:
    """Gaussian AIC, AICc and BIC from a residual sum of squares; k counts the noise variance as a parameter."""
    k = n_params + 1
    ll = n * math.log(max(rss, 1e-300) / n)
    aic = ll + 2 * k
    aicc = aic + (2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf)
    return {"rss": rss, "n_params": n_params, "aic": aic, "aicc": aicc, "bic": ll + k * math.log(n)}


def compare_models(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fit ``D n^-alpha + C`` and ``D n^-alpha`` to all rows and compare them by AIC and BIC (lower is better).

    AIC/BIC use the Gaussian likelihood of the residuals over all rows (the noise variance counts as a parameter).
    ``delta_aic = AIC(pure) - AIC(with C)``: positive means the transfer gap C is supported. ``c_test_p`` is the
    likelihood-ratio test of C = 0, halved because C = 0 lies on the boundary (chi-bar-squared 0.5*chi2(0)+0.5*chi2(1)).
    A constant model (``err = mean``) is listed for reference. No bootstrap is run.
    """
    from scipy.stats import chi2

    rows = list(rows)
    d = _prepare(rows)
    n_ref = float(np.exp(np.mean(np.log(d.sizes))))
    npts = len(d.y)
    out: dict[str, Any] = {"n_points": npts, "sizes": [int(s) for s in d.sizes], "models": {}}
    for name, fix in ((MODEL_PLUS_CONSTANT, False), (MODEL_PURE, True)):
        p = _fit_core(d.n, d.y, n_ref, fix)
        out["models"][name] = {"D": p.d_ref * n_ref**p.alpha, "alpha": p.alpha, "C": p.c, **_criteria(p.rss, npts, 2 if fix else 3)}
    out["models"]["constant"] = {"C": float(d.y.mean()), **_criteria(float(np.sum((d.y - d.y.mean()) ** 2)), npts, 1)}
    plus, pure = out["models"][MODEL_PLUS_CONSTANT], out["models"][MODEL_PURE]
    out["delta_aic"] = pure["aic"] - plus["aic"]
    out["delta_bic"] = pure["bic"] - plus["bic"]
    out["preferred_aic"] = MODEL_PLUS_CONSTANT if out["delta_aic"] > 0 else MODEL_PURE
    out["preferred_bic"] = MODEL_PLUS_CONSTANT if out["delta_bic"] > 0 else MODEL_PURE
    lr = max(npts * math.log(max(pure["rss"], 1e-300) / max(plus["rss"], 1e-300)), 0.0)
    out["c_test_lr"] = lr
    out["c_test_p"] = 0.5 * float(chi2.sf(lr, 1)) if lr > 0 else 1.0
    if out["preferred_aic"] == out["preferred_bic"]:
        which = "a transfer gap C > 0" if out["preferred_aic"] == MODEL_PLUS_CONSTANT else "no transfer gap (C = 0)"
        out["verdict"] = f"AIC and BIC both prefer {which}."
    else:
        out["verdict"] = f"AIC prefers {out['preferred_aic']}, BIC prefers {out['preferred_bic']}: the data do not decide whether C > 0."
    return _json_safe(out)


@dataclass(frozen=True)
class PowerLawAssessment:
    """Verdict of :func:`assess_power_law`: ``supported`` plus the failed criteria (``reasons``), the passed ones
    (``evidence``), warnings that do not change the verdict (``caveats``) and the test statistics (``checks``)."""

    supported: bool
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]
    caveats: tuple[str, ...]
    checks: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {"supported": self.supported, "reasons": list(self.reasons), "evidence": list(self.evidence), "caveats": list(self.caveats), "checks": dict(self.checks)}
        )


def _spearman_less(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho of (x, y) and the one-sided p-value for rho < 0 (exact permutation test up to 8 points)."""
    from scipy.stats import rankdata, spearmanr

    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(ry) == 0:
        return math.nan, 1.0

    def rho_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a - a.mean()
        b = b - b.mean(axis=-1, keepdims=True)
        return (b @ a) / np.sqrt((a @ a) * (b * b).sum(-1))

    rho = float(rho_of(rx, ry[None, :])[0])
    if len(x) <= 8:
        perms = ry[np.array(list(itertools.permutations(range(len(ry)))))]
        p = float(np.mean(rho_of(rx, perms) <= rho + 1e-12))
    else:
        p = float(spearmanr(x, y, alternative="less").pvalue)
    return rho, p


def assess_power_law(rows: Iterable[Mapping[str, Any]], fit: ScalingFit) -> PowerLawAssessment:
    """Decide whether the rows support the fitted power law. ``supported`` is True iff no criterion fails.

    Criteria (failures; m = number of distinct sizes, N = number of rows, k = fit.n_params):

    1. Trend: Spearman rho between size and per-size mean error must be < 0, and for m >= 4 its one-sided p-value
       (exact permutation test for m <= 8, else scipy's) must be < 0.05. With m = 3 significance is impossible
       (smallest p = 1/6), so only rho < 0 is required and a caveat is added.
    2. Scaling resolved: the fitted reducible part must not be zero (D at its lower bound, i.e. the fit is a
       constant); the point estimate of alpha must not sit at its upper bound 10 (a step, not a power law); and the
       lower end of the bootstrap CI of alpha must exceed ``ALPHA_RESOLVED`` = 0.01 (else alpha is not
       distinguishable from 0, its lower bound). Without bootstrap fits the CI part is skipped with a caveat.
    3. Better than a constant: F-test of the fit against ``err = const`` on all rows,
       F = ((RSS_const - RSS_fit) / (k - 1)) / (RSS_fit / (N - k)) with (k - 1, N - k) degrees of freedom, p < 0.05.
       N <= k (as many parameters as points) fails: the fit is exact and untestable. ``delta_aic_vs_constant``
       (AIC(const) - AIC(fit), Gaussian, variance counted) is reported alongside.
    4. Shape: lack-of-fit F-test of the per-size means against the curve, compared with the repeat-to-repeat
       (pure) error: F = (SS_lof / (m - k)) / (SS_pe / (N - m)); p < 0.01 fails (the curve misses the means by more
       than the noise between repeats explains). Needs m > k and N > m, else skipped with a caveat.

    Caveats (verdict unchanged): more than 10 % of bootstrap refits failed; fewer than 50 bootstrap fits; sizes span
    less than a factor 10; alpha CI reaching the upper bound; residual bootstrap (one run per size).
    """
    from scipy.stats import f as f_dist

    d = _prepare(rows)
    means, _, counts = _per_size(d)
    m, npts, k = len(d.sizes), len(d.y), fit.n_params
    reasons: list[str] = []
    evidence: list[str] = []
    caveats: list[str] = []
    checks: dict[str, Any] = {"n_sizes": m, "n_points": npts}

    # 1. trend
    rho, p_rho = _spearman_less(d.sizes, means)
    checks.update(spearman_rho=rho, spearman_p_less=p_rho)
    if not (rho < 0):
        reasons.append(f"the mean error does not decrease with pretraining size (Spearman rho = {rho:.2f} over {m} sizes)")
    elif m >= 4 and p_rho >= SIGNIFICANCE:
        reasons.append(f"the decrease of the mean error with size is not significant (Spearman rho = {rho:.2f}, one-sided p = {p_rho:.3f} over {m} sizes)")
    else:
        evidence.append(f"the mean error decreases with size (Spearman rho = {rho:.2f}, one-sided p = {p_rho:.3f})")
        if m < 4:
            caveats.append("with only 3 sizes a rank trend cannot be significant; add sizes")

    # 2. alpha resolved
    lo_a = fit.alpha_ci[0]
    checks.update(alpha=fit.alpha, alpha_ci_low=lo_a, alpha_ci_high=fit.alpha_ci[1])
    if "D_zero" in fit.at_bounds:
        reasons.append("the fit has no reducible part (D at its lower bound): the best curve is a constant and alpha is undefined")
    else:
        if fit.alpha >= ALPHA_BOUNDS[1] * 0.999:
            reasons.append(f"alpha hit its upper bound {ALPHA_BOUNDS[1]:g}: the error falls like a step, not like a power law")
        if fit.n_boot_ok == 0 or not math.isfinite(lo_a):
            caveats.append("no bootstrap fits: whether alpha is distinguishable from 0 was not checked")
        elif lo_a <= ALPHA_RESOLVED:
            reasons.append(f"alpha is not distinguishable from 0 ({fit.ci:.0%} CI [{lo_a:.3g}, {fit.alpha_ci[1]:.3g}] reaches the lower bound)")
        else:
            evidence.append(f"alpha is resolved away from 0 ({fit.ci:.0%} CI [{lo_a:.3g}, {fit.alpha_ci[1]:.3g}])")
        if fit.n_boot_ok and fit.alpha_ci[1] >= ALPHA_BOUNDS[1] * 0.99:
            caveats.append(f"the alpha CI reaches the upper bound {ALPHA_BOUNDS[1]:g}: alpha is poorly constrained from above")

    # 3. better than constant
    resid = d.y - np.asarray(fit.predict(d.n))
    rss_fit = float(resid @ resid)
    rss_const = float(np.sum((d.y - d.y.mean()) ** 2))
    c_fit, c_const = _criteria(rss_fit, npts, k), _criteria(rss_const, npts, 1)
    checks["delta_aic_vs_constant"] = c_const["aic"] - c_fit["aic"]
    if npts <= k:
        reasons.append(f"{npts} points for {k} parameters: the fit is exact and cannot be tested against a constant")
    else:
        df1, df2 = k - 1, npts - k
        if rss_fit <= 0:
            f_stat, p_f = math.inf, 0.0
        else:
            f_stat = max((rss_const - rss_fit) / df1, 0.0) / (rss_fit / df2)
            p_f = float(f_dist.sf(f_stat, df1, df2))
        checks.update(f_vs_constant=f_stat, f_vs_constant_p=p_f, f_vs_constant_df=[df1, df2])
        if p_f >= SIGNIFICANCE:
            reasons.append(f"the power law is not better than a constant error (F = {f_stat:.3g}, df = ({df1}, {df2}), p = {p_f:.3g})")
        else:
            evidence.append(f"the power law beats a constant error (F = {f_stat:.3g}, df = ({df1}, {df2}), p = {p_f:.2g})")

    # 4. lack of fit
    pred_means = np.asarray(fit.predict(d.sizes))
    ss_lof = float(np.sum(counts * (means - pred_means) ** 2))
    ss_pe = float(np.sum((d.y - means[d.group]) ** 2))
    df_lof, df_pe = m - k, npts - m
    if df_lof < 1 or df_pe < 1:
        caveats.append(f"lack-of-fit test skipped (needs more sizes than parameters and repeats; {m} sizes, {npts} runs)")
    else:
        if ss_pe <= 0:
            f_lof, p_lof = (math.inf, 0.0) if ss_lof > 0 else (0.0, 1.0)
        else:
            f_lof = (ss_lof / df_lof) / (ss_pe / df_pe)
            p_lof = float(f_dist.sf(f_lof, df_lof, df_pe))
        checks.update(lack_of_fit_F=f_lof, lack_of_fit_p=p_lof, lack_of_fit_df=[df_lof, df_pe])
        if p_lof < LACK_OF_FIT_SIGNIFICANCE:
            reasons.append(
                f"systematic misfit: the per-size means deviate from the curve by more than the repeat noise explains (lack-of-fit F = {f_lof:.3g}, p = {p_lof:.2g})"
            )
        else:
            evidence.append(f"no systematic misfit beyond repeat noise (lack-of-fit p = {p_lof:.2g})")

    # caveats
    if fit.n_boot and fit.n_boot_failed > 0.1 * fit.n_boot:
        caveats.append(f"{fit.n_boot_failed} of {fit.n_boot} bootstrap refits failed; the CIs may be biased")
    if 0 < fit.n_boot_ok < 50:
        caveats.append(f"the CIs rest on only {fit.n_boot_ok} bootstrap fits")
    span = float(d.sizes[-1] / d.sizes[0])
    checks["size_span"] = span
    if span < 10:
        caveats.append(f"the sizes span only a factor {span:.3g}; alpha and C are hard to separate over less than a decade")
    if fit.bootstrap_method.startswith("residual"):
        caveats.append("one run per size: the CIs come from resampled residuals and ignore seed-to-seed variance")
    return PowerLawAssessment(supported=not reasons, reasons=tuple(reasons), evidence=tuple(evidence), caveats=tuple(caveats), checks=_json_safe(checks))


def holdout_check(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Extrapolation test: fit both models on every size but the largest and predict the largest size's mean error.

    Needs at least 4 distinct sizes (3 to fit, 1 held out). For each model the result gives the predicted and
    observed mean error (metric units), the absolute and relative error of the prediction, the absolute error in
    units of the standard deviation of the held-out repeats, and the parameters; a model whose fit fails gets an
    ``error`` entry instead. No bootstrap is run.
    """
    rows = list(rows)
    d = _prepare(rows)
    if len(d.sizes) < 4:
        raise ScalingError(
            f"the held-out check needs at least 4 distinct sizes (3 to fit the 3 parameters, 1 to predict); got {len(d.sizes)}"
        )
    largest = float(d.sizes[-1])
    train = d.n < largest
    obs = d.y[~train]
    n_ref = float(np.exp(np.mean(np.log(d.sizes[:-1]))))
    out: dict[str, Any] = {
        "held_out_size": int(largest),
        "train_sizes": [int(s) for s in d.sizes[:-1]],
        "observed_mean": float(obs.mean()),
        "observed_std": float(obs.std(ddof=1)) if len(obs) > 1 else 0.0,
        "n_repeats": len(obs),
        "models": {},
    }
    for name, fix in ((MODEL_PLUS_CONSTANT, False), (MODEL_PURE, True)):
        try:
            p = _fit_core(d.n[train], d.y[train], n_ref, fix)
        except ScalingError as e:
            out["models"][name] = {"error": str(e)}
            continue
        pred = p.d_ref * (largest / n_ref) ** -p.alpha + p.c
        err = abs(pred - out["observed_mean"])
        out["models"][name] = {
            "predicted": pred,
            "abs_error": err,
            "rel_error": err / abs(out["observed_mean"]) if out["observed_mean"] != 0 else math.inf,
            "abs_error_in_std": err / out["observed_std"] if out["observed_std"] > 0 else None,
            "D": p.d_ref * n_ref**p.alpha,
            "alpha": p.alpha,
            "C": p.c,
        }
    return _json_safe(out)


# ---------------------------------------------------------------------------------------------------- consequences


@dataclass(frozen=True)
class TargetEstimate:
    """Corpus size (structures) at which the fitted error reaches ``target`` (metric units).

    ``n`` is None when the target is unreachable (``target <= C``). ``n_ci`` is the percentile interval of the
    bootstrap fits' sizes, counting the unreachable ones as infinitely large (so the upper end can be ``inf``);
    ``frac_boot_unreachable`` is their share. ``times_largest`` is ``n`` divided by the largest measured size.
    """

    target: float
    reachable: bool
    n: float | None
    n_ci: tuple[float, float] | None
    ci: float
    frac_boot_unreachable: float | None
    n_boot_used: int
    largest_size: int
    times_largest: float | None
    times_largest_ci: tuple[float, float] | None
    C: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "target": self.target,
                "reachable": self.reachable,
                "n": self.n,
                "n_ci": None if self.n_ci is None else list(self.n_ci),
                "n_ci_upper_unbounded": bool(self.n_ci is not None and math.isinf(self.n_ci[1])),
                "ci": self.ci,
                "frac_boot_unreachable": self.frac_boot_unreachable,
                "n_boot_used": self.n_boot_used,
                "largest_size": self.largest_size,
                "times_largest": self.times_largest,
                "times_largest_ci": None if self.times_largest_ci is None else list(self.times_largest_ci),
                "C": self.C,
                "message": self.message,
            }
        )


def size_for_target(fit: ScalingFit, target: float) -> TargetEstimate:
    """Corpus size n with ``D * n**-alpha + C = target``, i.e. ``n = (D / (target - C))**(1/alpha)``.

    If ``target <= C`` the target is unreachable (below the transfer gap). The CI comes from the bootstrap fits.
    """
    t = float(target)
    if not math.isfinite(t):
        raise ScalingError(f"target must be a finite error value, got {target!r}")
    largest = max(fit.sizes)

    def solve(d_ref: np.ndarray, alpha: np.ndarray, c: np.ndarray) -> np.ndarray:
        gap = t - c
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            n = fit.n_ref * np.exp(np.log(d_ref / np.where(gap > 0, gap, 1.0)) / alpha)
        return np.where(gap > 0, n, np.inf)

    n_pt = float(solve(np.asarray(fit.d_ref), np.asarray(fit.alpha), np.asarray(fit.C)))
    reachable = math.isfinite(n_pt)
    n_ci: tuple[float, float] | None = None
    frac_unreach: float | None = None
    if fit.n_boot_ok:
        nb = solve(fit.boot_d_ref, fit.boot_alpha, fit.boot_C)
        frac_unreach = float(np.mean(np.isinf(nb)))
        # "lower"/"higher" order statistics: no interpolation towards inf (unreachable fits), slightly conservative.
        n_ci = (float(np.quantile(nb, (1 - fit.ci) / 2, method="lower")), float(np.quantile(nb, (1 + fit.ci) / 2, method="higher")))
    tl_ci = None if n_ci is None else (n_ci[0] / largest, n_ci[1] / largest)
    unreach_txt = "" if frac_unreach is None else f"; {frac_unreach:.0%} of bootstrap fits cannot reach it either"
    if not reachable:
        msg = f"unreachable: target {t:.4g} is at or below the transfer gap C = {fit.C:.4g}{unreach_txt}"
        return TargetEstimate(t, False, None, n_ci, fit.ci, frac_unreach, fit.n_boot_ok, largest, None, tl_ci, fit.C, msg)
    times = n_pt / largest
    ci_txt = "" if n_ci is None else f" ({fit.ci:.0%} CI {n_ci[0]:.3g} to {n_ci[1]:.3g})"
    unreach_txt = "" if frac_unreach is None else f"; {frac_unreach:.0%} of bootstrap fits cannot reach it"
    where = "already reached within the measured sizes" if times <= 1 else f"{times:.3g} x the largest measured size ({largest:,})"
    msg = f"error {t:.4g} is predicted at n = {n_pt:.3g} structures{ci_txt}, {where}{unreach_txt}"
    return TargetEstimate(t, True, n_pt, n_ci, fit.ci, frac_unreach, fit.n_boot_ok, largest, times, tl_ci, fit.C, msg)


def marginal_gain(fit: ScalingFit, n: float, relative: bool = False) -> float:
    """Error reduction of the next doubling at corpus size ``n`` (structures): ``err(n) - err(2n)`` in metric units.

    With ``relative=True``: the same as a fraction of the reducible error ``err(n) - C`` at n, which is
    ``1 - 2**-alpha`` for every n.
    """
    if not (math.isfinite(float(n)) and float(n) > 0):
        raise ScalingError(f"n must be a positive number of structures, got {n!r}")
    gain = float(fit.predict(float(n)) - fit.predict(2.0 * float(n)))
    if relative:
        red = float(fit.reducible(float(n)))
        return gain / red if red > 0 else math.nan
    return gain
