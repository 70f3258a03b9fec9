"""LoRA adapters and the base model they belong to: the record lives in the base layer
(:mod:`cifllm.core.records`, shared by sampling, evaluation, training and the benchmark); these are its names here,
with the adapter's Hub card (``README.md``, built from the record with ``huggingface_hub``'s ``ModelCard``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifllm.bench.tasks import load_task
from cifllm.core.models import DEFAULT_MODEL_DIR, is_hub_id
from cifllm.core.records import (
    ADAPTER_RECORD,
    AdapterError,
    ConditionCheck,
    check_adapter_base,
    check_conditions,
    model_fingerprint,
    read_adapter_record,
)
from cifllm.utils import atomic_write_text

__all__ = [
    "ADAPTER_RECORD",
    "AdapterError",
    "ConditionCheck",
    "base_model_name",
    "check_adapter_base",
    "check_conditions",
    "model_fingerprint",
    "read_adapter_record",
    "render_adapter_card",
    "write_adapter_card",
]

ADAPTER_TAGS = ["cifllm", "lora", "crystal-structure", "cif", "materials-science"]


def base_model_name(given: str | None, resolved: str | Path) -> str:
    """How an adapter names its base model without this machine's paths: ``default`` for the model shipped with
    cifllm, a Hub id as given, a folder relative to the working directory - or its last two parts when it lies
    outside it (a path of the training machine means nothing elsewhere; the record's weights fingerprint identifies
    the base)."""
    p = Path(resolved)
    try:
        if p.resolve() == DEFAULT_MODEL_DIR.resolve():
            return "default"
    except OSError:
        pass
    if given and str(given) != "default" and is_hub_id(str(given)) and not Path(str(given)).exists():
        return str(given)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:  # outside the working directory: its last two parts (runs/<run>/model -> <run>/model)
        return str(Path(*p.parts[-2:]))


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "not recorded"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def render_adapter_card(record: Mapping[str, Any], base_name: str, task_description: str = "") -> str:
    """The adapter's ``README.md``: base model (``base_name``, see :func:`base_model_name`; a Hub id also goes into
    the ``base_model`` metadata), task, training configuration and the record's metrics. Every number is read from
    ``record`` (the :data:`ADAPTER_RECORD`); a missing one reads "not recorded"."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = record.get("config") or {}
    train = cfg.get("train") or {}
    lora = record.get("lora") or {}
    method = record.get("method", "lora")
    task = record.get("task") or "not recorded"
    base_hub = base_name if is_hub_id(base_name) and not Path(base_name).exists() else None
    data = ModelCardData(
        base_model=base_hub, library_name="peft", pipeline_tag="text-generation",
        tags=[*ADAPTER_TAGS, f"cifllm-task:{task}"],
    )
    base_text = "the cifllm default model (shipped in the `cifllm` package)" if base_name == "default" else f"`{base_name}`"
    cond = record.get("conditioning") or {}
    cond_rows = [
        f"| `{name}` | `{c.get('tag', '')}` | {c.get('unit', '') or '-'} | {_fmt(c.get('n'))} | {_fmt(c.get('min'), 3)} | "
        f"{_fmt(c.get('p50'), 3)} | {_fmt(c.get('max'), 3)} |"
        for name, c in cond.items() if isinstance(c, Mapping)
    ]
    rows = [
        ("Base model", f"{base_text}, weights fingerprint `{record.get('base_fingerprint', 'not recorded')}` (checked when the adapter is loaded)"),
        ("Task", f"`{task}`" + (f": {task_description}" if task_description else "")),
        ("Method", f"{method}, rank {_fmt(lora.get('r'))}, alpha {_fmt(lora.get('alpha'))}, dropout {lora.get('dropout', 'not recorded')}, "
                   f"modules {', '.join(lora.get('target_modules') or []) or 'not recorded'}"),
        ("Trainable parameters", f"{_fmt(record.get('trainable_parameters'))} of {_fmt(record.get('base_parameters'))} in the base"),
        ("Training", f"{_fmt(train.get('max_steps'))} steps, batch {_fmt(train.get('batch_size'))} x {_fmt(train.get('grad_accum'))}, "
                     f"lr {train.get('lr', 'not recorded')} ({train.get('lr_schedule', 'not recorded')}, {_fmt(train.get('warmup_steps'))} warmup), "
                     f"{record.get('precision', 'not recorded')}, seed {_fmt(train.get('seed'))}"),
        ("Training rows", f"{_fmt(record.get('train_rows'))} ({_fmt(record.get('dropped_too_long'))} dropped as too long)"),
        ("Steps / tokens seen", f"{_fmt(record.get('global_step'))} / {_fmt(record.get('tokens_seen'))}"),
        ("Validation loss, base -> adapted", f"{_fmt(record.get('eval_loss_base'))} -> {_fmt(record.get('eval_loss'))} (nats/token)"),
        ("Final train loss", _fmt(record.get("train_loss"))),
        ("Wall time", f"{_fmt(record.get('train_seconds_this_session'), 1)} s"),
        ("Adapter size", f"{_fmt(record.get('adapter_mb'), 2)} MB"),
        ("Tokenizer", f"{(record.get('tokenizer') or {}).get('version', 'not recorded')} (fingerprint `{(record.get('tokenizer') or {}).get('fingerprint', 'not recorded')}`)"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items()) or "not recorded"),
    ]
    model_arg = base_name if base_name != "default" else "default"
    lines = [
        f"# cifllm LoRA adapter: `{task}`",
        "",
        f"A {'LoRA' if method == 'lora' else method} adapter on {base_text} for the cifllm discovery task `{task}` (`cifllm finetune`); it writes "
        "crystal structures as canonical CIF text" + (", conditioned on the property lines below." if cond else "."),
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    if cond_rows:
        lines += [
            "Conditioning: a property line before the CIF (dropped in "
            f"{_fmt(record.get('cond_dropout'), 2)} of the training rows, so the adapter also samples unconditioned).",
            "",
            "| property | tag | unit | training rows | min | median | max |",
            "|---|---|---|---:|---:|---:|---:|",
            *cond_rows,
            "",
        ]
    lines += [
        "## How to use",
        "",
        "```bash",
        f"cifllm sample model={model_arg} lora=<this folder> num_samples=100 out=runs/samples",
        "cifllm evaluate samples=runs/samples",
        "```",
        "",
        "The base model must be the one named above: cifllm checks the weights fingerprint and refuses another base.",
        "Licence: that of the base model and of the task's training data (see the base model's card).",
        "",
        f"Generated by cifllm from `{ADAPTER_RECORD}` in this folder.",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_adapter_card(adapter_dir: str | Path, base_name: str | None = None, task_description: str | None = None) -> Path:
    """Write ``<adapter_dir>/README.md`` from its :data:`ADAPTER_RECORD` (replacing peft's template); ``base_name``
    defaults to the record's base made portable (:func:`base_model_name`), ``task_description`` to the packaged
    task's description (none for a task cifllm does not ship)."""
    d = Path(adapter_dir)
    record = read_adapter_record(d)
    if task_description is None:
        try:
            task_description = load_task(str(record.get("task") or "")).description
        except Exception:  # own data or a task file elsewhere: the card names the task only
            task_description = ""
    if base_name is None:
        base = str(record.get("base_model") or "")
        base_name = base_model_name(base, base) if base else "not recorded"
    out = d / "README.md"
    atomic_write_text(out, render_adapter_card(record, base_name, task_description))
    return out
