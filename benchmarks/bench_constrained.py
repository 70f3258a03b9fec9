"""Benchmark of the constraint engine: unconstrained / grammar+computed fields / full engine, and a T x top-k grid.

Two steps, because vLLM lives in its own venv:

    .venv-vllm/bin/python benchmarks/bench_constrained.py sample --model M --out DIR [--engine vllm] [--grid]
    .venv/bin/python benchmarks/bench_constrained.py score --out DIR      # checks + table -> DIR/constrained.json

Prompts: ``--n-denovo`` de novo samples and ``--n-per-comp`` samples for each demo composition
(``eval/demo_prompts.txt``). Per row: parse rate (which includes Int_Tables = H-M symbol), prompt adherence (reduced composition of the sites equals the
prompt's), consistency of the computed fields (volume, formula, multiplicity, sites vs formula: all must pass), CrystaLLM self-consistency, CDVAE validity, uniqueness (all with Wilson 95% intervals), tokens/s and valid
CIFs/s of the sampling wall time, and the constraint overhead (1 - tokens/s relative to the unconstrained row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from cifllm.core.report import wilson_interval
from cifllm.utils import append_jsonl

ROWS = {"unconstrained": None, "grammar": "grammar", "full": "full"}
#: consistency checks of the computed fields (cifllm.evaluation.checks): stated volume, formula vs Z x reduced formula,
#: multiplicity vs Wyckoff letter, sites vs formula
FIELD_CHECKS = ("volume", "formula", "multiplicity", "sites_formula")


def wilson(k: int, n: int) -> list[float] | None:
    """Wilson 95% interval of k/n (:func:`cifllm.core.report.wilson_interval`), 4 digits; None when n = 0."""
    ci = wilson_interval(k, n)
    return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]


def _prompts(n_comp: int):
    from cifllm.sampling.prompts import build_prompt, read_prompt_file

    comps = [p for p, _ in read_prompt_file("eval/demo_prompts.txt") if p.kind != "de_novo"]
    return [build_prompt()] + comps


def sample(args: argparse.Namespace) -> None:
    from cifllm.sampling.constraints import ConstraintConfig
    from cifllm.sampling.engines import GenerationParams, make_engine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = _prompts(args.n_per_comp)
    counts = [args.n_denovo] + [args.n_per_comp] * (len(prompts) - 1)
    # vLLM's context: 2,048 tokens, or the model's own when shorter (a v1 corpus' longest CIF sets a smaller one)
    n_pos = json.loads((Path(args.model) / "config.json").read_text()).get("max_position_embeddings", 2048)
    kwargs = {"constrained": True, "max_model_len": min(2048, n_pos)} if args.engine == "vllm" else {"device": "cpu", "threads": 2}
    eng = make_engine(args.engine, args.model, **kwargs)
    jobs = [(row, level, args.temperature, args.top_k, counts) for row, level in ROWS.items() if row in args.rows.split(",")]
    if args.grid:
        small = [args.grid_n] + [0] * (len(prompts) - 1)
        for t in (0.7, 0.8, 1.0):
            for k in (0, 10, 40):
                jobs.append((f"grid_T{t}_k{k}", "full", t, k, small))
    for name, level, temp, top_k, cts in jobs:
        f = out / f"{name}.jsonl"
        if f.exists():
            continue
        params = GenerationParams(
            num_samples=1,
            temperature=temp,
            top_k=top_k,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
            constrained=level is not None,
            constraint=ConstraintConfig(level=level or "full"),
        )
        recs, wall = _sample_chunked(eng, prompts, params, cts, f, args.chunk)
        meta = {"row": name, "level": level, "temperature": temp, "top_k": top_k, "wall_s": wall, "engine": args.engine, "model": args.model}
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta) + "\n" + "".join(json.dumps(r) + "\n" for r in recs))
        tmp.rename(f)
        f.with_suffix(".partial").unlink(missing_ok=True)
        print(f"{name}: {len(recs)} samples, {sum(r['n_tokens'] for r in recs) / wall:.0f} tokens/s", flush=True)


def _chunks(counts: list[int], size: int) -> list[list[int]]:
    """``counts`` split into consecutive count vectors of at most ``size`` samples in all (one vector when size <= 0)."""
    if size <= 0:
        return [list(counts)]
    out, left = [], list(counts)
    while any(left):
        cur, room = [0] * len(left), size
        for i, c in enumerate(left):
            take = min(c, room)
            cur[i], left[i], room = take, c - take, room - take
        out.append(cur)
    return out


def _sample_chunked(eng, prompts, params, counts: list[int], f: Path, chunk: int) -> tuple[list[dict], float]:
    """All samples of one row, ``chunk`` samples per engine call; every finished call is appended (fsynced) to
    ``<row>.partial``, so a killed run resumes at the first unfinished chunk. Chunk ``j`` samples with seed + j.
    Returns (records, summed sampling wall time in s)."""
    part = f.with_suffix(".partial")
    done: dict[int, dict] = {}
    if part.exists():
        for line in part.read_text().splitlines():
            try:
                c = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that chunk reruns
                continue
            done[c["chunk"]] = c
    plan = _chunks(counts, chunk)
    for j, cts in enumerate(plan):
        if j in done:
            continue
        p_j = dataclasses.replace(params, seed=params.seed + j)
        t0 = time.perf_counter()
        recs = []
        for g in eng.generate(prompts, p_j, counts=cts):
            p = prompts[g.prompt_index]
            recs.append({"prompt_kind": p.kind, "formula": p.meta.get("formula"), "text": p.text + g.text, "n_tokens": g.n_tokens, "finished": g.finished})
        done[j] = {"chunk": j, "wall_s": time.perf_counter() - t0, "recs": recs}
        append_jsonl(part, done[j])
        n_done = sum(len(c["recs"]) for c in done.values())
        print(f"  {f.stem}: chunk {j + 1}/{len(plan)} ({n_done}/{sum(counts)} samples)", flush=True)
    ordered = [done[j] for j in range(len(plan))]
    return [r for c in ordered for r in c["recs"]], sum(c["wall_s"] for c in ordered)


def score(args: argparse.Namespace) -> None:
    from pymatgen.core import Composition

    from cifllm.evaluation.run import evaluate_texts

    out = Path(args.out)
    results = {}
    for f in sorted(out.glob("*.jsonl")):
        lines = f.read_text().splitlines()
        meta, recs = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
        verd = evaluate_texts([r["text"] for r in recs], workers=args.workers, time_limit_s=args.time_limit)
        n = len(recs)
        parse = sum(bool(v["checks"].get("parse", {}).get("ok")) for v in verd)
        comp_recs = [(r, v) for r, v in zip(recs, verd) if r["prompt_kind"] != "de_novo"]
        adhere = sum(
            1
            for r, v in comp_recs
            if v.get("reduced_formula") and Composition(v["reduced_formula"]).reduced_formula == Composition(r["formula"]).reduced_formula
        )
        consistent = sum(bool(v["consistent"]) for v in verd)
        valid = sum(bool(v["valid"]) for v in verd)
        unique = sum(bool(v.get("unique")) for v in verd)
        tokens = sum(r["n_tokens"] for r in recs)
        # the computed fields the engine forces (Int_Tables vs H-M is checked at parse): share of all samples passing
        fields = {c: sum(bool(v["checks"].get(c, {}).get("ok")) for v in verd) / n for c in FIELD_CHECKS}
        all_fields = sum(all(v["checks"].get(c, {}).get("ok") for c in ("parse", *FIELD_CHECKS)) for v in verd)
        row = {
            **meta,
            "n": n,
            "n_composition_prompts": len(comp_recs),
            "parse": parse / n,
            "parse_ci": wilson(parse, n),
            "prompt_adherence": adhere / len(comp_recs) if comp_recs else None,
            "prompt_adherence_ci": wilson(adhere, len(comp_recs)),
            "self_consistent": consistent / n,
            "self_consistent_ci": wilson(consistent, n),
            "valid": valid / n,
            "valid_ci": wilson(valid, n),
            "unique_valid": unique / n,
            "field_checks": fields,
            "fields_consistent": all_fields / n,
            "fields_consistent_ci": wilson(all_fields, n),
            "space_group_detected_agrees": sum(bool(v["checks"].get("space_group", {}).get("ok")) for v in verd) / n,
            "finished": sum(r["finished"] for r in recs) / n,
            "tokens_per_s": tokens / meta["wall_s"],
            "valid_per_s": valid / meta["wall_s"],
            "reasons": _top_reasons(verd),
        }
        results[meta["row"]] = row
    base = results.get("unconstrained", {}).get("tokens_per_s")
    for r in results.values():
        r["constraint_overhead"] = (1 - r["tokens_per_s"] / base) if base and r["level"] else None
    (out / "constrained.json").write_text(json.dumps(results, indent=1))
    print(render(results))


def _top_reasons(verd: list[dict]) -> dict[str, int]:
    c: dict[str, int] = {}
    for v in verd:
        if not v.get("valid"):
            c[v.get("reason") or "?"] = c.get(v.get("reason") or "?", 0) + 1
    return dict(sorted(c.items(), key=lambda kv: -kv[1])[:5])


def render(results: dict) -> str:
    def pct(x, ci=None):
        if x is None:
            return "n/a"
        return f"{100 * x:.1f}%" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")

    lines = [
        "| row | T / top-k | n | parse | prompt adherence | computed fields consistent | self-consistent | valid | unique & valid | tokens/s | valid CIFs/s | overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['temperature']} / {r['top_k']} | {r['n']} | {pct(r['parse'], r['parse_ci'])} | {pct(r['prompt_adherence'], r['prompt_adherence_ci'])} | "
            f"{pct(r['fields_consistent'], r['fields_consistent_ci'])} | "
            f"{pct(r['self_consistent'], r['self_consistent_ci'])} | {pct(r['valid'], r['valid_ci'])} | {pct(r['unique_valid'])} | {r['tokens_per_s']:.0f} | "
            f"{r['valid_per_s']:.2f} | {pct(r['constraint_overhead'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--engine", default="vllm", choices=["hf", "vllm"])
    s.add_argument("--rows", default="unconstrained,grammar,full")
    s.add_argument("--n-denovo", type=int, default=1000)
    s.add_argument("--n-per-comp", type=int, default=50)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--max-new-tokens", type=int, default=1536)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk", type=int, default=0, help="samples per engine call, each appended to <row>.partial so a killed run resumes (0 = one call)")
    s.add_argument("--grid", action="store_true", help="also the T x top-k grid on the full engine (de novo)")
    s.add_argument("--grid-n", type=int, default=200)
    c = sub.add_parser("score")
    c.add_argument("--out", required=True)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--time-limit", type=float, default=30.0, help="per-sample check limit (s); a sample over it fails its checks")
    args = ap.parse_args()
    sample(args) if args.cmd == "sample" else score(args)


if __name__ == "__main__":
    main()
