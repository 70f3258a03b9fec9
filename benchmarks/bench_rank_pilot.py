"""Pilot of the ranked CSP rows (:mod:`cifllm.bench.ranked`) on the time split, without the corpus and task splits.

Targets: MPTS-52 structures first published after ``--cutoff`` (2008, as task ``time_split``), a seeded sample of
``--targets``; templates: the MPTS-52 structures published up to the cutoff (the task's training side). This is
not the benchmark's split (no dedup against the corpus, no leakage check, other targets): a pilot, labelled so.

Two stages, because vLLM lives in its own venv without the potentials:

    .venv-vllm/bin/python benchmarks/bench_rank_pilot.py sample --out benchmarks/results/rank_pilot --targets 40 --candidates 64
    .venv/bin/python benchmarks/bench_rank_pilot.py score --out benchmarks/results/rank_pilot
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from cifllm.bench.ranked import RANKED_ROWS, RankedTarget, ranked_csp
from cifllm.cif import CIFError, structure_to_text
from cifllm.cif.io import read_cif_text
from cifllm.core.models import resolve_model
from cifllm.data.readers import iter_dataset
from cifllm.data.registry import DEFAULT_REGISTRY, load_registry, resolve_data_dir
from cifllm.sampling.engines import GenerationParams, make_engine
from cifllm.sampling.generation import generate
from cifllm.sampling.prompts import build_prompt
from cifllm.utils import atomic_write_json, atomic_write_text


def _canonical(records, limit: int | None = None) -> list[tuple[str, str]]:
    out = []
    for r in records:
        try:
            out.append((r.record_id, structure_to_text(read_cif_text(r.cif, where=r.where))))
        except (CIFError, ValueError):
            continue
        if limit and len(out) >= limit:
            break
    return out


def _split(cutoff: int) -> tuple[list, list]:
    spec = load_registry(DEFAULT_REGISTRY)["mpts_52"]
    recs = [r for r in iter_dataset(spec, resolve_data_dir(None)) if r.cif and r.year is not None]
    return [r for r in recs if r.year <= cutoff], [r for r in recs if r.year > cutoff]


def sample(a: argparse.Namespace) -> None:
    _, test = _split(a.cutoff)
    random.Random(a.seed).shuffle(test)
    targets = _canonical(test, a.targets)
    prompts = [build_prompt(composition=t.split("\n", 1)[0][5:].strip()) for _, t in targets]
    engine = make_engine(a.engine, resolve_model(a.model), constrained=True, seed=a.seed)
    params = GenerationParams(num_samples=a.candidates, max_new_tokens=a.max_new_tokens, seed=a.seed, batch_size=64, constrained=True, logprobs=True)
    t0 = time.perf_counter()
    gens = list(generate(prompts, params, engine, constrained=True))
    secs = time.perf_counter() - t0
    by: dict[int, list] = {}
    for g in sorted(gens, key=lambda g: (g.prompt_index, g.sample_index)):
        by.setdefault(g.prompt_index, []).append(g)
    out = Path(a.out)
    lines = []
    for i, (tid, text) in enumerate(targets):
        gs = by.get(i, [])
        lines.append(json.dumps({
            "id": tid, "text": text, "formula": prompts[i].meta["formula"],
            "candidates": [prompts[i].text + g.text for g in gs],
            "mean_logprobs": [g.logprob / max(1, g.n_tokens + int(g.finished)) if g.logprob is not None else None for g in gs],
        }))
    atomic_write_text(out / "candidates.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out / "sampling.json", {
        "engine": a.engine, "model": a.model, "targets": len(targets), "candidates_per_target": a.candidates, "seconds": round(secs, 2),
        "seconds_per_target": round(secs / max(1, len(targets)), 3), "tokens": sum(g.n_tokens for g in gens), "cutoff": a.cutoff, "seed": a.seed,
    })
    print(f"{len(targets)} targets x {a.candidates} candidates in {secs:.0f} s -> {out / 'candidates.jsonl'}")


def score(a: argparse.Namespace) -> None:
    out = Path(a.out)
    rows = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines() if x.strip()]
    targets = [RankedTarget(r["id"], r["text"], r["formula"], tuple(r["candidates"]), tuple(r["mean_logprobs"])) for r in rows]
    train, _ = _split(a.cutoff)
    t0 = time.perf_counter()
    train_texts = [t for _, t in _canonical(train)]
    canon_s = time.perf_counter() - t0
    m = ranked_csp(targets, train_texts, k=a.k, n_template=a.candidates)
    m["sampling"] = json.loads((out / "sampling.json").read_text())
    m["train_canonicalization_seconds"] = round(canon_s, 1)
    m["n_train"] = len(train_texts)
    atomic_write_json(out / "metrics.json", m)
    k = a.k
    lines = [
        f"Ranked CSP pilot (time split, MPTS-52 published > {a.cutoff}): {m['n_targets']} targets, {m['sampling']['candidates_per_target']} model candidates each, "
        f"templates from {len(train_texts)} MPTS-52 structures <= {a.cutoff}; potential {m['potential']} (single point) on the shipped DFT hull.",
        "",
        f"| row | match@1 | match@{k} | ceiling (any candidate) | rank accuracy (top-1 given ceiling) |",
        "|---|---|---|---|---|",
    ]

    def f(r: dict) -> str:
        if r["rate"] is None:
            return "n/a"
        lo, hi = r["ci95"]
        return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({r['count']}/{r['n']})"

    for name in RANKED_ROWS:
        r = m["rows"][name]
        lines.append(f"| {name} | {f(r['match@1'])} | {f(r[f'match@{k}'])} | {f(r['ceiling'])} | {f(r['rank_accuracy'])} |")
    sp = m["seconds_per_target"]
    lines += ["", f"Seconds per composition: sampling {m['sampling']['seconds_per_target']} ({m['sampling']['engine']}), checks {sp['checks']}, "
              f"matching {sp['matching']}, templates {sp['templates']}, energies {sp['energy']} (2 shared CPU cores)."]
    atomic_write_text(out / "REPORT.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=("sample", "score"))
    ap.add_argument("--out", default="benchmarks/results/rank_pilot")
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=64, help="model candidates per target (and the template's cap)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--cutoff", type=int, default=2008)
    ap.add_argument("--model", default="default")
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--max-new-tokens", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    (sample if a.stage == "sample" else score)(a)


if __name__ == "__main__":
    main()
