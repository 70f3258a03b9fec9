"""``cifllm demo``: the main job on built-in defaults - sample crystals with the shipped default model (a handful of
compositions + de novo), check them, and write CIFs, ``metrics.json`` and a report. Offline, CPU, a few minutes.

Novelty needs a reference: ``reference`` if given (a corpus folder, or a folder of CIF files), else ``data/corpus`` if
it was built (``cifllm data``, see :data:`REFERENCE_HINT`), else none - the report then says that novelty was not
measured and how to get it.

Output (``out``)::

    samples/            the sample stage (samples.jsonl, cifs/*.cif, summary.json)
    samples/eval/       the evaluate stage (metrics.json, checks.jsonl, report.md/.html, plots/)
    demo.json           what ran: model, prompts, reference (or why none), headline rates
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cifllm.core.config import save_config
from cifllm.core.models import resolve_model
from cifllm.core.records import CIFS_DIR, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, PROMPTS_FILE, REPORT_FILE
from cifllm.core.report import on_off
from cifllm.core.sampling import SAMPLING
from cifllm.evaluation.run import EvalConfig, evaluate
from cifllm.sampling.prompts import read_prompt_file
from cifllm.sampling.run import SampleConfig, sample
from cifllm.utils import atomic_write_json, atomic_write_text
from cifllm.utils.resources import resolve_path

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    model: str = "default"  #: "default" (the shipped model), a model folder or a Hub id
    out: str = "runs/demo"  #: output folder: samples/, samples/eval/, demo.json
    #: one composition per line, "*" = de novo; builtin:demo_prompts = the packaged file (checkout: eval/demo_prompts.txt)
    prompt_file: str = "builtin:demo_prompts"
    num_samples: int = 6  #: samples per prompt
    n_denovo: int = 24  #: samples of the de novo ("*") prompt
    reference: str = ""  #: corpus folder or folder of .cif files for novelty; "" = data/corpus when it exists
    max_new_tokens: int = SAMPLING.max_new_tokens  #: most tokens generated per sample
    temperature: float = SAMPLING.temperature  #: sampling temperature; 0 = greedy
    top_k: int = SAMPLING.top_k  #: 0 = off
    seed: int = 0  #: sampling seed (same seed, prompts and batch size: same samples on the same device)
    threads: int = 0  #: torch CPU threads; 0 = torch default
    engine: Literal["hf", "vllm"] = "hf"  #: sampling engine
    #: the constraint engine: true / false, null = auto (on for cif-v2 models, off with a note for cif-v1 models)
    constrained: bool | None = None


def run_demo(cfg: DemoConfig, log=print) -> dict[str, Any]:
    """Sample -> evaluate -> report; returns the headline numbers (also in ``<out>/demo.json``)."""
    t0 = time.time()
    model = resolve_model(cfg.model)
    # inputs first (prompts, reference), so a failed demo writes nothing
    items = read_prompt_file(resolve_path(cfg.prompt_file, folders=("prompts",)))
    ref, note = _reference(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    # one prompt file with per-prompt counts: the de novo prompt gets n_denovo samples
    lines = []
    for p, n in items:
        rec: dict[str, Any] = {"prefix": p.text} if p.kind == "prefix" else {}
        if p.kind in ("composition", "composition_sg"):
            rec = {"composition": p.meta["formula"], **({"space_group": p.meta["sg_number"]} if "sg_number" in p.meta else {})}
        rec["n"] = n or (cfg.n_denovo if p.kind == "de_novo" else cfg.num_samples)
        lines.append(json.dumps(rec))
    prompts = out / PROMPTS_FILE
    atomic_write_text(prompts, "\n".join(lines) + "\n")
    scfg = SampleConfig(
        model=str(model), out=str(out / "samples"), prompt_file=str(prompts), max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed, threads=cfg.threads, batch_size=32, engine=cfg.engine,
        constrained=cfg.constrained,
    )
    log(f"demo: sampling with {model}")
    sample_dir = sample(scfg, log=log)
    if note:
        log(f"demo: {note}")
    ecfg = EvalConfig(samples=str(out / "samples"), reference=ref, novelty=ref is not None, reference_split=None)
    ev = evaluate(ecfg, log=log)
    metrics = json.loads((ev / METRICS_FILE).read_text())
    rates = metrics.get("rates", {})
    summary = {
        "model": str(model),
        "model_record": json.loads((model / "cifllm_run.json").read_text()) if (model / "cifllm_run.json").is_file() else None,
        "prompts": [json.loads(x) for x in lines],
        "constrained": json.loads((sample_dir / "summary.json").read_text()).get("constrained"),
        "reference": ref,
        "novelty_note": note,
        "n_samples": metrics.get("n_samples"),
        "rates": rates,
        "report": str(ev / REPORT_FILE),
        "cifs": str(out / "samples" / CIFS_DIR),
        "seconds": round(time.time() - t0, 1),
    }
    summary["model_record"] = {k: summary["model_record"][k] for k in ("preset", "n_parameters", "global_step", "eval_loss")} if summary["model_record"] else None
    atomic_write_json(out / "demo.json", summary)
    log(
        f"demo done (constraint engine {on_off(summary['constrained'])}): "
        + ", ".join(
            f"{k.replace('_', ' ')} {100 * v:.1f}%"
            for k, v in rates.items()
            if isinstance(v, int | float) and k in ("parse", "prompt_adherence", "valid", "consistent", "unique", "novel")
        )
        + f"\n  CIFs: {summary['cifs']}\n  report: {summary['report']}\n  metrics: {ev / 'metrics.json'}"
    )
    return summary


#: how to get a reference for novelty, for a checkout and for an installed package (README "Novelty reference")
REFERENCE_HINT = (
    "pass reference=<a folder of your .cif files, or a corpus folder>; or build a corpus from the registry's public "
    "datasets: `cifllm data --download perov_5 data_dir=data/raw` then `cifllm data --config builtin:pooled "
    "data_dir=data/raw datasets=perov_5 out=data/corpus` (in a checkout with CIFLLM_DATA_DIR set: `make data`)"
)


def _reference(cfg: DemoConfig) -> tuple[str | None, str]:
    if cfg.reference:
        p = Path(cfg.reference)
        if not p.exists():
            raise FileNotFoundError(f"reference={cfg.reference}: no such folder or file ({REFERENCE_HINT})")
        return cfg.reference, ""
    if (Path("data/corpus") / MANIFEST_FILE).is_file():
        return "data/corpus", ""
    return None, f"novelty not measured: no reference corpus ({REFERENCE_HINT})"
