"""Reward terms of reward fine-tuning (``cifllm rl``): named, composable, weighted in the config.

A *term* maps a batch of :class:`Rollout` records to one value per rollout (``None`` = not measured for that rollout,
e.g. a property of a sample that does not parse: it then adds nothing to that rollout's reward, and the ``validity``
term carries the penalty). The total reward of a rollout is ``sum(weight * value)`` over the terms of
``RLConfig.rewards`` (``name -> weight``); a term of weight 0 is neither built nor computed.

Built-in terms (their scale is chosen so that weight 1 is a sensible start; all dimensionless):

* ``validity``  - 1 when the sample passes the checks (:func:`cifllm.evaluation.run.evaluate_texts`), else 0.
* ``property``  - reward-oracle prediction ``(pred - threshold) / spread``: the task's threshold (the top-tail
  boundary) and the spread of the training side's values (p95 - p05, log1p space for tc / thermal conductivity, which
  the oracle fits in log space); None for an invalid sample. The reward oracle is :class:`~cifllm.bench.oracle.RewardOracle`
  trained on the task's training side only (train + val; never the test tail). Its default kind (extra trees) never
  predicts above the training maximum, which on a top-tail task is the threshold: this term then rewards reaching the
  top of the training range, not going past it; ``reward_oracle=ridge`` extrapolates (and is easier to exploit).
* ``target``    - ``-|pred - asked| / spread`` for a conditioned prompt (a property line asking for a value,
  :mod:`cifllm.conditioning`), so that conditioning is learned by reward; None for an unconditioned prompt.
* ``novelty``   - 1 when the valid sample matches no structure of the task's training side (StructureMatcher,
  MatterGen tolerances, :mod:`cifllm.evaluation.matching`), 0 when it does; None for an invalid sample.
* ``stability`` - ``-min(max(E_hull, 0), 1)``: energy above the hull in eV/atom from an :class:`EnergyAboveHull`
  callable, clipped to [0, 1] eV/atom; None where the potential gives nothing. Off by default (weight 0). The default
  implementation is :class:`DftHullEnergy`: a CHGNet single point of the sample as written on the DFT-anchored hull
  (:mod:`cifllm.potentials`, the ``mlip`` extra; ~0.1 s a structure). :class:`ChgnetHull` (relaxation + hull of the
  training side's structures relaxed with the same potential; slow on CPU) stays available. The interface is one call
  ``texts -> [eV/atom | None]``, so another potential or hull replaces it by :func:`set_hull_factory` without
  touching the loop.

Your own term: ``register_reward("hardness", fn)`` with ``fn(rollouts) -> list[float | None]`` (plain, or
``register_reward(..., factory=True)`` for ``fn(context) -> term`` when it needs the task's rows), then
``rewards={hardness: 1.0}``; or name it by dotted path without registering: ``rewards={"mypkg.rewards:hardness": 1.0}``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cifllm.bench.oracle import RewardOracle
from cifllm.bench.tasks import TaskSpec
from cifllm.cif import CIFError, text_to_structure
from cifllm.core.config import ConfigError
from cifllm.evaluation.matching import ReferenceIndex
from cifllm.evaluation.stability import HullReference, StabilitySettings, run_stability
from cifllm.potentials import get_potential
from cifllm.potentials.hull import HullScorer
from cifllm.potentials.hull_table import load_default_hull

__all__ = [
    "BUILTIN_REWARDS",
    "ChgnetHull",
    "EnergyAboveHull",
    "RewardContext",
    "RewardModel",
    "RewardTerm",
    "Rollout",
    "register_reward",
    "resolve_reward",
    "set_hull_factory",
]


@dataclass(frozen=True)
class Rollout:
    """One sampled structure as the reward terms see it.

    ``text``: the canonical CIF text (prompt's CIF part + continuation, property lines removed); ``asked``: the
    property values the prompt asked for (empty = unconditioned); ``valid``: passed the checks; ``reduced_formula``,
    ``elements``: of the parsed structure (None / empty when it does not parse); ``novel``: no training-side match
    (None = not checked or not valid); ``finished``: stopped at ``<|eos|>``; ``token_ids``: the generated tokens."""

    text: str
    asked: dict[str, float] = field(default_factory=dict)
    valid: bool = False
    finished: bool = True
    reduced_formula: str | None = None
    elements: tuple[str, ...] = ()
    novel: bool | None = None
    token_ids: tuple[int, ...] = ()  # the generated tokens (continuation only; empty when the engine gives none)


#: a reward term: rollouts -> one value per rollout (None = not measured)
RewardTerm = Callable[[Sequence[Rollout]], Sequence[float | None]]


class EnergyAboveHull(Protocol):
    """Energy above the convex hull, eV/atom, of each canonical CIF text (None where it cannot be computed)."""

    def __call__(self, texts: Sequence[str]) -> list[float | None]: ...


@dataclass
class RewardContext:
    """What the built-in terms are built from (:func:`build_context` in :mod:`cifllm.training.rl` fills it)."""

    task: TaskSpec | None = None
    train_ref: ReferenceIndex | None = None  # the task's training side (train + val), by reduced formula
    reward_oracle: RewardOracle | None = None
    threshold: float | None = None  # the task's top-tail boundary, property units
    spread: float | None = None  # p95 - p05 of the training side's values (log1p space when the oracle fits in it)
    log_target: bool = False
    work_dir: Path | None = None  # run folder (caches)
    time_limit_s: float = 60.0
    _pred_cache: dict[str, float] = field(default_factory=dict)

    def predict(self, texts: Sequence[str]) -> list[float | None]:
        """Reward-oracle predictions in property units (memoised per text); None for a text that does not featurize."""
        if self.reward_oracle is None:
            raise ConfigError("the property/target reward terms need a Case-2 task (a property and its threshold)")
        todo = sorted({t for t in texts if t not in self._pred_cache})
        if todo:
            for t, p in zip(todo, self.reward_oracle.predict(todo), strict=True):
                self._pred_cache[t] = float(p)
        return [None if not math.isfinite(self._pred_cache[t]) else self._pred_cache[t] for t in texts]

    def scaled(self, value: float) -> float:
        """A property value in the space its spread is measured in (log1p for log-target properties)."""
        return math.log1p(max(value, 0.0)) if self.log_target else value


_REGISTRY: dict[str, Callable[[RewardContext], RewardTerm]] = {}


def register_reward(name: str, fn: Callable[..., Any], factory: bool = False) -> None:
    """Make ``name`` usable in ``RLConfig.rewards``. ``fn(rollouts) -> list[float | None]`` (one value per rollout,
    None = not measured), or with ``factory=True`` ``fn(context: RewardContext) -> term`` (built once per run).
    Re-registering a name replaces it."""
    if not name or ":" in name:
        raise ValueError(f"reward name {name!r}: give a non-empty name without ':' (':' marks a dotted path)")
    _REGISTRY[name] = fn if factory else (lambda ctx, f=fn: f)


def resolve_reward(name: str) -> Callable[[RewardContext], RewardTerm]:
    """The factory of term ``name``: a registered name or ``module:function`` (a plain term function)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"rewards: cannot import {name!r} ({type(exc).__name__}: {exc})") from None
        if not callable(fn):
            raise ConfigError(f"rewards: {name!r} is not callable")
        return lambda ctx: fn
    raise ConfigError(f"rewards: unknown term {name!r}; known: {sorted(_REGISTRY)} or a dotted path 'module:function'")


