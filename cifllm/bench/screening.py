"""Best-of-N screening: the honest baseline of reward fine-tuning (``cifllm rl``).

Sample N structures from the base model, score them with the *reward* oracle (the one the RL run optimises, trained
on the task's training side only), keep the top k. At equal sampling compute (N = the RL run's rollouts plus its
evaluation samples) a reward-fine-tuned adapter has to beat this to be worth its training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["best_of_n"]


def best_of_n(scores: Sequence[float | None], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first (ties: lower index first); unscored (None / NaN) entries only
    after every scored one, in index order. ``k`` larger than ``len(scores)`` keeps everything."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")

    def key(i: int) -> tuple[int, float, int]:
        s = scores[i]
        ok = s is not None and math.isfinite(float(s))
        return (0 if ok else 1, -float(s) if ok else 0.0, i)  # type: ignore[arg-type]

    return sorted(range(len(scores)), key=key)[:k]
