"""Deduplication: identical canonical texts first, then pymatgen ``StructureMatcher`` inside buckets.

Buckets are (reduced formula, sites in the primitive cell): ``StructureMatcher`` (``attempt_supercell=False``)
only matches structures with the same reduced formula and primitive-cell size, so this bucketing loses no match.
Buckets larger than ``max_bucket`` are split further by space-group number (an approximation, reported).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence

from cifllm.cif import CIFError, text_to_structure
from cifllm.cif.matching import (
    MATCHER_SETTINGS,
    fit_reduced,
    lattice_signature,
    make_matcher,
    may_match,
    reduce_for_matching,
)

__all__ = ["group_duplicates", "bucket_keys"]


def bucket_keys(formulas: Sequence[str], n_prim: Sequence[int], sg: Sequence[int], max_bucket: int = 200) -> tuple[dict[tuple, list[int]], int]:
    """Indices grouped into match buckets; returns (buckets, number of oversized buckets split by space group)."""
    base: dict[tuple, list[int]] = defaultdict(list)
    for i, (f, n) in enumerate(zip(formulas, n_prim)):
        base[(f, n)].append(i)
    out: dict[tuple, list[int]] = {}
    n_split = 0
    for key, idx in base.items():
        if len(idx) <= max_bucket:
            out[key] = idx
            continue
        n_split += 1
        for i in idx:
            out.setdefault((*key, sg[i]), []).append(i)
    return out, n_split


def _group_bucket(args: tuple[list[str], str, bool]) -> list[list[int]]:
    """Greedy grouping of one bucket's canonical texts: each structure joins the first group whose representative
    matches it. Returns lists of positions within the bucket."""
    texts, kind, scale = args
    if len(texts) == 1:
        return [[0]]

    sm = make_matcher(kind, scale=scale)
    structs = []
    for t in texts:
        try:
            structs.append(reduce_for_matching(sm, text_to_structure(t)))
        except (CIFError, ValueError):
            structs.append(None)
    sigs = [lattice_signature(s, scale) if s is not None else None for s in structs]
    ltol = MATCHER_SETTINGS[kind]["ltol"]
    reps: list[int] = []
    groups: list[list[int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, s in enumerate(structs):
            for g, r in enumerate(reps):
                if s is None or structs[r] is None or not may_match(sigs[r], sigs[i], ltol):
                    continue
                if fit_reduced(sm, structs[r], s):
                    groups[g].append(i)
                    break
            else:
                reps.append(i)
                groups.append([i])
    return groups


def group_duplicates(
    texts: Sequence[str],
    formulas: Sequence[str],
    n_prim: Sequence[int],
    sg: Sequence[int],
    workers: int = 1,
    kind: str = "dedup",
    scale: bool = True,
    max_bucket: int = 200,
    progress: Callable | None = None,
) -> tuple[list[list[int]], dict[str, int]]:
    """Groups of indices of matching structures (first index of each group is its representative) and stats."""
    buckets, n_split = bucket_keys(formulas, n_prim, sg, max_bucket)
    items = sorted(buckets.values(), key=len, reverse=True)  # big buckets first: better load balance
    jobs = [([texts[i] for i in idx], kind, scale) for idx in items]
    groups: list[list[int]] = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.imap(_group_bucket, jobs, chunksize=8)
            for idx, res in zip(items, progress(results, total=len(jobs)) if progress else results):
                groups.extend([[idx[k] for k in g] for g in res])
    else:
        for idx, job in zip(items, progress(jobs, total=len(jobs)) if progress else jobs):
            groups.extend([[idx[k] for k in g] for g in _group_bucket(job)])
    stats = {
        "buckets": len(buckets),
        "largest_bucket": max((len(v) for v in buckets.values()), default=0),
        "buckets_split_by_space_group": n_split,
        "comparisons_bucket_pairs_upper_bound": int(sum(len(v) * (len(v) - 1) // 2 for v in buckets.values())),
    }
    return groups, stats
