"""Training throughput on this CPU: tokens/s and peak memory for presets x precision x batching mode.

Two measurements per (preset, precision):

* ``throughput``: one process trains the model with packed and with length-grouped batches *alternately*, step by
  step (forward, backward, clipping, AdamW step, bf16 autocast or fp32), so load from other users of a shared
  machine hits both modes alike; tokens/s = real (non-padding) tokens / seconds, summed over the measured steps.
* ``trainer``: the real ``cifllm pretrain`` (Trainer, data loader, logging) in a fresh process per mode, for the
  peak resident memory of a training process and an end-to-end tokens/s (from ``log.jsonl``, after warm-up steps).

Both modes get about the same number of real tokens per step (the grouped batch size is chosen from the mean CIF
length), on a subset of the corpus with the full corpus' block size.

    .venv/bin/python benchmarks/bench_train.py --corpus data/corpus --presets tiny small
    .venv/bin/python benchmarks/bench_train.py --presets small --precisions bf16 --what throughput

Writes ``benchmarks/results/train_cpu.json`` (rows merged with earlier runs) and ``benchmarks/results/train_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: per preset: packed blocks per step, warm-up steps, measured steps
PLAN: dict[str, tuple[int, int, int]] = {"tiny": (8, 3, 40), "small": (2, 1, 6)}
#: per preset for the Trainer runs (peak memory): warm-up steps, measured steps
TRAINER_PLAN: dict[str, tuple[int, int]] = {"tiny": (2, 8), "small": (1, 4)}


def subset_corpus(corpus: Path, n_train: int, out: Path) -> tuple[Path, dict[str, Any]]:
    """Write the first ``n_train`` train rows (+ a few val rows) of ``corpus`` as a corpus in ``out``."""
    from cifllm.data.corpus import load_corpus, load_manifest, write_corpus

    man = load_manifest(corpus)
    ds = load_corpus(corpus)
    split = list(ds["split"])
    train = [i for i, s in enumerate(split) if s == "train"][:n_train]
    val = [i for i, s in enumerate(split) if s == "val"][:64]
    rows = ds.select(train + val).to_list()
    write_corpus(rows, out, {"subset_of": str(corpus)})
    return out, man


def packing_stats(corpus: Path, block: int) -> dict[str, float]:
    import numpy as np

    from cifllm.data.corpus import load_corpus
    from cifllm.training.data import pack_documents

    lengths = np.asarray(load_corpus(corpus, split="train")["n_tokens"]) + 2
    blocks, _ = pack_documents(lengths, block)
    used = sum(int(lengths[b].sum()) for b in blocks)
    return {"mean_cif_tokens": float(lengths.mean()), "packed_padding": 1 - used / (len(blocks) * block)}


def interleaved(corpus: Path, preset: str, precision: str, blocks: int, grouped_batch: int, warm: int, steps: int, mpe: int) -> dict[str, dict[str, Any]]:
    """Alternate packed and grouped training steps on one model; tokens/s per mode over the measured steps."""
    import contextlib

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from cifllm.data.corpus import load_corpus
    from cifllm.modeling import build_model, count_parameters, make_config
    from cifllm.tokenization import as_pretrained
    from cifllm.training.data import (
        Documents,
        GroupedSampler,
        PackedBlocks,
        PadCollator,
        pack_documents,
        tokenize_texts,
    )

    tok = as_pretrained()
    docs = tokenize_texts(list(load_corpus(corpus, split="train")["text"]), tok)
    packed_blocks, _ = pack_documents(docs.lengths, mpe, seed=0)
    g = torch.Generator().manual_seed(0)
    loaders = {
        "packed": DataLoader(PackedBlocks(docs, packed_blocks, mpe, tok.pad_token_id, tok.bos_token_id), batch_size=blocks,
                             shuffle=True, generator=g, collate_fn=default_data_collator, drop_last=True),
        "grouped": DataLoader(Documents(docs), batch_size=grouped_batch, sampler=GroupedSampler(docs.lengths, grouped_batch, seed=0),
                              collate_fn=PadCollator(tok.pad_token_id, tok.bos_token_id), drop_last=True),
    }
    iters = {m: iter(dl) for m, dl in loaders.items()}
    cfg = make_config(preset, vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=mpe)
    model = build_model(cfg, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    stats: dict[str, dict[str, list[float]]] = {m: {"s": [], "tokens": []} for m in loaders}
    for i in range(warm + steps):
        for mode in (("packed", "grouped") if i % 2 == 0 else ("grouped", "packed")):
            batch = next(iters[mode])
            real = int((batch["input_ids"] != tok.pad_token_id).sum())
            t0 = time.perf_counter()
            with amp:
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt_s = time.perf_counter() - t0
            if i >= warm:
                stats[mode]["s"].append(dt_s)
                stats[mode]["tokens"].append(real)
    out = {}
    for mode, st in stats.items():
        out[mode] = {
            "n_parameters": count_parameters(model),
            "batch_size": blocks if mode == "packed" else grouped_batch,
            "steps_measured": steps,
            "tokens_per_step": round(float(np.mean(st["tokens"]))),
            "step_s": round(float(np.mean(st["s"])), 3),
            "tokens_per_s": round(sum(st["tokens"]) / sum(st["s"]), 1),
        }
    return out


def run_one(corpus: Path, preset: str, precision: str, mode: str, batch: int, warm: int, steps: int, mpe: int, work: Path) -> dict[str, Any]:
    out = work / f"{preset}-{precision}-{mode}"
    cmd = [
        str(REPO / ".venv" / "bin" / "cifllm"), "pretrain", f"corpus={corpus}", f"out={out}", f"preset={preset}",
        f"precision={precision}", f"data_mode={mode}", f"batch_size={batch}", f"max_steps={warm + steps}",
        "warmup_steps=1", "logging_steps=1", "eval_steps=0", "save_steps=100000", "eval_max_sequences=4",
        f"max_position_embeddings={mpe}", "progress=false",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if "loss" in r}
    a, b = train[warm], train[warm + steps]
    seconds = b["time"] - a["time"]
    tokens = b["tokens_seen"] - a["tokens_seen"]
    run = json.loads((out / "model" / "cifllm_run.json").read_text())
    return {
        "preset": preset,
        "n_parameters": run["n_parameters"],
        "precision": precision,
        "data_mode": mode,
        "batch_size": batch,
        "block_size": run["block_size"],
        "trainer_steps_measured": steps,
        "trainer_tokens_per_step": round(tokens / steps),
        "trainer_tokens_per_s": round(tokens / seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "trainer_command": shlex.join(cmd[1:]),
    }


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from cifllm.training.pretrain import bf16_supported

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_supported": bf16_supported(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_md(data: dict[str, Any], path: Path) -> None:
    m, c = data["machine"], data["corpus"]
    lines = [
        "## Training throughput on CPU (`benchmarks/bench_train.py`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"bf16 autocast supported: {m['bf16_supported']}. Date: {data['date']}. Load average when the last part "
        f"started: {m['load_average_at_start']} (a machine shared with other jobs: absolute numbers are indicative; "
        "packed and grouped are compared step-interleaved in one process, so their ratio is the robust figure).",
        "",
        f"Corpus: {c['n_train']} train CIFs of `{c['source']}`; block {c['block_size']} tokens (longest CIF "
        f"{c['max_tokens']} + BOS/EOS, rounded up to 64); mean CIF {c['mean_cif_tokens']:.0f} tokens with BOS/EOS; "
        f"packing leaves {100 * c['packed_padding']:.1f}% padding.",
        "",
        "Commands: " + "; ".join(f"`{x}`" for x in data["commands"]),
        "",
        *([f"Note: {data['note']}", ""] if data.get("note") else []),
        "tokens/s counts real (non-padding) tokens. *interleaved*: forward + backward + AdamW step, packed and grouped "
        "steps alternating in one process. *Trainer*: `cifllm pretrain` end to end, one process per row (peak RSS of "
        "that process).",
        "",
        "| preset | params | precision | batching | batch | tokens/step | s/step | tokens/s (interleaved) | tokens/s (Trainer) | peak RSS MB (Trainer) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: Any, spec: str = ".0f") -> str:
        return "-" if v is None else format(v, spec)

    for r in sorted(data["rows"], key=lambda r: (r.get("n_parameters", 0), r["precision"], r["data_mode"])):
        lines.append(
            f"| {r['preset']} | {r.get('n_parameters', 0) / 1e6:.2f}M | {r['precision']} | {r['data_mode']} | {r.get('batch_size', '-')} | "
            f"{fmt(r.get('tokens_per_step'))} | {fmt(r.get('step_s'), '.3f')} | {fmt(r.get('tokens_per_s'))} | "
            f"{fmt(r.get('trainer_tokens_per_s'))} | {fmt(r.get('peak_rss_mb'))} |"
        )
    ratios = []
    by = {(r["preset"], r["precision"], r["data_mode"]): r for r in data["rows"]}
    for (preset, precision, mode), r in sorted(by.items()):
        other = by.get((preset, precision, "packed"))
        if mode == "grouped" and other and r.get("tokens_per_s") and other.get("tokens_per_s"):
            ratios.append(f"{preset}/{precision}: grouped = {r['tokens_per_s'] / other['tokens_per_s']:.2f} x packed")
        bf = by.get((preset, "bf16", mode))
        if precision == "fp32" and bf and r.get("tokens_per_s") and bf.get("tokens_per_s"):
            ratios.append(f"{preset}/{mode}: bf16 = {bf['tokens_per_s'] / r['tokens_per_s']:.2f} x fp32")
    if ratios:
        lines += ["", "Ratios (interleaved tokens/s): " + "; ".join(ratios) + "."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(PLAN))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--what", nargs="+", default=["throughput", "trainer"], choices=["throughput", "trainer", "none"],
                   help="none: only rewrite the markdown from the JSON (e.g. with a new --note)")
    p.add_argument("--note", default=None, help="free text stored in the JSON and shown in the markdown")
    p.add_argument("--n-train", type=int, default=3000, help="train CIFs in the subset corpus")
    p.add_argument("--out", default=str(RESULTS / "train_cpu.json"))
    args = p.parse_args(argv)

    from cifllm.data.corpus import load_manifest
    from cifllm.modeling import max_positions_for

    out_json = Path(args.out)
    previous = json.loads(out_json.read_text()) if out_json.is_file() else {}
    rows = {(r["preset"], r["precision"], r["data_mode"]): r for r in previous.get("rows", [])}
    commands = list(previous.get("commands", []))
    if args.what == ["none"]:
        previous["note"] = args.note or previous.get("note")
        write_md(previous, out_json.with_suffix(".md"))
        out_json.write_text(json.dumps(previous, indent=2) + "\n")
        return 0
    full = load_manifest(args.corpus)
    mpe = max_positions_for(int(full["max_tokens"]))
    started = machine()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        corpus, _ = subset_corpus(Path(args.corpus), args.n_train, work / "corpus")
        stats = packing_stats(corpus, mpe)
        for preset in args.presets:
            blocks, warm, steps = PLAN[preset]
            grouped_batch = max(1, round(blocks * mpe * (1 - stats["packed_padding"]) / stats["mean_cif_tokens"]))
            for precision in args.precisions:
                if "throughput" in args.what:
                    print(f"[bench] {preset} {precision}: packed x{blocks} vs grouped x{grouped_batch}, interleaved ...", flush=True)
                    res = interleaved(corpus, preset, precision, blocks, grouped_batch, warm, steps, mpe)
                    for mode, r in res.items():
                        row = rows.setdefault((preset, precision, mode), {"preset": preset, "precision": precision, "data_mode": mode})
                        row.update(r)
                        print(f"[bench]   {mode}: {r['tokens_per_s']:.0f} tokens/s ({r['step_s']} s/step)", flush=True)
                if "trainer" in args.what:
                    t_warm, t_steps = TRAINER_PLAN[preset]
                    for mode in ("packed", "grouped"):
                        batch = blocks if mode == "packed" else grouped_batch
                        print(f"[bench] {preset} {precision} {mode}: Trainer run ...", flush=True)
                        r = run_one(corpus, preset, precision, mode, batch, t_warm, t_steps, mpe, work)
                        row = rows.setdefault((preset, precision, mode), {"preset": preset, "precision": precision, "data_mode": mode})
                        row.update(r)
                        print(f"[bench]   {r['trainer_tokens_per_s']:.0f} tokens/s, peak {r['peak_rss_mb']:.0f} MB", flush=True)
    commands.append(shlex.join(["python", *sys.argv]))
    data = {
        "date": dt.date.today().isoformat(),
        "commands": list(dict.fromkeys(commands)),
        "machine": started,
        "corpus": {
            "source": str(args.corpus), "n_train": args.n_train, "max_tokens": int(full["max_tokens"]),
            "block_size": mpe, **stats,
        },
        "rows": list(rows.values()),
        "note": args.note or previous.get("note"),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    write_md(data, out_json.with_suffix(".md"))
    print(f"[bench] wrote {out_json} and {out_json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
