"""Speed of the constraint engine alone (no model): the Python cost a constrained sample pays per token.

    .venv/bin/python benchmarks/bench_engine.py --corpus data/corpus/dataset --n 100 --walks 40 --out DIR

Three workloads, each in one process, one thread:

- *replay*: ``--n`` real corpus CIFs (every ``len/n``-th row, so the same rows on every run) fed token by token
  through :class:`~cifllm.sampling.constraints.CIFConstraint` (``allowed()`` then ``advance()``, as an engine
  does per step), ``max_tokens`` 4,096;
- *random walks*: ``--walks`` de novo samples choosing uniformly among the allowed tokens (seed 0), ``max_tokens``
  1,024 - the engine's worst case (random cells grow to ~200 atoms and the geometry guard's cost grows with them);
- *prompted walks*: ``--prompted`` random walks (seed 1) that start from a prompt fed with ``feed_prompt`` (the
  prompts in ``PROMPTS``, in turn, at constraint level ``full`` then ``grammar``), ``max_tokens`` 1,024: the paths
  the two workloads above never take (a prompt read leniently, the grammar ablation). Its digest also covers each
  walk's counters (``ConstraintStats``).

Writes ``engine.json``: per workload a SHA-256 of every ``allowed()`` output in order (``allowed_sha256``: two code trees
that must constrain alike print the same digest), samples, tokens, seconds, tokens/s with a 95% bootstrap interval over samples
(1,000 resamples of the ratio total tokens / total seconds) and ms per token. The lru caches start cold, as in a
fresh sampling process. Run it on an otherwise idle machine for absolute figures; two code trees measured back to
back under the same load compare fairly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
from datasets import load_from_disk

from cifllm.sampling.constraints import CIFConstraint, ConstraintConfig, TokenTable
from cifllm.tokenization import load_tokenizer
from cifllm.utils import atomic_write_text


def _rate(tokens: list[int], secs: list[float], seed: int = 0) -> dict[str, float | int | list[float]]:
    t, s = np.asarray(tokens, dtype=float), np.asarray(secs, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(1000, len(t)))
    boot = t[idx].sum(axis=1) / s[idx].sum(axis=1)
    return {
        "samples": len(t),
        "tokens": int(t.sum()),
        "seconds": round(float(s.sum()), 3),
        "tokens_per_s": round(float(t.sum() / s.sum()), 1),
        "tokens_per_s_ci95": [round(float(x), 1) for x in np.percentile(boot, [2.5, 97.5])],
        "ms_per_token": round(1000 * float(s.sum() / t.sum()), 4),
    }


def _digest(h: hashlib._Hash, allowed: object) -> None:
    """Add one ``allowed()`` output (a forced token id or a boolean mask over the vocabulary) to ``h``."""
    h.update(np.packbits(allowed).tobytes() if isinstance(allowed, np.ndarray) else str(int(allowed)).encode() + b";")


def replay(table: TokenTable, texts: list[str]) -> dict:
    tokens, secs, refused = [], [], 0
    h = hashlib.sha256()
    for text in texts:
        ids = table.ids(text[text.find("data_") :])
        m = CIFConstraint(table, ConstraintConfig(max_tokens=4096))
        n, t0 = 0, time.perf_counter()
        try:
            for tok in ids:
                _digest(h, m.allowed())
                m.advance(tok)
                n += 1
        except Exception:  # noqa: BLE001 - a real CIF the engine refuses: counted, timed up to the refusal
            refused += 1
        secs.append(time.perf_counter() - t0)
        tokens.append(n)
    return {**_rate(tokens, secs), "refused": refused, "allowed_sha256": h.hexdigest()}


#: prompts of the prompted workload: compositions, a composition with its space group, a free prefix that ends
#: inside the formula
PROMPTS = (
    "data_Na4Cl4\n",
    "data_Li4Fe4P4O16\n",
    "data_Sr1Ti1O3\n_symmetry_space_group_name_H-M Pm-3m\n_symmetry_Int_Tables_number 221\n",
    "data_Ba2",
)


def prompted(table: TokenTable, n: int, max_tokens: int = 1024) -> dict:
    rng = np.random.default_rng(1)
    tokens, secs = [], []
    h = hashlib.sha256()
    for k in range(n):
        level = ("full", "grammar")[(k // len(PROMPTS)) % 2]
        m = CIFConstraint(table, ConstraintConfig(max_tokens=max_tokens, level=level))
        t0 = time.perf_counter()
        m.feed_prompt(table.ids(PROMPTS[k % len(PROMPTS)]))
        while not m.done and m.n_tokens < max_tokens:
            a = m.allowed()
            _digest(h, a)
            m.advance(int(rng.choice(np.flatnonzero(a))) if isinstance(a, np.ndarray) else int(a))
        secs.append(time.perf_counter() - t0)
        tokens.append(m.n_tokens)  # the prompt's tokens too: feed_prompt is timed with the walk
        h.update(json.dumps(m.stats.to_json(), sort_keys=True).encode())
    return {**_rate(tokens, secs), "allowed_sha256": h.hexdigest()}


def walks(table: TokenTable, n: int, max_tokens: int = 1024) -> dict:
    rng = np.random.default_rng(0)
    tokens, secs = [], []
    h = hashlib.sha256()
    for _ in range(n):
        m = CIFConstraint(table, ConstraintConfig(max_tokens=max_tokens))
        k, t0 = 0, time.perf_counter()
        while not m.done and k < max_tokens:
            a = m.allowed()
            _digest(h, a)
            m.advance(int(rng.choice(np.flatnonzero(a))) if isinstance(a, np.ndarray) else int(a))
            k += 1
        secs.append(time.perf_counter() - t0)
        tokens.append(k)
    return {**_rate(tokens, secs), "allowed_sha256": h.hexdigest()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus/dataset", help="a corpus `dataset` folder (HF datasets)")
    ap.add_argument("--tokenizer", default="tokenizer/cif-v2")
    ap.add_argument("--n", type=int, default=100, help="real CIFs to replay")
    ap.add_argument("--walks", type=int, default=40, help="random de novo walks")
    ap.add_argument("--prompted", type=int, default=16, help="random walks from prompts (0: skip)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    table = TokenTable(load_tokenizer(args.tokenizer))
    ds = load_from_disk(args.corpus)
    step = max(1, len(ds) // args.n)
    texts = [ds[i]["text"] for i in range(0, step * args.n, step)][: args.n]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "benchmarks/bench_engine.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "replay": replay(table, texts),
        "random_walks": walks(table, args.walks) if args.walks else None,
        "prompted_walks": prompted(table, args.prompted) if args.prompted else None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "engine.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