# --- built-in terms ------------------------------------------------------------------------------------------------


def _validity(ctx: RewardContext) -> RewardTerm:
    return lambda rs: [1.0 if r.valid else 0.0 for r in rs]


def _need_property(ctx: RewardContext, name: str) -> None:
    if ctx.reward_oracle is None or ctx.threshold is None or not ctx.spread:
        raise ConfigError(f"rewards: the {name!r} term needs a Case-2 task with a property (task={ctx.task.name if ctx.task else ''!r})")


def _property(ctx: RewardContext) -> RewardTerm:
    _need_property(ctx, "property")
    thr, spread = ctx.scaled(ctx.threshold or 0.0), float(ctx.spread or 1.0)

    def term(rs: Sequence[Rollout]) -> list[float | None]:
        idx = [i for i, r in enumerate(rs) if r.valid]
        out: list[float | None] = [None] * len(rs)
        for i, p in zip(idx, ctx.predict([rs[i].text for i in idx]), strict=True):
            out[i] = None if p is None else (ctx.scaled(p) - thr) / spread
        return out

    return term


def _target(ctx: RewardContext) -> RewardTerm:
    _need_property(ctx, "target")
    prop = ctx.task.property if ctx.task else ""
    spread = float(ctx.spread or 1.0)

    def term(rs: Sequence[Rollout]) -> list[float | None]:
        idx = [i for i, r in enumerate(rs) if r.valid and prop in r.asked]
        out: list[float | None] = [None] * len(rs)
        for i, p in zip(idx, ctx.predict([rs[i].text for i in idx]), strict=True):
            out[i] = None if p is None else -abs(ctx.scaled(p) - ctx.scaled(rs[i].asked[prop])) / spread
        return out

    return term


def _novelty(ctx: RewardContext) -> RewardTerm:
    if ctx.task is None:
        raise ConfigError("rewards: the 'novelty' term needs a task (novelty is against its training side)")
    return lambda rs: [None if (not r.valid or r.novel is None) else (1.0 if r.novel else 0.0) for r in rs]


