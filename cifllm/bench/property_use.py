"""Does a conditioned adapter read its property line? A teacher-forced test, no sampling and no oracle.

For real CIFs of a task, the negative log-likelihood of the CIF (its tokens and EOS, in nats per token) under base +
adapter after different property lines (:func:`cifllm.evaluation.nll.conditional_nll`):

* ``val`` (in the adapter's training range): the CIF's own value vs another CIF's value (a seeded shuffle of the
  group's values) vs no property line. An adapter that uses the line finds CIFs likelier after their own value:
  ``shuffled - true`` > 0.
* ``test`` (the task's tail, beyond the training range): the CIF's own (champion) value vs the training median vs no
  line. ``median - true`` > 0 means asking for a champion value makes champion structures likelier - the
  extrapolation conditioned sampling relies on.

Differences are means over CIFs of per-CIF differences (nats per CIF token), with a seeded percentile-bootstrap 95%
interval over CIFs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cifllm.bench.splits import load_split
from cifllm.bench.stats import N_BOOTSTRAP
from cifllm.bench.tasks import load_task
from cifllm.conditioning import format_property_lines, property_values
from cifllm.core.records import read_adapter_record
from cifllm.evaluation.nll import conditional_nll

__all__ = ["property_line_use"]


def _lines(name: str, value: float | None) -> str:
    return "" if value is None else "".join(x + "\n" for x in format_property_lines({name: value}))


def _mean_ci(d: list[float], seed: int) -> dict[str, Any]:
    x = np.asarray(d, dtype=float)
    if x.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, size=(N_BOOTSTRAP, x.size))].mean(axis=1)
    return {"mean": float(x.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))], "n": int(x.size)}


def property_line_use(
    model: str | Path, adapter: str | Path, task: str | Path, splits: str | Path, max_texts: int = 300, seed: int = 0,
    batch_size: int = 16, threads: int = 0, log: Callable[[str], None] = print, in_range_split: str = "val",
) -> dict[str, Any]:
    """The test of the module docstring for ``task``'s first conditioning property; up to ``max_texts`` CIFs per group
    (seeded sample of ``in_range_split`` - ``train`` checks the adapter on what it was fitted on - and of the test
    tail); groups are named by their split. Returns per group the mean NLL per CIF token under each
    property line, the paired differences with 95% intervals, and the values asked."""
    spec = load_task(task)
    rec = read_adapter_record(adapter)
    trained = rec.get("conditioning") or {}
    names = [n for n in spec.conditioning if n in trained]
    if not names:
        raise ValueError(f"{adapter}: not trained with {spec.name}'s conditioning {list(spec.conditioning)}")
    name = names[0]
    median = float(trained[name]["p50"])
    out: dict[str, Any] = {"task": spec.name, "property": name, "unit": trained[name].get("unit"), "train_range": trained[name], "groups": {}}
    rng = random.Random(seed)
    for group, in_range in ((in_range_split, True), ("test", False)):
        rows = [r for r in load_split(Path(splits) / spec.name, group) if property_values(r, (name,), spec.property or None).get(name) is not None]
        rows = rng.sample(rows, min(max_texts, len(rows)))
        if not rows:
            continue
        texts = [r["text"] for r in rows]
        vals = [float(property_values(r, (name,), spec.property or None)[name]) for r in rows]
        other = vals[:]
        if in_range:
            rng.shuffle(other)
            alt_name = "shuffled"
        else:
            other = [median] * len(vals)
            alt_name = "train_median"
        log(f"{spec.name} {group}: {len(texts)} CIFs x 3 property lines")
        res = {
            k: conditional_nll(model, [_lines(name, v) for v in vs], texts, adapter=adapter, batch_size=batch_size, threads=threads)
            for k, vs in (("true", vals), (alt_name, other), ("none", [None] * len(vals)))
        }
        ok = [i for i in range(len(texts)) if all(res[k][i] is not None for k in res)]
        per_tok = {k: {i: r[i][0] / r[i][1] for i in ok} for k, r in res.items()}  # type: ignore[index]
        g: dict[str, Any] = {
            "n_texts": len(ok), "n_skipped_context": len(texts) - len(ok),
            "asked": {"true": {"min": min(vals), "median": float(np.median(vals)), "max": max(vals)}, alt_name: "shuffled true values" if in_range else median},
            "nll_per_token": {k: sum(res[k][i][0] for i in ok) / sum(res[k][i][1] for i in ok) for k in res},  # type: ignore[index]
        }
        pairs = [j for j in ok if other[j] != vals[j]] if in_range else ok
        g["diff_" + alt_name + "_minus_true"] = _mean_ci([per_tok[alt_name][i] - per_tok["true"][i] for i in pairs], seed)
        g["diff_none_minus_true"] = _mean_ci([per_tok["none"][i] - per_tok["true"][i] for i in ok], seed)
        out["groups"][group] = g
    return out
