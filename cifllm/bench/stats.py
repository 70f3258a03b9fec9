"""Benchmark statistics: rates with Wilson 95% intervals, a seeded bootstrap interval for Spearman's rho, and size
buckets (sites per cell, number of elements) of de novo samples next to the reference corpus.

Every rate is stored as ``{"count", "n", "rate", "ci95"}`` (:func:`rate`): ``rate`` and ``ci95`` are None when ``n``
is 0 (not measured, never 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cifllm.core.report import wilson_interval

__all__ = [
    "ELEMENT_BUCKETS",
    "N_BOOTSTRAP",
    "SITE_BUCKETS",
    "UNPARSED",
    "bootstrap_spearman",
    "bucket_of",
    "rate",
    "reference_shares",
    "size_buckets",
    "size_matched_validity",
]

#: sites per cell: (label, lowest, highest or None = no upper end)
SITE_BUCKETS: tuple[tuple[str, int, int | None], ...] = (("1-4", 1, 4), ("5-8", 5, 8), ("9-16", 9, 16), ("17-32", 17, 32), (">32", 33, None))
#: number of elements
ELEMENT_BUCKETS: tuple[tuple[str, int, int | None], ...] = (("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4", 4, 4), (">=5", 5, None))
#: the bucket of a sample without a structure (its text did not parse into one); such samples are invalid
UNPARSED = "unparsed"
#: bootstrap resamples of the Spearman interval
N_BOOTSTRAP = 1000


def rate(count: int, n: int) -> dict[str, Any]:
    """``count`` of ``n`` as ``{"count", "n", "rate", "ci95": [lo, hi]}`` (Wilson score interval, 95%)."""
    ci = wilson_interval(count, n)
    return {"count": int(count), "n": int(n), "rate": count / n if n else None, "ci95": list(ci) if ci else None}


def bucket_of(value: int | None, buckets: Sequence[tuple[str, int, int | None]]) -> str:
    """The label of the bucket holding ``value``; :data:`UNPARSED` for None (or a value below every bucket)."""
    if value is None:
        return UNPARSED
    for label, lo, hi in buckets:
        if value >= lo and (hi is None or value <= hi):
            return label
    return UNPARSED


def size_buckets(values: Sequence[int | None], valid: Sequence[bool], buckets: Sequence[tuple[str, int, int | None]]) -> dict[str, dict[str, Any]]:
    """Per bucket (plus :data:`UNPARSED`): ``n`` samples, their ``share`` of all samples and their validity
    (:func:`rate`). ``values[i]`` is sample ``i``'s size (None when it has no structure)."""
    if len(values) != len(valid):
        raise ValueError(f"size_buckets: {len(values)} sizes for {len(valid)} validity flags")
    total = len(values)
    labels = [bucket_of(v, buckets) for v in values]
    out: dict[str, dict[str, Any]] = {}
    for label in [b[0] for b in buckets] + [UNPARSED]:
        idx = [i for i, x in enumerate(labels) if x == label]
        out[label] = {"n": len(idx), "share": len(idx) / total if total else None, "valid": rate(sum(bool(valid[i]) for i in idx), len(idx))}
    return out


def reference_shares(values: Sequence[int], buckets: Sequence[tuple[str, int, int | None]]) -> dict[str, Any]:
    """``{"n", "shares": {label: share}}`` of reference structures (all have a structure, so no unparsed bucket;
    values below the first bucket, e.g. 0 sites, are counted in ``n_outside``)."""
    counts = {b[0]: 0 for b in buckets}
    outside = 0
    for v in values:
        label = bucket_of(int(v), buckets)
        if label == UNPARSED:
            outside += 1
        else:
            counts[label] += 1
    n = len(values) - outside
    return {"n": n, "n_outside": outside, "shares": {k: (c / n if n else None) for k, c in counts.items()}}


def size_matched_validity(buckets: dict[str, dict[str, Any]], ref_shares: dict[str, float | None]) -> float | None:
    """Validity reweighted to the reference's bucket distribution: (share of samples with a structure) x sum over
    buckets of (reference share x validity of the samples in that bucket). The first factor keeps unparsed samples
    invalid, so with every sample parsed it is the plain reweighting. None (n/a) when a bucket the reference uses
    has no samples, or there are no samples."""
    total = sum(b["n"] for b in buckets.values())
    parsed = total - buckets.get(UNPARSED, {"n": 0})["n"]
    if total == 0 or parsed == 0:
        return None
    acc = 0.0
    for label, share in ref_shares.items():
        if not share:
            continue
        b = buckets.get(label)
        if b is None or b["n"] == 0:
            return None
        acc += share * b["valid"]["count"] / b["n"]
    return parsed / total * acc


def bootstrap_spearman(xs: Sequence[float], ys: Sequence[float], n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Spearman rho of ``xs`` vs ``ys`` with a percentile bootstrap 95% interval (``n_boot`` resamples of the pairs,
    numpy generator seeded with ``seed``; resamples where either side is constant are skipped and counted).
    ``rho`` is None with fewer than 3 pairs or a constant side; ``ci95`` None when fewer than 20 resamples were usable."""
    import numpy as np
    from scipy.stats import spearmanr

    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    n = len(x)
    out: dict[str, Any] = {"rho": None, "n": n, "ci95": None, "n_boot": n_boot, "n_boot_used": 0}
    if n < 3 or len(set(x.tolist())) < 2 or len(set(y.tolist())) < 2:
        return out
    out["rho"] = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        xb, yb = x[idx], y[idx]
        if np.all(xb == xb[0]) or np.all(yb == yb[0]):
            continue
        r = float(spearmanr(xb, yb).statistic)
        if math.isfinite(r):
            rhos.append(r)
    out["n_boot_used"] = len(rhos)
    if len(rhos) >= 20:
        lo, hi = np.percentile(rhos, [2.5, 97.5])
        out["ci95"] = [round(float(lo), 6), round(float(hi), 6)]
    return out
