"""Sample with the vLLM engine (run it with the vLLM venv's python: `.venv-vllm/bin/python eval/vllm_smoke.py`).

    .venv-vllm/bin/python eval/vllm_smoke.py --model <save_pretrained folder> --out <run folder> [--lora <adapter>]

Runs the `sample` stage through :class:`cifllm.sampling.engines.VLLMEngine` on a composition prompt and a de novo
prompt, then samples the same prompts again to check the seeding, and writes ``<out>/vllm_smoke.json`` (vLLM version,
counts, tokens/s, reproducibility). vLLM starts worker processes, hence the ``__main__`` guard.

With ``--constrained`` it instead builds ``VLLMEngine(constrained=True)`` and samples four prompts (de novo, NaCl z=4,
LiFePO4 z=4, SrTiO3 in Pm-3m) with the constraint engine, then the same prompts and seeds without it, and writes
every sample (prompt text + generated text) to ``<out>/constrained.jsonl`` for the caller to parse, with tokens/s of
both runs in ``vllm_smoke.json``. ``--v1-model`` (a cif-v1 copy of the model) is then loaded with
``constrained=True`` and must be refused with :class:`EngineError` before sampling.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lora", default=None)
    ap.add_argument("--lora2", default=None, help="a second adapter: both served by one engine, picked per prompt")
    ap.add_argument("--merge-check", action="store_true", help="with --lora: also sample from the adapter merged into the model (merge_lora) and compare")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts (alternating composition and de novo)")
    ap.add_argument("--composition", default="NaCl", help="the composition prompts' composition (a long one makes long prompts)")
    ap.add_argument("--constrained", action="store_true", help="constrained vs unconstrained sampling (see above)")
    ap.add_argument("--temperature", type=float, default=1.0, help="with --constrained")
    ap.add_argument("--v1-model", default=None, help="with --constrained: a cif-v1 model that must be refused")
    args = ap.parse_args()
    if args.constrained:
        return constrained(args)

    import vllm

    from cifllm.sampling.engines import GenerationParams, VLLMEngine
    from cifllm.sampling.prompts import build_prompt
    from cifllm.sampling.run import SampleConfig, sample

    t0 = time.perf_counter()
    loras = {"a": args.lora, "b": args.lora2} if args.lora2 else args.lora
    # the LoRA kernel path (merge_lora=False): the per-request adapter switch below needs it
    engine = VLLMEngine(args.model, gpu_memory_utilization=args.gpu_memory_utilization, lora=loras, max_lora_rank=16, seed=0, merge_lora=False)
    load_s = time.perf_counter() - t0
    prompt_file = Path(args.out) / "prompts_in.txt"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text("".join(f"{args.composition}\n" if i % 2 == 0 else "*\n" for i in range(args.prompts)))
    cfg = SampleConfig(model=args.model, engine="vllm", out=args.out, prompt_file=str(prompt_file), num_samples=args.n, max_new_tokens=args.max_new_tokens, seed=3, lora=args.lora)
    out = sample(cfg, engine=engine, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    prompts = [build_prompt(composition=args.composition) if i % 2 == 0 else build_prompt() for i in range(args.prompts)]
    again = list(engine.generate(prompts, GenerationParams(num_samples=args.n, max_new_tokens=args.max_new_tokens, seed=3, batch_size=32)))
    first = sorted((r["prompt_id"], r["sample_index"], r["generated"]) for r in recs)
    second = sorted((prompts[g.prompt_index].id, g.sample_index, g.text) for g in again)
    lora_changes_output = None
    if args.lora:  # the same requests without the adapter must give other samples
        adapter, engine.lora_request = engine.lora_request, None
        base = list(engine.generate(prompts, GenerationParams(num_samples=args.n, max_new_tokens=args.max_new_tokens, seed=3, batch_size=32)))
        engine.lora_request = adapter
        lora_changes_output = sorted((prompts[g.prompt_index].id, g.sample_index, g.text) for g in base) != second
    adapters_differ = None
    if args.lora2:  # one engine, two adapters, picked per prompt through meta["adapter"]
        pa = [build_prompt(composition="NaCl", meta={"adapter": "a"}), build_prompt(composition="NaCl", meta={"adapter": "b"})]
        gens = list(engine.generate(pa, GenerationParams(num_samples=args.n, max_new_tokens=args.max_new_tokens, seed=3, batch_size=32)))
        by = {0: sorted(g.text for g in gens if g.prompt_index == 0), 1: sorted(g.text for g in gens if g.prompt_index == 1)}
        adapters_differ = by[0] != by[1]
    merged = None
    if args.lora and args.merge_check:  # the adapter merged into a copy of the model: the same log-probabilities
        text = engine.tokenizer.decode(engine.tokenizer(prompts[0].text)["input_ids"], skip_special_tokens=False) + next(g.text for g in again if g.prompt_index == 0)
        ids = engine.tokenizer(text)["input_ids"]
        lp_lora = _prompt_logprobs(engine, ids, engine.lora_request)
        lp_base = _prompt_logprobs(engine, ids, None)
        del engine
        gc.collect()
        t = time.perf_counter()
        m_engine = VLLMEngine(args.model, gpu_memory_utilization=args.gpu_memory_utilization, lora=args.lora, seed=0, merge_lora=True)
        m_load = time.perf_counter() - t
        lp_merged = _prompt_logprobs(m_engine, ids, None)
        merged = {
            "lora_merged": m_engine.lora_merged, "load_s": round(m_load, 2), "n_tokens": len(lp_merged),
            "max_abs_logprob_diff_vs_lora": max(abs(a - b) for a, b in zip(lp_merged, lp_lora, strict=True)),
            "max_abs_logprob_diff_vs_base": max(abs(a - b) for a, b in zip(lp_merged, lp_base, strict=True)),
        }
    report = {
        "vllm_version": vllm.__version__,
        "merged": merged,
        "adapters_differ": adapters_differ,
        "lora": args.lora,
        "load_s": round(load_s, 2),
        "n_samples": summary["n_samples"],
        "generated_tokens": summary["generated_tokens"],
        "wall_s": summary["wall_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "samples_per_s": summary["samples_per_s"],
        "engines": sorted({r["engine"] for r in recs}),
        "reproducible": first == second,
        "lora_changes_output": lora_changes_output,
        "max_tokens_respected": all(r["n_tokens"] <= args.max_new_tokens for r in recs),
        "composition_prompts_kept": all(r["text"].startswith("data_Na1Cl1\n") for r in recs if r["prompt_kind"] == "composition"),
    }
    (out / "vllm_smoke.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


def _prompt_logprobs(engine, ids: list[int], lora_request) -> list[float]:  # noqa: ANN001
    """The log-probability vLLM gives each token of ``ids`` after its prefix (teacher forcing)."""
    from vllm import SamplingParams

    out = engine.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), lora_request=lora_request, use_tqdm=False)[0]
    return [float(d[t].logprob) for d, t in zip(out.prompt_logprobs[1:], ids[1:], strict=True)]


def constrained(args: argparse.Namespace) -> int:
    """``--constrained``: sample with and without the constraint engine on one engine, same prompts and seeds."""


    import vllm

    from cifllm.sampling.engines import EngineError, GenerationParams, VLLMEngine
    from cifllm.sampling.prompts import build_prompt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    engine = VLLMEngine(args.model, gpu_memory_utilization=args.gpu_memory_utilization, seed=0, constrained=True)
    load_s = time.perf_counter() - t0
    prompts = [
        build_prompt(),
        build_prompt(composition="NaCl", z=4),
        build_prompt(composition="LiFePO4", z=4),
        build_prompt(composition="SrTiO3", space_group="Pm-3m"),
    ]
    runs: dict[str, dict] = {}
    with (out / "constrained.jsonl").open("w") as f:
        for mode in ("constrained", "unconstrained"):
            params = GenerationParams(
                num_samples=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=3,
                batch_size=len(prompts), constrained=mode == "constrained",
            )
            t = time.perf_counter()
            gens = list(engine.generate(prompts, params))
            wall = time.perf_counter() - t
            tokens = sum(g.n_tokens for g in gens)
            runs[mode] = {
                "n_samples": len(gens),
                "generated_tokens": tokens,
                "wall_s": round(wall, 3),
                "tokens_per_s": round(tokens / wall, 1),
                "n_finished": sum(g.finished for g in gens),
                "max_n_tokens": max(g.n_tokens for g in gens),
            }
            for g in gens:
                p = prompts[g.prompt_index]
                rec = {"mode": mode, "prompt_kind": p.kind, "prompt": p.text, "formula": p.meta.get("formula"),
                       "sample_index": g.sample_index, "generated": g.text, "n_tokens": g.n_tokens, "finished": g.finished}
                f.write(json.dumps(rec) + "\n")
    v1_refused = None
    if args.v1_model:
        del engine
        gc.collect()
        try:
            v1 = VLLMEngine(args.v1_model, gpu_memory_utilization=args.gpu_memory_utilization, seed=0, constrained=True)
            list(v1.generate(prompts, GenerationParams(num_samples=1, max_new_tokens=8, constrained=True)))
            v1_refused = ""
        except EngineError as exc:
            v1_refused = str(exc)
    report = {"vllm_version": vllm.__version__, "load_s": round(load_s, 2), "temperature": args.temperature,
              "max_new_tokens": args.max_new_tokens, "runs": runs, "v1_refused": v1_refused}
    (out / "vllm_smoke.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
