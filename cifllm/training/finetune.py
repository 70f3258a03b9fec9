"""``cifllm finetune``: one LoRA adapter per discovery task, optionally conditioned on continuous properties.

Data: the task's ``train`` split (``data/tasks/<task>/train.jsonl``) - or your own structures (``data=``: a folder of
CIFs, a CSV/Parquet file with a CIF column, or a corpus folder; :mod:`cifllm.training.own_data`) - each CIF preceded
by its property lines (:mod:`cifllm.conditioning`); every property line is dropped with probability ``cond_dropout``
(fixed per row and seed), so the adapter also learns the unconditioned distribution and a prompt without a property
means "unconditioned". Validation: the task's ``val`` split with every available property line (no dropout).
``property=``: a built-in property or your own name, mapped onto a free reserved tokenizer tag; the mapping is written
to ``adapter/properties.json`` and read back by sampling and evaluation.

Defaults, and why: rank 16 / alpha 32 (scale 2) on all attention and MLP projections (``q,k,v,o,gate,up,down``) -
attention-only LoRA learns new *formats* (the property lines) poorly in our runs on tiny models, and the MLP
projections hold most of the per-element knowledge an extrapolation task changes; dropout 0.05; learning rate 1e-3
(LoRA tolerates ~10x the full fine-tuning rate); no weight decay on the adapter. Steps, not epochs, are the budget
(task train splits range from ~2k to ~34k CIFs).

Run folder (``out``)::

    config.yaml          resolved FinetuneConfig
    log.jsonl            train/eval losses
    checkpoint-*/        Trainer checkpoints (adapter weights + optimizer; resume with --resume)
    adapter/             peft adapter (adapter_config.json, adapter_model.safetensors), tokenizer, cifllm_adapter.json,
                         properties.json (property name -> tag, decimals)
    own_data/            with data=...: the corpus made from it (see cifllm.training.own_data)
    merged/              with merge=true: the base model with the adapter merged in (a plain save_pretrained folder)
"""

from __future__ import annotations

import builtins
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cifllm.bench.splits import load_split
from cifllm.bench.tasks import load_task
from cifllm.conditioning import (
    BUILTIN,
    PROPERTIES,
    PropertySet,
    format_property_lines,
    property_values,
    save_properties,
)
from cifllm.core.config import (
    BlockAccess,
    ConfigError,
    config_to_dict,
    flatten,
    load_config,
    merge_for_resume,
    save_config,
)
from cifllm.core.inputs import load_json
from cifllm.core.models import resolve_model
from cifllm.core.records import ADAPTER_RECORD, model_fingerprint
from cifllm.data.corpus import load_corpus
from cifllm.modeling import sampling_generation_config
from cifllm.tokenization import TOKENIZER_VERSION, load_tokenizer, tokenizer_fingerprint
from cifllm.training.adapters import base_model_name, write_adapter_card
from cifllm.training.callbacks import CheckpointMarkerCallback, JsonlLogCallback
from cifllm.training.checkpoints import find_resume_checkpoint, move_incomplete_aside, truncate_log
from cifllm.training.config import TrainArgs
from cifllm.training.data import Documents, PadCollator, tokenize_texts
from cifllm.training.guards import check_enough_data
from cifllm.training.own_data import prepare_own_data
from cifllm.training.trainer import CifTrainer
from cifllm.utils import atomic_write_json, sha256_file
from cifllm.utils.hardware import bf16_supported

__all__ = ["RESUME_MUTABLE_KEYS", "FinetuneConfig", "build_finetune_texts", "finetune", "load_finetune_config", "resolve_base"]

#: keys that may change when a fine-tuning run is resumed (they change neither the data order nor the loss curve)
RESUME_MUTABLE_KEYS = frozenset({"out", "progress", "threads", "logging_steps"})

