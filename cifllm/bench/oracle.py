"""Property oracle for Case-2 tasks: composition + structure features from canonical text, scikit-learn regressor.

Why this design: the oracle must score thousands of generated structures on 2 CPU cores, with no DFT and no pretrained
network. Magpie-style composition statistics plus a few cell descriptors with gradient-boosted trees are the standard
strong baseline for tabular materials property prediction (Ward et al., npj Comput. Mater. 2, 16028 (2016);
Dunn et al., Matbench, 2020). Features come from canonical text alone (no pymatgen ``Structure`` needed), so scoring
a sample costs microseconds. Skewed targets (Tc, thermal conductivity) are fitted in log1p space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from cifllm.cif import CIFError, parse_canonical

__all__ = ["featurize", "PropertyOracle", "OracleReport", "FEATURE_NAMES", "COMPOSITION_FEATURES", "RewardOracle"]

_ELEMENT_PROPS = ("Z", "X", "atomic_radius", "row", "group", "mendeleev_no", "atomic_mass", "molar_volume", "melting_point")
_STATS = ("mean", "std", "min", "max", "range")
_CRYSTAL_SYSTEM_EDGES = (2, 15, 74, 142, 167, 194, 230)  # last space-group number of triclinic .. cubic

FEATURE_NAMES: tuple[str, ...] = (
    *(f"{p}_{s}" for p in _ELEMENT_PROPS for s in _STATS),
    "n_elements",
    "volume_per_atom",
    "density",
    "sg_number",
    *(f"crystal_system_{i}" for i in range(7)),
    "n_sites",
    "c_over_a",
)
#: the composition statistics of :data:`FEATURE_NAMES` (element-property stats + ``n_elements``): no cell, no symmetry
COMPOSITION_FEATURES: int = len(_ELEMENT_PROPS) * len(_STATS) + 1


@cache
def _element_vector(symbol: str) -> np.ndarray:
    from pymatgen.core import Element

    el = Element(symbol)
    out = []
    for p in _ELEMENT_PROPS:
        try:
            v = getattr(el, p)
            v = float(v) if v is not None else np.nan
        except Exception:
            v = np.nan
        out.append(v)
    return np.asarray(out, dtype=float)


def featurize(text: str) -> np.ndarray:
    """Feature vector (see :data:`FEATURE_NAMES`) of a canonical CIF text; NaN where a value is unknown.
    Raises :class:`~cifllm.cif.CIFError` for text that does not parse."""
    p = parse_canonical(text)
    amounts: dict[str, float] = {}
    for s in p.sites:
        amounts[s.symbol] = amounts.get(s.symbol, 0.0) + s.multiplicity * s.occupancy
    total = sum(amounts.values())
    if total <= 0:
        raise CIFError("no_sites", "no atoms")
    els = sorted(amounts)
    w = np.array([amounts[e] / total for e in els])
    mat = np.stack([_element_vector(e) for e in els])  # (n_el, n_props)
    mean = np.nansum(mat * w[:, None], axis=0)
    std = np.sqrt(np.nansum(w[:, None] * (mat - mean) ** 2, axis=0))
    mn, mx = np.nanmin(mat, axis=0), np.nanmax(mat, axis=0)
    stats = np.stack([mean, std, mn, mx, mx - mn], axis=1).reshape(-1)
    mass = sum(amounts[e] * _element_vector(e)[6] for e in els)
    vol = p.volume if p.volume > 0 else np.nan
    cs = np.zeros(7)
    cs[int(np.searchsorted(_CRYSTAL_SYSTEM_EDGES, p.sg_number))] = 1.0 if 1 <= p.sg_number <= 230 else 0.0
    extra = [len(els), vol / total, mass / vol * 1.66054 if vol == vol else np.nan, p.sg_number, *cs, total, p.abc[2] / p.abc[0] if p.abc[0] > 0 else np.nan]
    return np.concatenate([stats, np.asarray(extra, dtype=float)])


@dataclass(frozen=True)
class OracleReport:
    """Accuracy on a random held-out 20% (seeded) of the rows, in the property's units."""

    n_fit: int
    n_holdout: int
    mae: float
    r2: float
    mae_tail: float | None  # on held-out rows above the task threshold
    n_holdout_tail: int
    model: str
    log_target: bool


