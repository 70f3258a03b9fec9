"""Pretraining: corpus -> tokenized, packed (or length-grouped) CIFs -> ``CifTrainer`` -> ``<out>/model``.

:func:`prepare` does every check that can fail on bad input (corpus, tokenizer, preset, DeepSpeed config, run folder,
checkpoint to resume) in seconds; :func:`pretrain` then tokenizes, builds the model and trains.

Run folder::

    <out>/config.yaml          resolved PretrainConfig
    <out>/data_manifest.json   the corpus manifest, its SHA-256 and the data statistics of this run
    <out>/log.jsonl            one JSON object per log: loss, learning_rate, grad_norm, tokens_per_s, eval_loss, ...
    <out>/checkpoint-<step>/   Trainer checkpoints (+ cifllm_checkpoint.json once complete)
    <out>/model/               save_pretrained: weights, config, generation config, tokenizer, cifllm_run.json,
                               config.yaml, data_manifest.json

Works the same in one process, under ``torchrun`` (DDP) and with DeepSpeed (``deepspeed=train/deepspeed/*.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.core.config import ConfigError, config_to_dict, load_config, save_config
from cifllm.data.corpus import CORPUS_SCHEMA_VERSION, load_corpus, load_manifest
from cifllm.modeling import build_model, count_parameters, get_preset, make_config, max_positions_for
from cifllm.tokenization import TOKENIZER_VERSION, as_pretrained, load_tokenizer, tokenizer_fingerprint
from cifllm.training.callbacks import CheckpointMarkerCallback, JsonlLogCallback
from cifllm.training.checkpoints import (
    MARKER,
    CheckpointError,
    find_resume_checkpoint,
    move_incomplete_aside,
    truncate_log,
    verify_checkpoint,
)
from cifllm.training.config import PretrainConfig, merge_for_resume
from cifllm.training.data import Documents, PackedBlocks, PadCollator, pack_documents, source_repeats, tokenize_texts
from cifllm.training.deepspeed_config import load_deepspeed_config
from cifllm.training.guards import check_enough_data
from cifllm.training.trainer import CifTrainer
from cifllm.utils import atomic_write_json, sha256_file
from cifllm.utils.hardware import bf16_supported

__all__ = ["PreparedRun", "bf16_supported", "new_model", "prepare", "pretrain", "start_run_folder"]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(msg: str) -> None:
    if _rank() == 0:
        print(f"[cifllm pretrain] {msg}", flush=True)


def _has_run(run_dir: Path) -> bool:
    if not run_dir.is_dir():
        return False
    return any((run_dir / n).exists() for n in ("config.yaml", "log.jsonl", "model")) or any(run_dir.glob("checkpoint-*"))


@dataclass
class PreparedRun:
    """Everything :func:`prepare` checked and resolved (cheap to build)."""

    cfg: PretrainConfig
    tokenizer: Any
    manifest: dict[str, Any]
    manifest_sha256: str
    max_tokens: int  # longest CIF of the corpus, tokens without BOS/EOS
    max_position_embeddings: int
    block_size: int
    bf16: bool
    world_size: int
    deepspeed: dict[str, Any] | None
    resume_from: Path | None = None
    incomplete: list[Path] = field(default_factory=list)


def _with_accelerate_deepspeed(cfg: PretrainConfig) -> PretrainConfig:
    """Under ``accelerate launch`` with a DeepSpeed config (train/accelerate/*.yaml), use its JSON as ``deepspeed``."""
    import dataclasses

    if cfg.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return cfg
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path:
        raise ConfigError(
            "accelerate launched DeepSpeed without a JSON file; set deepspeed_config.deepspeed_config_file in the "
            "accelerate config (see train/accelerate/*.yaml) or pass deepspeed=train/deepspeed/<profile>.json"
        )
    return dataclasses.replace(cfg, deepspeed=path)


def prepare(cfg: PretrainConfig, resume: bool = False) -> PreparedRun:
    """Validate the run before any long work: raises ``FileNotFoundError`` / ``ValueError`` (``ConfigError``,
    ``DeepSpeedConfigError``, ``UnknownPresetError``) / ``CheckpointError`` with a message saying what to fix."""
    get_preset(cfg.preset)
    cfg = _with_accelerate_deepspeed(cfg)
    corpus = Path(cfg.corpus)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus folder {corpus} does not exist; build it with `cifllm data` (or set corpus=...)")
    manifest = load_manifest(corpus)
    if manifest.get("schema_version") != CORPUS_SCHEMA_VERSION:
        raise ValueError(f"{corpus}: corpus schema version {manifest.get('schema_version')} != {CORPUS_SCHEMA_VERSION}")
    if not (corpus / "dataset").is_dir():
        raise FileNotFoundError(f"{corpus}/dataset is missing; rebuild the corpus with `cifllm data`")
    if int(manifest.get("n_train", manifest.get("n_rows", 0)) or 0) <= 0:
        raise ValueError(f"{corpus}: the corpus has no training rows (manifest n_train={manifest.get('n_train')})")
    max_tokens = int(manifest.get("max_tokens") or 0)
    if max_tokens <= 0:
        raise ValueError(f"{corpus}/manifest.json has no max_tokens; rebuild the corpus with `cifllm data`")

    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else as_pretrained()
    fp = tokenizer_fingerprint(tok.backend_tokenizer)
    if manifest.get("tokenizer_fingerprint") != fp:
        src = cfg.tokenizer or "the built-in CIF tokenizer"
        raise ValueError(
            f"tokenizer mismatch: {corpus} was built for tokenizer {manifest.get('tokenizer_fingerprint')}, "
            f"{src} is {fp}; rebuild the corpus with `cifllm data` or pass the matching tokenizer=..."
        )

    mpe = cfg.max_position_embeddings or max_positions_for(max_tokens)
    if mpe < max_tokens + 2:
        raise ConfigError(
            f"max_position_embeddings={mpe} is shorter than the longest CIF of the corpus ({max_tokens} tokens + BOS/EOS); "
            "set it to 0 (automatic) or larger"
        )
    tok.model_max_length = mpe
    block_size = cfg.block_size or mpe

    import torch

    cuda = torch.cuda.is_available()
    if cfg.deepspeed and not cuda:
        # the Trainer runs DeepSpeed's CPU accelerator only without use_cpu, and then refuses bf16
        if cfg.precision == "bf16":
            raise ConfigError("DeepSpeed on CPU trains in fp32 (the Trainer refuses bf16 there); set precision=auto or fp32")
        bf16 = False
    else:
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())
        if cfg.precision == "bf16" and not bf16_supported():
            _say("warning: precision=bf16 requested but this hardware has no fast bf16; it will be emulated (slow)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds = None
    if cfg.deepspeed:
        ds = load_deepspeed_config(
            cfg.deepspeed, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world_size=world_size,
            bf16=bf16, lr=cfg.lr, max_grad_norm=cfg.max_grad_norm,
        )

    run_dir = cfg.run_dir
    resume_from, incomplete = None, []
    if resume:
        saved_cfg = run_dir / "config.yaml"
        if saved_cfg.is_file():
            merge_for_resume(load_config(PretrainConfig, saved_cfg), config_to_dict(cfg))
            saved_data = run_dir / "data_manifest.json"
            if saved_data.is_file():
                old_sha = json.loads(saved_data.read_text()).get("manifest_sha256")
                if old_sha and old_sha != sha256_file(corpus / "manifest.json"):
                    raise ValueError(
                        f"cannot resume {run_dir}: the corpus at {corpus} is not the one the run started with "
                        "(manifest.json changed); the data order would differ"
                    )
        resume_from, incomplete = find_resume_checkpoint(run_dir)
    if resume_from is None and cfg.init_from:
        resume_from = _branch_checkpoint(Path(cfg.init_from), run_dir, cfg, resume)
    if resume:
        if resume_from is not None and ds is not None:
            shards = list(resume_from.glob("global_step*/*_optim_states.pt"))
            if shards and len(shards) != world_size:

                raise CheckpointError(
                    f"{resume_from} holds {len(shards)} ZeRO shard(s) but this run has {world_size} process(es); "
                    f"resume with {len(shards)} process(es)"
                )
    elif _has_run(run_dir) and resume_from is None:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another out=...")
    return PreparedRun(
        cfg=cfg, tokenizer=tok, manifest=manifest, manifest_sha256=sha256_file(corpus / "manifest.json"),
        max_tokens=max_tokens, max_position_embeddings=mpe, block_size=block_size, bf16=bf16,
        world_size=world_size, deepspeed=ds, resume_from=resume_from, incomplete=incomplete,
    )


def _branch_checkpoint(src: Path, run_dir: Path, cfg: PretrainConfig, resume: bool) -> Path:
    """Copy the finished checkpoint ``src`` of another run into ``run_dir`` (``init_from``): this run resumes from it
    (weights, optimizer, scheduler step, data position) under its own config. Returns the copy."""
    if not (src / MARKER).is_file():
        raise CheckpointError(f"init_from={src}: not a finished checkpoint (no {MARKER}; give runs/<run>/checkpoint-<step>)")
    verify_checkpoint(src)
    step = int(src.name.split("-")[-1]) if src.name.startswith("checkpoint-") and src.name.split("-")[-1].isdigit() else -1
    if step < 0:
        raise CheckpointError(f"init_from={src}: the folder name must be checkpoint-<step>")
    if step >= cfg.train.max_steps:
        raise ConfigError(f"init_from={src} is at step {step}; max_steps ({cfg.train.max_steps}) must be larger")
    if _has_run(run_dir) and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another out=...")
    dst = run_dir / src.name
    tmp = run_dir / f".{src.name}.copying"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(dst)
    _say(f"init_from: {src} copied to {dst}; this run continues from step {step} under its own schedule")
    return dst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_process_env() -> None:
    """DeepSpeed without a launcher: pretend to be rank 0 of 1 (torchrun/deepspeed/mpirun set these themselves)."""
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _cpu_deepspeed_state() -> None:
    """DeepSpeed on a machine without a GPU: accelerate picks a process-group backend only for GPUs, so it would see
    one process. Pre-create its shared state with gloo (DeepSpeed's CPU accelerator) and let the Trainer reuse it."""
    from accelerate import PartialState

    flag = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        if flag is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = flag


def _datasets(prep: PreparedRun):
    """Tokenize the corpus and build train/val datasets; returns (train, val or None, collator, lengths, stats)."""
    from transformers import default_data_collator


    cfg, tok = prep.cfg, prep.tokenizer
    t0 = time.time()
    ds = load_corpus(cfg.corpus).select_columns(["id", "text", "n_tokens", "split", "sources"])
    split = list(ds["split"])
    texts = list(ds["text"])
    n_tok = list(ds["n_tokens"])
    stats: dict[str, Any] = {"longest_cif_tokens": prep.max_tokens, "max_position_embeddings": prep.max_position_embeddings}
    out = {}
    for name in ("train", "val"):
        idx = [i for i, s in enumerate(split) if s == name]
        if name == "train" and cfg.source_weights:
            ids, sources = list(ds["id"]), list(ds["sources"])
            reps = source_repeats([ids[i] for i in idx], [sources[i] for i in idx], cfg.source_weights, seed=cfg.seed)
            stats["source_weights"] = {"weights": dict(cfg.source_weights), "train_cifs_before": len(idx), "train_rows_after": int(reps.sum())}
            idx = [i for i, r in zip(idx, reps) for _ in range(int(r))]
        if not idx:
            out[name] = None
            continue
        docs = tokenize_texts([texts[i] for i in idx], tok, expected_lengths=[n_tok[i] for i in idx])
        if cfg.data_mode == "packed":
            blocks, dropped = pack_documents(docs.lengths, prep.block_size, seed=cfg.seed)
            if name == "val" and cfg.eval_max_sequences:
                blocks = blocks[: cfg.eval_max_sequences]
            dset = PackedBlocks(docs, blocks, prep.block_size, tok.pad_token_id, tok.bos_token_id)
            stats[name] = {**dset.stats(), "n_cifs": len(docs), "dropped_longer_than_block": int(len(dropped))}
        else:
            keep = None
            if name == "val" and cfg.eval_max_sequences:
                keep = list(range(min(cfg.eval_max_sequences, len(docs))))
            dset = Documents(docs, keep)
            stats[name] = {**dset.stats(), "n_cifs": len(docs)}
        out[name] = dset
    if out["train"] is None or len(out["train"]) == 0:
        raise ValueError(f"{cfg.corpus}: no training sequences (all CIFs longer than block_size={prep.block_size}?)")
    stats["tokenize_s"] = round(time.time() - t0, 2)
    if cfg.data_mode == "packed":
        collator, lengths = default_data_collator, None
    else:
        collator, lengths = PadCollator(tok.pad_token_id, tok.bos_token_id), out["train"].lengths
    return out["train"], out["val"], collator, lengths, stats


def _training_args(prep: PreparedRun, resuming: bool, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    cfg = prep.cfg
    cpu_deepspeed = prep.deepspeed is not None and not torch.cuda.is_available()
    if cpu_deepspeed:
        _cpu_deepspeed_state()
    return TrainingArguments(
        output_dir=str(cfg.run_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.train.scheduler()[0],
        lr_scheduler_kwargs=cfg.train.scheduler()[1],
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_eps,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        bf16=prep.bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available() and not prep.deepspeed,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if (has_eval and cfg.eval_steps) else "no",
        eval_steps=cfg.eval_steps or None,
        eval_on_start=has_eval and cfg.eval_steps > 0 and not resuming,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers,
        dataloader_drop_last=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        report_to=["tensorboard"] if cfg.tensorboard else "none",
        disable_tqdm=not cfg.progress,
        deepspeed=prep.deepspeed,
        ddp_find_unused_parameters=False,
        use_cache=False,  # also what makes transformers honour the per-CIF position_ids of packed blocks
        accelerator_config={"use_configured_state": cpu_deepspeed},
    )


def start_run_folder(prep: PreparedRun, data_manifest: dict[str, Any]) -> None:
    """Create the run folder: unfinished checkpoints moved aside, the log cut back to the resume step, the resolved
    config (first start only) and the data manifest written."""
    run_dir = prep.cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in move_incomplete_aside(prep.incomplete):
        _say(f"unfinished checkpoint moved aside: {p}")
    truncate_log(run_dir / "log.jsonl", int(prep.resume_from.name.split("-")[-1]) if prep.resume_from else 0)
    if not (run_dir / "config.yaml").is_file():
        save_config(prep.cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "data_manifest.json", data_manifest)


def new_model(prep: PreparedRun) -> tuple[Any, Any, int]:
    """A freshly initialised model of the run's preset for its tokenizer and context: (model, config, parameters)."""
    cfg, tok = prep.cfg, prep.tokenizer
    model_cfg = make_config(
        cfg.preset, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=prep.max_position_embeddings,
    )
    model = build_model(model_cfg, seed=cfg.seed, attn_implementation=cfg.attn_implementation)
    return model, model_cfg, count_parameters(model)


def pretrain(cfg: PretrainConfig, resume: bool = False, prepared: PreparedRun | None = None) -> Path:
    """Train ``cfg.preset`` on ``cfg.corpus`` into ``cfg.out``; returns the ``model/`` folder.

    ``resume``: continue from the newest finished checkpoint of ``cfg.out`` (same data order, same schedule); without
    one, start from scratch. ``prepared``: the result of :func:`prepare` for this ``cfg`` (else it is called here).
    """
    import warnings

    import torch


    # torch.distributed deprecations raised inside DeepSpeed/accelerate on every collective: noise in the log
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    prep = prepared if prepared is not None else prepare(cfg, resume=resume)
    cfg = prep.cfg
    run_dir = cfg.run_dir
    if prep.deepspeed is not None:
        _single_process_env()
    _say(
        f"preset={cfg.preset} corpus={cfg.corpus} ({prep.manifest.get('n_train')} train / {prep.manifest.get('n_val')} val CIFs, "
        f"longest {prep.max_tokens} tokens -> max_position_embeddings={prep.max_position_embeddings}) "
        f"mode={cfg.data_mode}{f' block={prep.block_size}' if cfg.data_mode == 'packed' else ''} "
        f"precision={'bf16' if prep.bf16 else 'fp32'} "
        f"world_size={prep.world_size} deepspeed={cfg.deepspeed or 'off'}"
    )
    if prep.resume_from is not None:
        _say(f"resuming from {prep.resume_from}")
    elif resume:
        _say(f"--resume: no finished checkpoint in {run_dir}, starting from scratch")

    train_ds, val_ds, collator, lengths, stats = _datasets(prep)
    check_enough_data("pretrain", str(cfg.corpus), len(train_ds), len(val_ds) if val_ds is not None and cfg.eval_steps else None, cfg.batch_size, prep.world_size, unit="sequences")
    stats.update(block_size=prep.block_size, data_mode=cfg.data_mode)
    _say(f"data: {json.dumps(stats)}")
    if val_ds is None or len(val_ds) == 0:
        _say("warning: the corpus has no val split; no validation loss will be computed")
        val_ds = None
    data_manifest = {"corpus": str(cfg.corpus), "manifest_sha256": prep.manifest_sha256, "manifest": prep.manifest, "stats": stats}

    # TrainingArguments before the model: with DeepSpeed ZeRO-3 it makes from_config partition at construction
    args = _training_args(prep, resuming=prep.resume_from is not None, has_eval=val_ds is not None)
    with args.main_process_first(desc="run folder"):
        if args.process_index == 0:
            start_run_folder(prep, data_manifest)

    tok = prep.tokenizer
    model, model_cfg, n_params = new_model(prep)
    _say(f"model: {n_params / 1e6:.3f}M parameters, {model_cfg.num_hidden_layers} layers x {model_cfg.hidden_size}")

    trainer = CifTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=tok,
        callbacks=[JsonlLogCallback(run_dir / "log.jsonl"), CheckpointMarkerCallback()],
        grouped_lengths=lengths,
    )
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(prep.resume_from) if prep.resume_from else None)
    train_s = time.time() - t0
    eval_metrics: dict[str, Any] = {}
    if val_ds is not None:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        last_eval_here = evals and evals[-1].get("step") == trainer.state.global_step
        eval_metrics = evals[-1] if last_eval_here else trainer.evaluate()

    final = run_dir / "model"
    trainer.model.config.use_cache = True  # the Trainer turns the KV cache off while training; sampling wants it
    trainer.save_model(str(final))  # every rank: ZeRO-3 gathers the 16-bit weights here
    if args.process_index == 0:

        atomic_write_json(
            final / "cifllm_tokenizer.json",
            {"version": TOKENIZER_VERSION, "fingerprint": tokenizer_fingerprint(tok.backend_tokenizer), "vocab_size": len(tok)},
        )
        save_config(cfg, final / "config.yaml")
        atomic_write_json(final / "data_manifest.json", data_manifest)
        import transformers

        versions = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
        try:
            import deepspeed

            versions["deepspeed"] = deepspeed.__version__
        except ImportError:
            pass
        atomic_write_json(
            final / "cifllm_run.json",
            {
                "preset": cfg.preset,
                "n_parameters": n_params,
                "max_position_embeddings": prep.max_position_embeddings,
                "longest_cif_tokens": prep.max_tokens,
                "block_size": prep.block_size,
                "data_mode": cfg.data_mode,
                "precision": "bf16" if prep.bf16 else "fp32",
                "world_size": prep.world_size,
                "deepspeed": cfg.deepspeed,
                "global_step": trainer.state.global_step,
                "tokens_seen": int(trainer.state.num_input_tokens_seen),
                "train_loss": result.training_loss,
                "eval_loss": eval_metrics.get("eval_loss"),
                "train_seconds_this_session": round(train_s, 1),
                "resumed_from": str(prep.resume_from) if prep.resume_from else None,
                "config": config_to_dict(cfg),
                "data": stats,
                "versions": versions,
            },
        )
        _say(f"done: step {trainer.state.global_step}, eval_loss {eval_metrics.get('eval_loss')}, model in {final}")
    return final
