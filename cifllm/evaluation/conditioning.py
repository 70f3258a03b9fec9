"""Does conditioning work? Ask a model (with its adapter) for several values of a *derived* property and measure
the property of what it writes - no oracle needed.

Derived properties (:mod:`cifllm.conditioning`): ``n_atoms`` is read from the generated ``data_<cell formula>`` line
(so a sample counts as soon as that line is well formed), ``density`` (g/cm^3) needs the whole CIF to parse.
The result reports, per asked value, how many samples could be measured and their mean / median, and the Spearman
correlation between asked and measured values over all measured samples (> 0: higher asks give higher values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifllm.cif import text_to_structure
from cifllm.conditioning import format_property_lines, load_properties, strip_property_lines
from cifllm.core.sampling import SAMPLING
from cifllm.sampling.engines import GenerationParams
from cifllm.sampling.generation import generate
from cifllm.sampling.prompts import Prompt

__all__ = ["measure_property", "conditioning_response"]

_DATA_LINE = re.compile(r"^data_([A-Za-z0-9.]+)\s*$", re.M)


def measure_property(name: str, text: str) -> float | None:
    """The derived property ``name`` of generated text (property lines allowed), or None if it cannot be read."""
    body = strip_property_lines(text)
    if name == "n_atoms":
        m = _DATA_LINE.search(body)
        if not m:
            return None
        try:
            from pymatgen.core import Composition

            n = Composition(m.group(1)).num_atoms
        except Exception:  # malformed formula in generated text: not measurable
            return None
        return float(n) if n > 0 else None
    if name == "density":

        try:
            return float(text_to_structure(body).density)
        except Exception:  # unparsable sample: not measurable
            return None
    raise ValueError(f"{name!r} is not a derived property (use n_atoms or density)")


def conditioning_response(
    model: str | Path,
    adapter: str | Path | None,
    name: str,
    asked: Sequence[float],
    n_per_value: int = 16,
    max_new_tokens: int = 512,
    temperature: float = SAMPLING.temperature,
    top_k: int = SAMPLING.top_k,
    seed: int = 0,
    batch_size: int = 32,
    threads: int = 0,
    engine: Any = None,
    engine_name: str = "hf",
    constrained: bool | None = None,
) -> dict[str, Any]:
    """De novo samples asked for each value of ``asked`` (one property line, nothing else in the prompt), through
    :func:`cifllm.sampling.generation.generate`: ``engine`` if given, else ``engine_name`` loaded for ``model`` +
    ``adapter``; ``constrained`` None = auto (the constraint engine for cif-v2 models).

    Returns ``{"property", "asked": {value: {n, n_measured, mean, median, values}}, "spearman", "n_measured"}``."""
    import numpy as np
    from scipy.stats import spearmanr


    if not asked:
        raise ValueError("no values to ask for")
    props = load_properties(adapter)  # an adapter's own property set (built-in properties without a record)
    texts = ["".join(ln + "\n" for ln in format_property_lines({name: a}, props)) for a in asked]
    prompts = [Prompt(text=t, kind="prefix", id=f"ask-{i}") for i, t in enumerate(texts)]
    params = GenerationParams(num_samples=n_per_value, temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    got: dict[int, list[float]] = {i: [] for i in range(len(asked))}
    counts: dict[int, int] = {i: 0 for i in range(len(asked))}
    kwargs: dict[str, Any] = {} if engine is not None else dict(model=model, engine_name=engine_name, threads=threads, lora=adapter, seed=seed)
    for g in generate(prompts, params, engine, constrained=constrained, counts=[n_per_value] * len(asked), **kwargs):
        counts[g.prompt_index] += 1
        if g.error:
            continue
        v = measure_property(name, texts[g.prompt_index] + g.text)
        if v is not None:
            got[g.prompt_index].append(v)
    xs = [asked[i] for i, vs in got.items() for _ in vs]
    ys = [v for vs in got.values() for v in vs]
    rho = float(spearmanr(xs, ys).statistic) if len(set(xs)) > 1 and len(ys) > 2 and len(set(ys)) > 1 else None
    table = {
        f"{asked[i]:g}": {
            "n": counts[i], "n_measured": len(vs),
            "mean": float(np.mean(vs)) if vs else None, "median": float(np.median(vs)) if vs else None, "values": vs,
        }
        for i, vs in got.items()
    }
    return {"property": name, "asked": table, "spearman": rho, "n_measured": len(ys)}
