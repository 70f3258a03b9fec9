"""Transfer scaling-law fit (err(n) = D n^-alpha + C): parameter recovery, model checks, consequences, reports, input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cifllm.scaling import (
    ScalingError,
    assess_power_law,
    compare_models,
    fit_scaling,
    holdout_check,
    load_rows,
    marginal_gain,
    render_report,
    size_for_target,
    write_report,
)

SIZES = [500, 1000, 2000, 4000, 8000, 16000]
TRUE = {"D": 50.0, "alpha": 0.4, "C": 0.8}


def synthetic(d: float = 50.0, alpha: float = 0.4, c: float = 0.8, sizes=SIZES, repeats: int = 4, sigma: float = 0.01, seed: int = 1) -> list[dict]:
    """Rows of err = D n^-alpha + C plus Gaussian noise (sigma, metric units) for every size and repeat."""
    rng = np.random.default_rng(seed)
    return [
        {"size": n, "repeat": r, "seed": r, "metric": "mae", "status": "ok", "value": d * n**-alpha + c + rng.normal(0.0, sigma)}
        for n in sizes
        for r in range(repeats)
    ]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synthetic()


@pytest.fixture(scope="module")
def fit(rows):
    return fit_scaling(rows, n_boot=200, seed=0)


# ---------------------------------------------------------------------------------------------------------- fitting


def test_recovers_synthetic_parameters(rows, fit):
    for name, ci in (("D", fit.D_ci), ("alpha", fit.alpha_ci), ("C", fit.C_ci)):
        assert ci[0] <= TRUE[name] <= ci[1], (name, ci)
    assert fit.alpha == pytest.approx(0.4, abs=0.02)
    assert abs(fit.C - 0.8) < 0.05
    assert abs(fit.D / 50.0 - 1) < 0.1
    assert fit.model == "power_law_plus_constant" and fit.converged
    assert fit.n_points == 24 and fit.sizes == tuple(SIZES) and fit.n_repeats == (4,) * 6
    assert fit.n_boot_ok == fit.n_boot == 200 and fit.n_boot_failed == 0
    assert fit.r2 > 0.999 and fit.rmse < 0.02
    assert fit.metric == "mae"
    # predict is vectorized and consistent with the parameters
    ns = np.array([1000.0, 64000.0])
    assert np.allclose(fit.predict(ns), fit.D * ns**-fit.alpha + fit.C)
    assert isinstance(fit.predict(1000), float)
    lo, hi = fit.predict_band(ns)
    assert np.all(lo <= fit.predict(ns) + 1e-9) and np.all(fit.predict(ns) <= hi + 1e-9)
    a = assess_power_law(rows, fit)
    assert a.supported, a.reasons
    assert not a.reasons and a.evidence
    d = fit.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["alpha"] == fit.alpha and d["bootstrap"]["n_ok"] == 200 and "boot_alpha" not in d


def test_units_rescale_but_alpha_does_not():
    rows = synthetic(seed=5)
    a = fit_scaling(rows, n_boot=0)
    b = fit_scaling([{**r, "value": 1000 * r["value"]} for r in rows], n_boot=0)
    assert b.alpha == pytest.approx(a.alpha, rel=1e-4)
    assert abs(b.C / (1000 * a.C) - 1) < 1e-4
    assert abs(b.D / (1000 * a.D) - 1) < 1e-3
    assert math.isnan(a.alpha_ci[0]) and a.n_boot_ok == 0


def test_pure_power_law_data_does_not_need_c():
    rows = synthetic(c=0.0, seed=3)
    f = fit_scaling(rows, n_boot=200)
    assert f.C < 0.1 and f.C_ci[0] < 1e-6
    assert f.alpha_ci[0] <= 0.4 <= f.alpha_ci[1]
    cmp = compare_models(rows)
    assert cmp["preferred_aic"] == "pure_power_law" or cmp["c_test_p"] > 0.05
    assert set(cmp["models"]) == {"power_law_plus_constant", "pure_power_law", "constant"}
    pure = fit_scaling(rows, n_boot=50, fix_c_zero=True)
    assert pure.model == "pure_power_law" and pure.C == 0.0 and pure.C_ci == (0.0, 0.0) and pure.n_params == 2
    assert pure.alpha == pytest.approx(0.4, abs=0.01)
    assert assess_power_law(rows, pure).supported


def test_compare_models_wants_c_when_there_is_a_gap(rows):
    cmp = compare_models(rows)
    assert cmp["preferred_aic"] == cmp["preferred_bic"] == "power_law_plus_constant"
    assert cmp["delta_aic"] > 10 and cmp["c_test_p"] < 1e-3
    json.dumps(cmp, allow_nan=False)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("flat", "not better than a constant"), ("increasing", "does not decrease")],
)
def test_not_a_power_law(kind, fragment):
    rng = np.random.default_rng(7)
    if kind == "flat":
        value = lambda n: 1.0 + rng.normal(0, 0.05)  # noqa: E731
    else:
        value = lambda n: 0.5 + 0.1 * math.log(n) + rng.normal(0, 0.01)  # noqa: E731
    rows = [{"size": n, "repeat": r, "value": value(n)} for n in SIZES for r in range(3)]
    f = fit_scaling(rows, n_boot=100)
    a = assess_power_law(rows, f)
    assert not a.supported
    assert any(fragment in r for r in a.reasons), a.reasons
    json.dumps(a.to_dict(), allow_nan=False)


def test_non_convergence_is_an_error_and_failed_bootstraps_are_counted(monkeypatch, rows):
    import scipy.optimize

    real = scipy.optimize.least_squares
    calls = {"n": 0}

    class NotConverged:
        status, nfev, message, x = 0, 2000, "The maximum number of function evaluations is exceeded.", np.array([1.0, 0.5, 0.1])

    def first_only(*args, **kwargs):  # the point fit converges, every bootstrap refit fails
        calls["n"] += 1
        return real(*args, **kwargs) if calls["n"] == 1 else NotConverged()

    monkeypatch.setattr(scipy.optimize, "least_squares", first_only)
    f = fit_scaling(rows, n_boot=20)
    assert f.n_boot_ok == 0 and f.n_boot_failed == 20 and math.isnan(f.alpha_ci[0])
    a = assess_power_law(rows, f)
    assert any("no bootstrap" in c for c in a.caveats)

    monkeypatch.setattr(scipy.optimize, "least_squares", lambda *a, **k: NotConverged())
    with pytest.raises(ScalingError, match="did not converge"):
        fit_scaling(rows, n_boot=0)

    def boom(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(scipy.optimize, "least_squares", boom)
    with pytest.raises(ScalingError, match="did not converge"):
        fit_scaling(rows, n_boot=0)


@pytest.mark.parametrize(
    ("bad_rows", "fragment"),
    [
        ([], "no rows"),
        ([{"size": n, "repeat": 0, "value": 1.0 / n} for n in (1000, 2000)], "at least 3 distinct"),
        ([{"size": n, "repeat": 0, "value": 1.0 / n} for n in (1000, 2000)] + [{"size": 4000, "repeat": 2, "value": float("nan")}], "size=4000, repeat=2"),
        ([{"size": n, "repeat": 0, "value": 1.0 / n} for n in (1000, 2000, 4000)] + [{"size": 0, "repeat": 1, "value": 1.0}], "positive"),
        ([{"size": -5, "repeat": 0, "value": 1.0}], "positive"),
        ([{"size": 1000, "repeat": 0, "value": None}], "not a finite number"),
        ([{"size": n, "repeat": 0, "value": 1.0, "metric": m} for n, m in ((1, "a"), (2, "a"), (3, "b"))], "mix metrics"),
    ],
)
def test_bad_input(bad_rows, fragment):
    with pytest.raises(ScalingError, match=fragment):
        fit_scaling(bad_rows, n_boot=0)


def test_failed_runs_are_ignored():
    rows = synthetic(seed=2, repeats=2) + [{"size": 1000, "repeat": 9, "value": None, "status": "failed"}]
    assert fit_scaling(rows, n_boot=0).n_points == 12


# ------------------------------------------------------------------------------------------------------ consequences


def test_size_for_target(fit):
    t = size_for_target(fit, 1.5)
    assert t.reachable and t.n is not None
    assert fit.predict(t.n) == pytest.approx(1.5, rel=1e-9)
    assert t.times_largest == pytest.approx(t.n / 16000)
    assert t.n_ci is not None and t.n_ci[0] <= t.n <= t.n_ci[1]
    assert t.frac_boot_unreachable == 0.0
    json.dumps(t.to_dict(), allow_nan=False)

    low = size_for_target(fit, 0.5 * fit.C)
    assert not low.reachable and low.n is None
    assert "transfer gap C" in low.message and low.frac_boot_unreachable == 1.0
    assert json.loads(json.dumps(low.to_dict(), allow_nan=False))["n_ci_upper_unbounded"] is True

    reached = size_for_target(fit, 3.0)  # already below the error at the largest sizes
    assert reached.reachable and reached.times_largest < 1 and "already reached" in reached.message


def test_marginal_gain(fit):
    n = 16000
    gain = marginal_gain(fit, n)
    assert gain == pytest.approx(fit.predict(n) - fit.predict(2 * n))
    assert gain > 0
    assert marginal_gain(fit, n, relative=True) == pytest.approx(1 - 2**-fit.alpha)
    with pytest.raises(ScalingError):
        marginal_gain(fit, 0)


def test_holdout_check(rows):
    h = holdout_check(rows)
    assert h["held_out_size"] == 16000 and h["train_sizes"] == SIZES[:-1] and h["n_repeats"] == 4
    plus = h["models"]["power_law_plus_constant"]
    assert plus["rel_error"] < 0.02
    assert plus["abs_error"] == pytest.approx(abs(plus["predicted"] - h["observed_mean"]))
    assert "pure_power_law" in h["models"]
    json.dumps(h, allow_nan=False)
    with pytest.raises(ScalingError, match="at least 4 distinct sizes"):
        holdout_check(synthetic(sizes=[1000, 2000, 4000]))


# ----------------------------------------------------------------------------------------------------------- report


def test_write_report(tmp_path: Path, rows, fit):
    pure = fit_scaling(rows, n_boot=50, fix_c_zero=True)
    meta = {"task": "band_gap", "metric": "mae", "command": "cifllm scaling fit runs.jsonl"}
    paths = write_report(
        tmp_path / "out", rows, fit, holdout=holdout_check(rows), target=1.5, comparison=compare_models(rows), pure_fit=pure, meta=meta
    )
    out = tmp_path / "out"
    assert {p.name for p in paths.values()} == {"scaling.png", "scaling_fit.json", "REPORT.md"}
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "scaling.png", "scaling_fit.json"]  # no temp files left
    png = (out / "scaling.png").read_bytes()
    assert len(png) > 1000 and png[:8] == b"\x89PNG\r\n\x1a\n"
    js = json.loads((out / "scaling_fit.json").read_text())
    assert js["fit"]["alpha"] == pytest.approx(fit.alpha) and js["assessment"]["supported"] is True
    assert js["target"]["reachable"] is True and js["holdout"]["held_out_size"] == 16000 and js["meta"]["task"] == "band_gap"
    md = (out / "REPORT.md").read_text()
    assert f"α = {fit.alpha:.3g}" in md and f"C = {fit.C:.3g}" in md
    assert "2^-α" in md and "band_gap" in md and "![scaling fit](scaling.png)" in md
    assert "Held-out size check" in md and "Warning" not in md


def test_report_warns_when_not_a_power_law():
    rng = np.random.default_rng(11)
    rows = [{"size": n, "repeat": r, "value": 1.0 + rng.normal(0, 0.05)} for n in SIZES for r in range(3)]
    f = fit_scaling(rows, n_boot=50)
    a = assess_power_law(rows, f)
    assert not a.supported
    md = render_report(rows, f, a, plot_name=None)
    head = md.split("## Summary")[0]
    assert "do not support a power law" in head and all(r in head for r in a.reasons)


# ------------------------------------------------------------------------------------------------------------ input


def test_load_rows(tmp_path: Path):
    path = tmp_path / "runs.jsonl"
    lines = [
        {"size": 1000, "repeat": 0, "value": 1.0, "metric": "mae", "status": "ok"},
        {"size": 1000, "repeat": 1, "value": None, "metric": "mae", "status": "failed"},
        {"size": 2000, "repeat": 0, "value": 0.8, "metric": "mae"},
        {"size": 2000, "repeat": 0, "value": 0.3, "metric": "rmse", "status": "ok"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    got = load_rows(path)
    assert [r["value"] for r in got] == [1.0, 0.8, 0.3]
    assert [r["value"] for r in load_rows(path, metric="mae")] == [1.0, 0.8]
    with pytest.raises(ScalingError, match="no successful rows with metric 'r2'"):
        load_rows(path, metric="r2")

    path.write_text(json.dumps(lines[0]) + "\n" + '{"size": 2000, "repeat": \n')
    with pytest.raises(ScalingError, match=r"runs\.jsonl:2: malformed JSON"):
        load_rows(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ScalingError, match=r"runs\.jsonl:1: expected a JSON object"):
        load_rows(path)
