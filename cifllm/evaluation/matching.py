"""Uniqueness, novelty and CSP matching with pymatgen ``StructureMatcher``, bucketed by reduced formula.

* uniqueness and novelty use the MatterGen tolerances (``make_matcher("novelty")``: ltol 0.2, stol 0.3,
  angle_tol 5 degrees, scaled volumes);
* CSP match uses the DiffCSP/CrystaLLM tolerances (``make_matcher("csp")``: ltol 0.3, stol 0.5, angle_tol 10).

Two structures can only match when their reduced compositions agree, so comparisons run only inside a
reduced-formula bucket (:func:`cifllm.cif.format_formula` with ``reduced=True``, the corpus's ``reduced_formula``
column): a sample is compared with the few references of its formula, never with the whole reference set, and the
buckets are spread over worker processes (:func:`cifllm.evaluation.limits.map_with_time_limit`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cifllm.cif import format_formula, parse_canonical, text_to_structure
from cifllm.cif.matching import make_matcher
from cifllm.data.corpus import load_corpus

__all__ = [
    "ReferenceIndex",
    "csp_match_task",
    "csp_metrics",
    "novelty_task",
    "uniqueness_task",
]


@lru_cache(maxsize=4096)
def _structure(text: str) -> Any:
    """Parse canonical text once per process (references recur across samples of the same formula)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return text_to_structure(text)


@lru_cache(maxsize=4)
def _matcher(kind: str) -> Any:
    return make_matcher(kind)


@lru_cache(maxsize=8192)
def _reduced(text: str, kind: str) -> Any:
    """The Niggli-reduced (then primitive, if the matcher uses primitive cells) structure of a text, computed once per
    process: the same reduction ``StructureMatcher.fit`` does on every call (``_get_reduced_istructure``), done ahead
    as ``StructureMatcher.group_structures`` does, so that ``fit(..., skip_structure_reduction=True)`` gives the
    same answer without reducing a reference again for every sample it is compared with."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = _structure(text).get_reduced_structure(reduction_algo="niggli")
        if _matcher(kind)._primitive_cell:
            r = r.get_primitive_structure()
        return Structure.from_sites(r)


def _fit(kind: str, a: str, b: str) -> bool:
    """``StructureMatcher.fit`` of two canonical texts with the ``kind`` tolerances."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(_matcher(kind).fit(_reduced(a, kind), _reduced(b, kind), skip_structure_reduction=True))


@dataclass
class ReferenceIndex:
    """Reference structures (canonical texts) grouped by reduced formula; ``ids`` parallel to ``texts``."""

    buckets: dict[str, list[int]]
    texts: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def bucket(self, reduced_formula: str) -> list[str]:
        return [self.texts[i] for i in self.buckets.get(reduced_formula, ())]

    def bucket_ids(self, reduced_formula: str) -> list[str]:
        return [self.ids[i] for i in self.buckets.get(reduced_formula, ())]

    @classmethod
    def from_records(cls, texts: Sequence[str], formulas: Sequence[str], ids: Sequence[str] | None = None) -> ReferenceIndex:
        buckets: dict[str, list[int]] = {}
        for i, f in enumerate(formulas):
            buckets.setdefault(f, []).append(i)
        return cls(buckets, list(texts), [str(x) for x in ids] if ids is not None else [str(i) for i in range(len(texts))])

    @classmethod
    def from_texts(cls, texts: Iterable[str], ids: Sequence[str] | None = None) -> ReferenceIndex:
        """Index canonical texts, the reduced formula taken from each text's ``data_`` line (no structure parse)."""
        from pymatgen.core import Composition

        ts = list(texts)
        formulas = [format_formula(Composition(parse_canonical(t).formula), reduced=True) for t in ts]
        return cls.from_records(ts, formulas, ids)

    @classmethod
    def from_corpus(cls, corpus_dir: str | Path, split: str | None = None) -> ReferenceIndex:
        """Index a cifllm corpus folder (its ``text``, ``reduced_formula`` and ``id`` columns)."""
        ds = load_corpus(corpus_dir, split=split).select_columns(["id", "text", "reduced_formula"])
        return cls.from_records(ds["text"], ds["reduced_formula"], ds["id"])


def novelty_task(item: tuple[str, Sequence[str]]) -> int:
    """(sample text, reference texts of its formula) -> index of the first matching reference, or -1 (novel).

    A sample whose canonical text equals a reference text (a verbatim copy of a training structure) is that
    reference without running the matcher."""
    text, refs = item
    for j, r in enumerate(refs):
        if r == text:
            return j
    for j, r in enumerate(refs):
        if _fit("novelty", text, r):
            return j
    return -1


def uniqueness_task(texts: Sequence[str]) -> list[int]:
    """Texts of one formula bucket -> for each, the index (in ``texts``) of the first equivalent text (itself if
    unique): sample ``i`` is a duplicate when it matches an earlier unique sample."""
    reps: list[int] = []
    first: list[int] = []
    for i, t in enumerate(texts):
        for r in reps:
            if _fit("novelty", texts[r], t):
                first.append(r)
                break
        else:
            reps.append(i)
            first.append(i)
    return first


def csp_match_task(item: tuple[str, Sequence[str | None]]) -> list[float | None]:
    """(target text, prediction texts or None for invalid ones) -> per prediction the normalized RMS displacement
    from ``StructureMatcher.get_rms_dist`` (units of (V/n)^(1/3)), or None when it does not match / is invalid."""
    target_text, preds = item
    target = _structure(target_text)
    out: list[float | None] = []
    for p in preds:
        if p is None:
            out.append(None)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rms = _matcher("csp").get_rms_dist(_structure(p), target)
            except Exception:
                rms = None
        out.append(None if rms is None else float(rms[0]))
    return out


def csp_metrics(rms: Mapping[str, Sequence[float | None]], ks: Sequence[int]) -> dict[str, Any]:
    """match@k and RMSE over targets: ``rms[target]`` lists per prediction (in sample order) the normalized RMS or
    None (no match or invalid prediction). match@k: share of targets with a match among their first k predictions;
    RMSE@k: mean over matched targets of the best (smallest) RMS among those k (DiffCSP definition)."""
    n = len(rms)
    out: dict[str, Any] = {"n_targets": n}
    for k in ks:
        best = [min((r for r in v[:k] if r is not None), default=None) for v in rms.values()]
        matched = [b for b in best if b is not None]
        out[f"match@{k}"] = len(matched) / n if n else 0.0
        out[f"rmse@{k}"] = sum(matched) / len(matched) if matched else None
        out[f"n_matched@{k}"] = len(matched)
    return out