class PropertyOracle:
    """Gradient-boosted trees (``HistGradientBoostingRegressor``) on :func:`featurize` features."""

    def __init__(self, log_target: bool = False, seed: int = 0) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.log_target = log_target
        self.seed = seed
        self.model = HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, random_state=seed)

    def _t(self, y: np.ndarray) -> np.ndarray:
        return np.log1p(np.clip(y, 0, None)) if self.log_target else y

    def _inv(self, y: np.ndarray) -> np.ndarray:
        return np.expm1(y) if self.log_target else y

    #: what :attr:`OracleReport.model` says
    description = "sklearn HistGradientBoostingRegressor(max_iter=400, lr=0.05) on Magpie-style composition + cell features"

    def features(self, text: str) -> np.ndarray:
        """The feature vector this oracle reads (:func:`featurize`); raises ``CIFError`` for text that does not parse."""
        return featurize(text)

    def fit(self, texts: list[str], y: list[float] | np.ndarray, threshold: float | None = None) -> OracleReport:
        """Report accuracy on a held-out 20%, then refit on everything (the oracle may see the test tail)."""
        from sklearn.metrics import mean_absolute_error, r2_score

        X = np.stack([self.features(t) for t in texts])
        y = np.asarray(y, dtype=float)
        rng = np.random.default_rng(self.seed)
        idx = rng.permutation(len(y))
        n_hold = max(1, len(y) // 5)
        hold, fit = idx[:n_hold], idx[n_hold:]
        self.model.fit(X[fit], self._t(y[fit]))
        pred = self._inv(self.model.predict(X[hold]))
        tail = hold[y[hold] > threshold] if threshold is not None else np.array([], dtype=int)
        mae_tail = float(mean_absolute_error(y[tail], self._inv(self.model.predict(X[tail])))) if len(tail) else None
        rep = OracleReport(len(fit), len(hold), float(mean_absolute_error(y[hold], pred)), float(r2_score(y[hold], pred)), mae_tail, int(len(tail)), self.description, self.log_target)
        self.model.fit(X, self._t(y))
        return rep

    def predict(self, texts: list[str]) -> np.ndarray:
        """Predictions in the property's units; NaN for texts that do not featurize."""
        out = np.full(len(texts), np.nan)
        rows, feats = [], []
        for i, t in enumerate(texts):
            try:
                feats.append(self.features(t))
                rows.append(i)
            except (CIFError, ValueError):
                continue
        if feats:
            out[rows] = self._inv(self.model.predict(np.stack(feats)))
        return out


class RewardOracle(PropertyOracle):
    """The *reward* oracle of reward fine-tuning (``cifllm rl``), deliberately unlike the benchmark's
    :class:`PropertyOracle` so that a policy exploiting one oracle's blind spots shows up as a gap to the other; fitted
    by the caller on the task's *training side* only (never the test tail), on the composition features only
    (:data:`COMPOSITION_FEATURES`).

    ``kind``: ``extra_trees`` (default; ``ExtraTreesRegressor``, 300 trees, min 2 rows per leaf) - robust, but a tree
    ensemble never predicts beyond the largest training value, so on a top-tail task its reward saturates at the
    threshold; ``ridge`` (standardized features, ``RidgeCV``) - extrapolates linearly past the training range, which
    is what reward fine-tuning toward champions needs, and is easier to exploit (watch the oracle gap)."""

    KINDS = ("extra_trees", "ridge")

    def __init__(self, log_target: bool = False, seed: int = 0, kind: str = "extra_trees") -> None:
        from sklearn.ensemble import ExtraTreesRegressor
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if kind not in self.KINDS:
            raise ValueError(f"reward oracle kind {kind!r}: expected one of {list(self.KINDS)}")
        self.log_target = log_target
        self.seed = seed
        self.kind = kind
        if kind == "ridge":
            self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
            self.description = "sklearn RidgeCV on standardized Magpie-style composition features only (extrapolates linearly)"
        else:
            self.model = ExtraTreesRegressor(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=1)
            self.description = "sklearn ExtraTreesRegressor(300 trees, min_samples_leaf=2) on Magpie-style composition features only"

    def features(self, text: str) -> np.ndarray:
        x = featurize(text)[:COMPOSITION_FEATURES]
        return np.nan_to_num(x, nan=0.0)  # neither model takes NaN (an element property pymatgen does not know)
