"""Training-recipe study for the default model: short runs on the same number of optimizer steps, compared by held-out
loss (pooled, per source, on real = non-hypothetical structures) and by de novo validity matched to the corpus's size
distribution.

    .venv/bin/python benchmarks/recipe_study.py --corpus data/corpus-base --out runs/recipe --steps 100 \
        --json benchmarks/results/recipe_study.json

Per variant (resumable: a finished variant is not redone): pretrain (``cifllm.training.pretrain``), the validation NLL
of the corpus's ``val`` split per group (``cifllm.evaluation.nll.corpus_groups``, at most ``--nll-per-group`` CIFs
per group), ``--n-denovo`` constrained de novo samples through vLLM (``benchmarks/bench_constrained.py sample`` in
``.venv-vllm``; HF ``generate`` when that venv is missing), the per-sample checks, and validity per size bucket (sites
per cell) next to the share of the corpus's training CIFs in that bucket. ``valid_size_matched`` reweights the
per-bucket validity to the corpus's size distribution, so a model cannot raise it by writing only small cells.
Wall times are of this machine while other jobs share its 2 cores: compare tokens/s only within one study.
``--model NAME=DIR`` measures finished model folders (e.g. the long run's cooldown branches) the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cifllm.core.report import wilson_interval
from cifllm.data.corpus import load_corpus
from cifllm.evaluation.nll import corpus_groups, nll_by_group
from cifllm.evaluation.run import evaluate_texts
from cifllm.training.config import load_pretrain_config
from cifllm.training.pretrain import pretrain
from cifllm.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PEROV = {"perov_5": 0.3, "jarvis_atomgen_perov5": 0.3}

#: the study's fixed protocol on top of the mini preset YAML (the YAML has since become the long run's recipe: wsd,
#: perovskites at 0.3, 16 x 2 accumulation): cosine to 10%, 32 CIFs per step in one micro-step, every source at weight 1
STUDY_PROTOCOL: dict = {"lr_schedule": "cosine", "decay_steps": 0, "batch_size": 32, "grad_accum": 1, "source_weights": {}}
#: name -> PretrainConfig overrides on top of the mini preset YAML and STUDY_PROTOCOL
VARIANTS: dict[str, dict] = {
    "mini": {},
    "mini-perov0.3": {"source_weights": PEROV},
    "mini-wide": {"preset": "mini-wide"},
    "mini-lr4e-3": {"lr": 4.0e-3},
    "mini-deep": {"preset": "mini-deep"},
}
SIZE_BUCKETS = [(1, 4), (5, 8), (9, 16), (17, 32), (33, 10_000)]


def wilson(k: int, n: int) -> list[float] | None:
    """Wilson 95% interval of k/n (:func:`cifllm.core.report.wilson_interval`), 4 digits; None when n = 0."""
    ci = wilson_interval(k, n)
    return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]


def _bucket(n: int) -> str:
    for lo, hi in SIZE_BUCKETS:
        if lo <= n <= hi:
            return f"{lo}-{hi}" if hi < 10_000 else f">={lo}"
    return "?"


def corpus_size_shares(corpus: str) -> dict[str, float]:
    ds = load_corpus(corpus).select_columns(["n_sites", "split"])
    sizes = [n for n, s in zip(ds["n_sites"], ds["split"]) if s == "train"]
    out: dict[str, float] = {}
    for n in sizes:
        out[_bucket(int(n))] = out.get(_bucket(int(n)), 0) + 1
    return {k: v / len(sizes) for k, v in sorted(out.items())}


def sample_denovo(model: Path, out: Path, n: int, vllm_python: str) -> Path:
    """De novo samples (full constraint engine, T 0.8, top-k 10) into ``out/full.jsonl`` (skipped when present)."""
    vllm_py = Path(vllm_python)
    engine = "vllm" if vllm_py.is_file() else "hf"
    py = str(vllm_py) if engine == "vllm" else sys.executable
    f = out / "full.jsonl"
    if not f.is_file():
        cmd = [py, str(ROOT / "benchmarks" / "bench_constrained.py"), "sample", "--model", str(model), "--out", str(out),
               "--engine", engine, "--rows", "full", "--n-denovo", str(n), "--n-per-comp", "0"]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return f


def score_denovo(f: Path, shares: dict[str, float]) -> dict:
    lines = f.read_text().splitlines()
    meta, recs = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    recs = [r for r in recs if r["prompt_kind"] == "de_novo"]
    verd = evaluate_texts([r["text"] for r in recs], workers=2, time_limit_s=30.0)
    n = len(recs)
    valid = sum(bool(v["valid"]) for v in verd)
    consistent = sum(bool(v["consistent"]) for v in verd)
    by: dict[str, list[int]] = {}
    for v in verd:
        if v.get("n_sites"):
            b = by.setdefault(_bucket(int(v["n_sites"])), [0, 0])
            b[0] += bool(v["valid"])
            b[1] += 1
    per_bucket = {k: {"n": t, "valid": c / t, "valid_ci": wilson(c, t), "corpus_share": shares.get(k, 0.0)} for k, (c, t) in sorted(by.items())}
    covered = sum(shares[k] for k in shares if k in by)
    matched = sum(per_bucket[k]["valid"] * shares[k] for k in shares if k in by) / covered if covered else None
    sites = sorted(int(v["n_sites"]) for v in verd if v.get("n_sites"))
    tokens = sum(r["n_tokens"] for r in recs)
    return {
        "n": n,
        "engine": meta["engine"],
        "valid": valid / n,
        "valid_ci": wilson(valid, n),
        "self_consistent": consistent / n,
        "self_consistent_ci": wilson(consistent, n),
        "valid_size_matched": matched,
        "size_buckets_covered_share": covered,
        "median_sites": sites[len(sites) // 2] if sites else None,
        "by_sites": per_bucket,
        "sampling_tokens_per_s": tokens / meta["wall_s"],
    }


def run_variant(name: str, args: argparse.Namespace, shares: dict[str, float], groups: dict[str, list[str]]) -> dict:
    out = Path(args.out) / name
    res_f = out / "study.json"
    if res_f.is_file():
        return json.loads(res_f.read_text())
    overrides = {
        "corpus": args.corpus, "out": str(out), "max_steps": args.steps, "warmup_steps": max(1, args.steps // 10),
        "eval_steps": 0, "save_steps": args.steps, "progress": False, "eval_max_sequences": 512,
        **STUDY_PROTOCOL, **VARIANTS[name],
    }
    cfg = load_pretrain_config(args.base_yaml, overrides)
    t0 = time.time()
    model = out / "model"
    if not (model / "cifllm_run.json").is_file():
        model = pretrain(cfg, resume=True)
    res = evaluate_model(name, model, out, args, shares, groups, {"overrides": VARIANTS[name], "preset": cfg.preset})
    res["wall_s_this_session"] = round(time.time() - t0, 1)
    atomic_write_json(res_f, res)
    return res


def evaluate_model(name: str, model: Path, out: Path, args: argparse.Namespace, shares: dict[str, float], groups: dict[str, list[str]], extra: dict) -> dict:
    """The study's measurements of a finished model folder (a variant's, or any run's ``model/``, ``--model``)."""
    run = json.loads((model / "cifllm_run.json").read_text())
    nll_f = out / "val_nll.json"
    if nll_f.is_file():
        nll = json.loads(nll_f.read_text())
    else:
        nll = nll_by_group(model, groups)
        atomic_write_json(nll_f, nll)
    denovo = score_denovo(sample_denovo(model, out / "denovo", args.n_denovo, args.vllm_python), shares)
    return {
        "variant": name,
        "corpus": args.corpus,  # the validation groups and size shares come from it: compare only within one corpus
        **extra,
        "model": str(model),
        "n_parameters": run["n_parameters"],
        "steps": run["global_step"],
        "tokens_seen": run["tokens_seen"],
        "train_tokens_per_s": run["tokens_seen"] / run["train_seconds_this_session"] if run.get("train_seconds_this_session") else None,
        "eval_loss": run["eval_loss"],
        "val_nll": {k: round(v["nll"], 4) for k, v in nll.items()},
        "val_nll_n_texts": {k: v["n_texts"] for k, v in nll.items()},
        "denovo": denovo,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus-base")
    ap.add_argument("--out", default="runs/recipe")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--n-denovo", type=int, default=200)
    ap.add_argument("--nll-per-group", type=int, default=128)
    ap.add_argument("--base-yaml", default="cifllm/resources/configs/train/mini.yaml", help="the mini preset's run YAML")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"), help="vLLM venv (HF when missing)")
    ap.add_argument("--json", default="benchmarks/results/recipe_study.json")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                    help="measure a finished model folder with the same protocol instead of training variants (repeatable)")
    args = ap.parse_args()
    shares = corpus_size_shares(args.corpus)
    groups = corpus_groups(args.corpus, split="val", max_per_group=args.nll_per_group)
    jobs = [(n, None) for n in args.variants.split(",")] if not args.model else [tuple(m.split("=", 1)) for m in args.model]
    for name, model_dir in jobs:
        if model_dir is None:
            res = run_variant(name, args, shares, groups)
        else:
            out = Path(args.out) / name
            res_f = out / "study.json"
            res = json.loads(res_f.read_text()) if res_f.is_file() else evaluate_model(name, Path(model_dir), out, args, shares, groups, {"overrides": None})
            atomic_write_json(res_f, res)
        # every finished variant of this study folder (several processes may run variants side by side)
        results = {f.parent.name: json.loads(f.read_text()) for f in sorted(Path(args.out).glob("*/study.json"))}
        doc = {
            "machine": "2 CPU cores (AMD EPYC), no GPU, shared with other jobs",
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv),
            "corpus": f"{args.corpus} (this command's; each result names its own)",
            "corpus_train_size_shares": shares,
            "results": results,
        }
        atomic_write_json(Path(args.json), doc)
        print(json.dumps({k: res[k] for k in ("variant", "eval_loss", "val_nll")}), flush=True)
        print(json.dumps({k: res["denovo"][k] for k in ("valid", "valid_size_matched", "median_sites")}), flush=True)


if __name__ == "__main__":
    main()
