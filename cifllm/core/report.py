"""Number formatting shared by every report (evaluation, stability, benchmark, model card, demo).

One spelling per kind of number: a rate is ``12.3%``; a quantity that was not measured is :data:`MISSING`
(``n/a``), never 0; a count of something not measured is ``not measured`` (:data:`NOT_MEASURED`).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MISSING", "NOT_MEASURED", "fmt_num", "on_off", "pct", "wilson_interval"]

#: what a report shows for a number that was not measured
MISSING = "n/a"
#: what a report shows for a whole metric that was not measured (e.g. novelty without a reference corpus)
NOT_MEASURED = "not measured"


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def pct(x: Any, missing: str = MISSING, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage, ``0.1234 -> "12.3%"``; ``missing`` for None, NaN or a non-number."""
    v = _number(x)
    return missing if v is None else f"{100 * v:.{digits}f}%"


def on_off(x: Any, missing: str = MISSING) -> str:
    """``"on"`` / ``"off"`` for a recorded switch (True / False); ``missing`` when it was not recorded."""
    return {True: "on", False: "off"}.get(x, missing) if isinstance(x, bool) else missing


def fmt_num(x: Any, digits: int = 3, missing: str = MISSING) -> str:
    """A number with ``digits`` significant digits (``%g``); ints as they are; ``missing`` for None or a non-number."""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    v = _number(x)
    return missing if v is None else f"{v:.{digits}g}"


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (95% for the default z), rounded to 6 digits; None when n = 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6))