#: fine-tuning's training-loop defaults (rank-16 LoRA on a task split; see the module docstring)
FINETUNE_TRAIN = TrainArgs(
    max_steps=200, batch_size=16, warmup_steps=20, weight_decay=0.0, eval_steps=50, save_steps=50, save_total_limit=2,
    eval_max_sequences=256,
)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig(BlockAccess):
    """LoRA fine-tuning of a pretrained model on one task's train split (units as in ``PretrainConfig``)."""

    task: str = "id_random"  #: task name (eval/tasks/<task>.yaml) whose split is read from ``splits``
    base: str = "default"  #: base model: a save_pretrained folder, "default" (the shipped model) or a Hub id
    splits: str = "data/tasks"  #: folder of task splits (`cifllm split` output)
    out: str = ""  #: run folder; "" = runs/finetune-<task>
    #: properties written before each CIF; null = the task's ``conditioning`` (empty for Case 0/1/3 tasks)
    conditioning: tuple[str, ...] | None = None
    cond_dropout: float = 0.2  #: probability that a training CIF's property line is left out
    #: "lora" (the design) or "full" (every weight trained; the baseline for memory/speed comparisons, writes model/)
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 16  #: LoRA rank
    lora_alpha: int = 32  #: LoRA scaling alpha (update scaled by alpha / r)
    lora_dropout: float = 0.05  #: dropout on the LoRA path, in [0, 1)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS  #: modules of the base model that get LoRA weights
    #: the training loop (:class:`~cifllm.training.config.TrainArgs`, shared with pretraining); fine-tuning defaults
    train: TrainArgs = field(default_factory=lambda: FINETUNE_TRAIN)
    max_train_rows: int = 0  #: use the first N train rows (0 = all); for quick runs
    merge: bool = False  #: also write <out>/merged (the adapter folded into the base weights)
    threads: int = 0  #: torch CPU threads (0 = torch default)
    #: your own structures instead of a task split: a folder of .cif files, a CSV/Parquet file with a CIF column, or a
    #: corpus folder; made into <out>/own_data/corpus by the `cifllm data` pipeline ("" = the task's split)
    data: str = ""
    cif_column: str = "cif"  #: CIF text column of a CSV/Parquet ``data``
    val_fraction: float = 0.1  #: share of the reduced formulas of ``data`` held out for validation (a corpus keeps its split)
    #: condition on this property: a built-in one (tc, band_gap, ...) or your own name (lower case), mapped onto a free
    #: reserved tokenizer tag and recorded in adapter/properties.json
    property: str = ""
    property_column: str = ""  #: numeric column of ``data`` (or corpus ``properties`` key) holding it; "" = property
    property_decimals: int = 2  #: digits written after the decimal point of your own property's value

    def __post_init__(self) -> None:
        for key in ("lora_r", "lora_alpha"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must lie in [0, 1), got {self.cond_dropout}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must not be empty")
        if self.conditioning is not None:
            unknown = sorted(set(self.conditioning) - set(PROPERTIES) - {self.property})
            if unknown:
                raise ValueError(f"unknown conditioning propert{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {', '.join(PROPERTIES)}")

        if self.property:
            self.properties()  # a bad name or no free reserved tag: refused here
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")

    def properties(self) -> PropertySet:
        """The property set of this run: the built-in properties plus ``property`` when it is your own."""
        if not self.property or self.property in PROPERTIES:
            return BUILTIN
        key = self.property if self.data else (self.property_column or self.property)
        return BUILTIN.with_user(self.property, decimals=self.property_decimals, corpus_keys=(key,))

    @builtins.property  # the field ``property`` above shadows the builtin in this class body
    def run_dir(self) -> Path:
        return Path(self.out or (f"runs/finetune-{Path(self.data).stem or 'data'}" if self.data else f"runs/finetune-{self.task}"))


def load_finetune_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> FinetuneConfig:
    return load_config(FinetuneConfig, path, overrides)


def resolve_base(base: str) -> Path:
    """A base model folder from a path, ``default`` or a Hub id (see :func:`cifllm.hub.resolve.resolve_model`)."""
    p = Path(base)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: not a save_pretrained model folder (no config.json)")
        return p

    return resolve_model(base)


def build_finetune_texts(
    rows: list[dict[str, Any]], names: tuple[str, ...], task_property: str | None, cond_dropout: float, seed: int,
    properties: PropertySet = BUILTIN,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Training texts (property lines + CIF) and, per property, the statistics of the values written
    (``n``, ``min``, ``max``, ``p05``, ``p50``, ``p95``, ``unit``): the adapter's training range."""
    import numpy as np

    rng = random.Random(seed)
    texts: list[str] = []
    seen: dict[str, list[float]] = {n: [] for n in names}
    for row in rows:
        vals = property_values(row, names, task_property, properties) if names else {}
        for n, v in vals.items():
            seen[n].append(v)
        kept = {n: v for n, v in vals.items() if rng.random() >= cond_dropout}
        texts.append("".join(ln + "\n" for ln in format_property_lines(kept, properties)) + row["text"])
    stats: dict[str, dict[str, Any]] = {}
    for n, vs in seen.items():
        if not vs:
            raise ValueError(f"no training row carries property {n!r}; cannot condition on it")
        a = np.asarray(vs, dtype=float)
        spec = properties.get(n)
        stats[n] = {
            "tag": spec.tag, "unit": spec.unit, "decimals": spec.decimals, "n": int(a.size),
            "min": float(a.min()), "max": float(a.max()), "p05": float(np.quantile(a, 0.05)),
            "p50": float(np.quantile(a, 0.5)), "p95": float(np.quantile(a, 0.95)),
        }
    return texts, stats


def _attach_corpus_properties(
    split_dir: Path, rows: list[dict[str, Any]], names: tuple[str, ...], task_property: str | None, properties: PropertySet = BUILTIN
) -> None:
    """Split rows carry only the task's ``value``; other stored properties come from the corpus the split was made
    from (its manifest's ``corpus``), joined on ``id``."""
    need = [n for n in names if n != task_property and not properties.get(n).derived and n != "year"]
    if not need or not rows:
        return

    manifest = load_json(split_dir / "manifest.json", "split manifest")
    corpus = manifest.get("corpus") if isinstance(manifest, dict) else None
    if not corpus or not Path(corpus).is_dir():
        raise FileNotFoundError(f"{split_dir}: conditioning on {need} needs the split's corpus ({corpus!r}), which is missing")
    ds = load_corpus(corpus).select_columns(["id", "properties"])
    props = dict(zip(ds["id"], ds["properties"], strict=True))
    for r in rows:
        r["properties"] = props.get(r["id"], "{}")


def _say(msg: str) -> None:
    print(f"[cifllm finetune] {msg}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def finetune(cfg: FinetuneConfig, resume: bool = False) -> Path:
    """Train a LoRA adapter for ``cfg.task`` on ``cfg.base``; returns the ``adapter/`` folder (see module doc).
    ``method="full"`` trains every weight instead and returns ``model/`` (a plain save_pretrained folder)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments


    # -- checks before any long work ----------------------------------------------------------------------------
    task = None if cfg.data else load_task(cfg.task)  # data=...: your own structures instead of a task split
    split_dir = Path(cfg.splits) / task.name if task is not None else None
    if split_dir is not None and not (split_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{split_dir}: no split for task {task.name}; build it with `cifllm split --task {task.name}`")
    base = resolve_base(cfg.base)
    tok = load_tokenizer(base)
    if tokenizer_fingerprint(tok.backend_tokenizer) != tokenizer_fingerprint():
        raise ValueError(f"{base}: its tokenizer does not match this cifllm's tokenizer ({TOKENIZER_VERSION})")
    names = (tuple(task.conditioning) if task is not None else ()) if cfg.conditioning is None else tuple(cfg.conditioning)
    names = tuple(dict.fromkeys((*names, cfg.property))) if cfg.property else names
    properties = cfg.properties()
    task_property = (task.property or None) if task is not None else None
    run_dir = cfg.run_dir
    resume_from, incomplete = (None, [])
    if resume:
        saved = run_dir / "config.yaml"
        if saved.is_file():  # the one resume policy (cifllm.core.config.merge_for_resume): only bookkeeping may change
            merge_for_resume(load_finetune_config(saved), cfg, flatten(config_to_dict(cfg), FinetuneConfig), RESUME_MUTABLE_KEYS)
        resume_from, incomplete = find_resume_checkpoint(run_dir)
    elif (run_dir / "config.yaml").exists() or (run_dir / "adapter").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another out=...")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)

    if split_dir is not None:
        task_name, manifest_file = task.name, split_dir / "manifest.json"
        train_rows = load_split(split_dir, "train")
        val_rows = load_split(split_dir, "val")
        if not train_rows:
            raise ValueError(f"{split_dir}/train.jsonl is empty")
        _attach_corpus_properties(split_dir, [*train_rows, *val_rows], names, task_property, properties)
    else:
        spec = properties.get(cfg.property) if cfg.property else None
        columns = {spec.corpus_keys[0]: cfg.property_column or cfg.property} if spec and not spec.derived and spec.corpus_keys else {}
        own = prepare_own_data(cfg.data, run_dir / "own_data", cfg.cif_column, columns, cfg.val_fraction, cfg.seed, cfg.progress)
        task_name, manifest_file, train_rows, val_rows = f"own:{Path(cfg.data).name}", own.manifest_file, own.train, own.val
        _say(f"own data: {len(train_rows)} train / {len(val_rows)} val CIFs in {own.corpus} (dropped records: {own.corpus / 'rejects.jsonl'})")
    if cfg.max_train_rows:
        train_rows = train_rows[: cfg.max_train_rows]
    texts, stats = build_finetune_texts(train_rows, names, task_property, cfg.cond_dropout, cfg.seed, properties)
    val_texts, _ = build_finetune_texts(val_rows[: cfg.eval_max_sequences or None], names, task_property, 0.0, cfg.seed, properties) if val_rows else ([], {})

    import transformers

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    mpe = int(model.config.max_position_embeddings)
    docs = tokenize_texts(texts, tok)
    keep = [i for i, n in enumerate(docs.lengths) if n <= mpe]
    dropped = len(texts) - len(keep)
    train_ds = Documents(docs, keep if dropped else None)
    val_ds = None
    if val_texts:
        vdocs = tokenize_texts(val_texts, tok)
        vkeep = [i for i, n in enumerate(vdocs.lengths) if n <= mpe]
        val_ds = Documents(vdocs, vkeep)
    check_enough_data("finetune", cfg.data or str(split_dir), len(train_ds), None if val_ds is None else len(val_ds), cfg.batch_size, drop_last=False, unit="CIFs")
    n_base_params = sum(p.numel() for p in model.parameters())
    lcfg = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=list(cfg.target_modules),
        bias="none", task_type="CAUSAL_LM",
    )
    if cfg.method == "lora":
        try:
            model = get_peft_model(model, lcfg)
        except ValueError as exc:
            raise ConfigError(f"target_modules {list(cfg.target_modules)}: {exc}") from None
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())
    _say(
        f"task={task_name} base={base} conditioning={list(names) or 'none'} train={len(train_ds)} CIFs "
        f"(dropped {dropped} longer than {mpe} tokens) val={len(val_ds) if val_ds else 0} "
        f"trainable={n_trainable:,} of {n_base_params:,} precision={'bf16' if bf16 else 'fp32'}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in move_incomplete_aside(incomplete):
        _say(f"unfinished checkpoint moved aside: {p}")
    step0 = int(resume_from.name.split("-")[-1]) if resume_from else 0
    truncate_log(run_dir / "log.jsonl", step0)
    if not (run_dir / "config.yaml").is_file():
        save_config(cfg, run_dir / "config.yaml")
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.train.scheduler()[0], lr_scheduler_kwargs=cfg.train.scheduler()[1],
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch", bf16=bf16, use_cpu=not cuda, logging_strategy="steps", logging_steps=cfg.logging_steps,
        logging_first_step=True, eval_strategy="steps" if (val_ds is not None and cfg.eval_steps) else "no",
        eval_steps=cfg.eval_steps or None, eval_on_start=val_ds is not None and cfg.eval_steps > 0 and resume_from is None,
        prediction_loss_only=True, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        seed=cfg.seed, data_seed=cfg.seed, dataloader_drop_last=False, dataloader_pin_memory=cuda,
        remove_unused_columns=False, include_num_input_tokens_seen="non_padding", report_to="none",
        disable_tqdm=not cfg.progress, use_cache=False,
    )
    trainer = CifTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=PadCollator(tok.pad_token_id, tok.bos_token_id), processing_class=tok,
        callbacks=[JsonlLogCallback(run_dir / "log.jsonl"), CheckpointMarkerCallback()], grouped_lengths=train_ds.lengths,
    )
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    eval_start = next((h["eval_loss"] for h in evals if h.get("step") == 0), None)
    eval_end = None
    if val_ds is not None:
        last = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else trainer.evaluate()
        eval_end = last.get("eval_loss")
    tokens = int(trainer.state.num_input_tokens_seen)

    adapter = run_dir / ("adapter" if cfg.method == "lora" else "model")
    tmp = run_dir / f".{adapter.name}.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    if cfg.method == "full":
        trainer.model.config.use_cache = True
        trainer.model.generation_config = sampling_generation_config(trainer.model.config)
    else:  # adapter_config.json names the base portably ("default", a Hub id, a relative folder), not this machine's path
        for pc in trainer.model.peft_config.values():
            pc.base_model_name_or_path = base_model_name(cfg.base, base)
    trainer.model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    adapter_mb = sum(f.stat().st_size for f in tmp.glob("adapter_model.*" if cfg.method == "lora" else "model*.safetensors")) / 2**20
    record = {
        "format": "cifllm-lora-v1" if cfg.method == "lora" else "cifllm-full-finetune-v1",
        "method": cfg.method,
        "task": task_name,
        "task_manifest_sha256": sha256_file(manifest_file),
        "base_model": str(base),
        "base_fingerprint": model_fingerprint(base),
        "tokenizer": {"version": TOKENIZER_VERSION, "fingerprint": tokenizer_fingerprint(tok.backend_tokenizer)},
        "conditioning": stats,
        "cond_dropout": cfg.cond_dropout,
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": list(cfg.target_modules)},
        "trainable_parameters": n_trainable,
        "base_parameters": n_base_params,
        "adapter_mb": round(adapter_mb, 3),
        "train_rows": len(train_ds),
        "dropped_too_long": dropped,
        "global_step": trainer.state.global_step,
        "tokens_seen": tokens,
        "train_loss": result.training_loss,
        "eval_loss_base": eval_start,
        "eval_loss": eval_end,
        "train_seconds_this_session": round(train_s, 1),
        "tokens_per_second": round(tokens / train_s, 1) if train_s > 0 and not resume_from else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "precision": "bf16" if bf16 else "fp32",
        "config": config_to_dict(cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": __import__("peft").__version__},
    }
    atomic_write_json(tmp / (ADAPTER_RECORD if cfg.method == "lora" else "cifllm_finetune.json"), record)
    save_properties(properties.subset(names), tmp)  # property name -> tag, read back by sampling and evaluation
    if cfg.method == "lora":  # the adapter's card from the record, in place of peft's empty template
        write_adapter_card(tmp, base_model_name(cfg.base, base), task.description if task is not None else f"your own data ({cfg.data})")
    if adapter.exists():
        import shutil

        shutil.rmtree(adapter)
    os.replace(tmp, adapter)
    if cfg.merge and cfg.method == "lora":
        merged = run_dir / "merged"
        mtmp = run_dir / ".merged.tmp"
        m = trainer.model.merge_and_unload()
        m.config.use_cache = True
        m.generation_config = sampling_generation_config(m.config)
        m.save_pretrained(str(mtmp), safe_serialization=True)
        tok.save_pretrained(str(mtmp))
        for name in ("cifllm_tokenizer.json", "data_manifest.json"):
            if (base / name).is_file():
                (mtmp / name).write_bytes((base / name).read_bytes())
        save_properties(properties.subset(names), mtmp)
        atomic_write_json(mtmp / "cifllm_merged.json", {**record, "merged": True})
        if merged.exists():
            import shutil

            shutil.rmtree(merged)
        os.replace(mtmp, merged)
    atomic_write_json(run_dir / "metrics.json", {k: record[k] for k in record if k not in ("config", "versions")})
    _say(
        f"done: step {trainer.state.global_step}, val loss {eval_start if eval_start is None else round(eval_start, 4)} -> "
        f"{eval_end if eval_end is None else round(eval_end, 4)}, adapter {adapter_mb:.2f} MB in {adapter}"
    )
    if eval_end is not None and not math.isfinite(eval_end):
        raise RuntimeError(f"fine-tuning diverged: validation loss {eval_end}")
    return adapter


def adapter_metrics(adapter_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(adapter_dir) / "cifllm_adapter.json").read_text())