class ChgnetHull:
    """:class:`EnergyAboveHull` from the existing CHGNet code (:func:`cifllm.evaluation.stability.run_stability`):
    each sample relaxed, placed on the hull of the task's training-side structures relaxed with the same potential
    (cached in ``cache_dir``). Needs the ``mlip`` extra; slow on CPU (seconds per structure)."""

    def __init__(self, reference: HullReference, cache_dir: str | Path, time_limit_s: float = 300.0) -> None:
        self.reference = reference
        self.cache_dir = Path(cache_dir)
        self.settings = StabilitySettings(workers=0, time_limit_s=time_limit_s)

    def __call__(self, texts: Sequence[str]) -> list[float | None]:
        ids = ["rl"] * len(texts)  # the cache key is (id, text): a structure sampled again is not relaxed again
        verd = [{"valid": True} for _ in texts]  # the term only asks for valid samples
        recs, _ = run_stability(list(texts), ids, verd, self.reference, self.settings, self.cache_dir)
        out: list[float | None] = []
        for r in recs:
            e = r.get("e_above_hull")
            out.append(float(e) if isinstance(e, int | float) and math.isfinite(e) else None)
        return out


def _chgnet_factory(ctx: RewardContext) -> EnergyAboveHull:
    if ctx.task is None or ctx.train_ref is None:
        raise ConfigError("rewards: the 'stability' term needs a task (its hull is the task's training side)")
    return ChgnetHull(HullReference.from_index(ctx.train_ref), (ctx.work_dir or Path(".")) / "stability_cache", max(ctx.time_limit_s, 300.0))


class DftHullEnergy:
    """:class:`EnergyAboveHull` on the DFT-anchored hull (the default of the ``stability`` term): a batched CHGNet
    single point of each structure as sampled (no relaxation: ~0.1 s a structure on 2 cores), its formation energy
    from CHGNet's shipped elemental references, placed on the default MP-20 + MPTS-52 hull
    (:mod:`cifllm.potentials`). Needs no task: the hull does not depend on it."""

    def __init__(self, potential: str = "chgnet") -> None:
        self.scorer = HullScorer(get_potential(potential), load_default_hull())

    def __call__(self, texts: Sequence[str]) -> list[float | None]:
        structures, where = [], []
        for i, t in enumerate(texts):
            try:
                structures.append(text_to_structure(t))
                where.append(i)
            except CIFError:
                continue
        out: list[float | None] = [None] * len(texts)
        for i, rec in zip(where, self.scorer.score(structures) if structures else [], strict=True):
            e = rec.get("e_above_hull")
            out[i] = float(e) if isinstance(e, int | float) and math.isfinite(e) else None
        return out


def _dft_factory(ctx: RewardContext) -> EnergyAboveHull:
    return DftHullEnergy()


_HULL_FACTORY: list[Callable[[RewardContext], EnergyAboveHull]] = [_dft_factory]


def set_hull_factory(factory: Callable[[RewardContext], EnergyAboveHull]) -> None:
    """Point the ``stability`` term at another energy-above-hull implementation (e.g. a DFT-anchored hull)."""
    _HULL_FACTORY[0] = factory


def _stability(ctx: RewardContext) -> RewardTerm:
    hull = _HULL_FACTORY[0](ctx)

    def term(rs: Sequence[Rollout]) -> list[float | None]:
        idx = [i for i, r in enumerate(rs) if r.valid]
        out: list[float | None] = [None] * len(rs)
        if idx:
            for i, e in zip(idx, hull([rs[i].text for i in idx]), strict=True):
                out[i] = None if e is None else -min(max(float(e), 0.0), 1.0)
        return out

    return term


BUILTIN_REWARDS: dict[str, Callable[[RewardContext], RewardTerm]] = {
    "validity": _validity, "property": _property, "target": _target, "novelty": _novelty, "stability": _stability,
}
for _name, _factory in BUILTIN_REWARDS.items():
    register_reward(_name, _factory, factory=True)


class RewardModel:
    """The weighted sum of the config's terms (weight 0 = left out)."""

    def __init__(self, weights: dict[str, float], ctx: RewardContext) -> None:
        self.weights = {k: float(w) for k, w in weights.items() if float(w) != 0.0}
        if not self.weights:
            raise ConfigError("rewards: every weight is 0; give at least one term a non-zero weight")
        self.terms = {k: resolve_reward(k)(ctx) for k in self.weights}

    def __call__(self, rollouts: Sequence[Rollout]) -> tuple[np.ndarray, dict[str, list[float | None]]]:
        """(total reward per rollout, per term its values)."""
        total = np.zeros(len(rollouts))
        values: dict[str, list[float | None]] = {}
        for name, term in self.terms.items():
            vs = list(term(rollouts))
            if len(vs) != len(rollouts):
                raise ValueError(f"reward term {name!r} returned {len(vs)} values for {len(rollouts)} rollouts")
            clean: list[float | None] = []
            for v in vs:
                f = None if v is None else float(v)
                clean.append(f if f is not None and math.isfinite(f) else None)
            values[name] = clean
            total += self.weights[name] * np.array([0.0 if v is None else v for v in clean])
        return total, values
