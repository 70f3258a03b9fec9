"""The file names of cifllm's folders, spelled once, and the adapter record.

Every stage writes and reads its folders through these names, so a renamed file is renamed everywhere:

* a **run folder** (pretraining, fine-tuning, sampling, evaluation, sweep, demo): :class:`RunFiles`;
* a **corpus folder** (``cifllm data``): :data:`MANIFEST_FILE` + the ``dataset/`` folder (:data:`CORPUS_DATASET_DIR`);
* a **split folder** (``cifllm split``, one per task): :class:`SplitFiles`;
* an **adapter folder** (``cifllm finetune``): peft's :data:`ADAPTER_CONFIG` + weights and cifllm's
  :data:`ADAPTER_RECORD` (:func:`read_adapter_record`, :func:`check_adapter_base`, :func:`check_conditions`).

The adapter fingerprint (:func:`model_fingerprint`) hashes every weight tensor *cast to bfloat16*, so a float32
training output and its bf16 export (``cifllm export``) have the same fingerprint, and an adapter trained on one loads
on the other; any other model (different weights, shapes or names) is refused.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.core.errors import CifllmError
from cifllm.core.inputs import load_json

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_DIR",
    "ADAPTER_RECORD",
    "BENCH_SUMMARY",
    "CIFS_DIR",
    "CONFIG_FILE",
    "CORPUS_DATASET_DIR",
    "EVAL_DIR",
    "LOG_FILE",
    "MANIFEST_FILE",
    "MERGED_DIR",
    "METRICS_FILE",
    "MODEL_DIR",
    "PROMPTS_FILE",
    "REPORT_FILE",
    "SAMPLES_FILE",
    "SCALING_REPORT",
    "SPLIT_NAMES",
    "SWEEP_ROWS",
    "AdapterError",
    "ConditionCheck",
    "RunFiles",
    "SplitFiles",
    "check_adapter_base",
    "check_conditions",
    "model_fingerprint",
    "read_adapter_record",
]

#: resolved config of a run (every run folder)
CONFIG_FILE = "config.yaml"
#: provenance of a corpus or split folder (sources, counts, hashes)
MANIFEST_FILE = "manifest.json"
#: measured numbers of an evaluation, benchmark or demo
METRICS_FILE = "metrics.json"
#: one JSON line per generated sample (``cifllm sample``)
SAMPLES_FILE = "samples.jsonl"
#: the prompts a sampling run used
PROMPTS_FILE = "prompts.jsonl"
#: human-readable report of a corpus build, evaluation or demo
REPORT_FILE = "report.md"
#: train/eval losses, one JSON line per log step
LOG_FILE = "log.jsonl"
#: the trained model (a ``save_pretrained`` folder) inside a run folder
MODEL_DIR = "model"
#: the LoRA adapter inside a fine-tuning run folder
ADAPTER_DIR = "adapter"
#: the adapter merged into its base weights (``merge=true``)
MERGED_DIR = "merged"
#: one CIF file per parsed sample
CIFS_DIR = "cifs"
#: evaluation output folder inside a sampling run folder
EVAL_DIR = "eval"
#: the Hugging Face ``datasets`` folder inside a corpus folder
CORPUS_DATASET_DIR = "dataset"
#: cifllm's record beside peft's files in an adapter folder: base fingerprint, task, conditioning, training figures
ADAPTER_RECORD = "cifllm_adapter.json"
#: peft's adapter config (its presence makes a folder an adapter folder)
ADAPTER_CONFIG = "adapter_config.json"
#: one JSON line per finished (size, repeat) of a scaling sweep
SWEEP_ROWS = "runs.jsonl"
#: the benchmark summary table over tasks
BENCH_SUMMARY = "BENCH.md"
#: the scaling-law report
SCALING_REPORT = "REPORT.md"
#: the splits of a task, in order
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder ``root`` (which of them exist depends on the stage)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    config = property(lambda self: self.root / CONFIG_FILE)
    log = property(lambda self: self.root / LOG_FILE)
    model = property(lambda self: self.root / MODEL_DIR)
    adapter = property(lambda self: self.root / ADAPTER_DIR)
    merged = property(lambda self: self.root / MERGED_DIR)
    metrics = property(lambda self: self.root / METRICS_FILE)
    samples = property(lambda self: self.root / SAMPLES_FILE)
    prompts = property(lambda self: self.root / PROMPTS_FILE)
    cifs = property(lambda self: self.root / CIFS_DIR)
    report = property(lambda self: self.root / REPORT_FILE)
    manifest = property(lambda self: self.root / MANIFEST_FILE)
    eval = property(lambda self: self.root / EVAL_DIR)


@dataclass(frozen=True)
class SplitFiles:
    """The files of one task's split folder (``<splits>/<task>``): ``<split>.jsonl`` per split, the manifest and the
    ids every pretraining corpus of the task must exclude."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    manifest = property(lambda self: self.root / MANIFEST_FILE)
    pretrain_exclude = property(lambda self: self.root / "pretrain_exclude.txt")

    def split(self, name: str) -> Path:
        """``<root>/<name>.jsonl`` for ``name`` in :data:`SPLIT_NAMES`."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; splits: {', '.join(SPLIT_NAMES)}")
        return self.root / f"{name}.jsonl"


# ------------------------------------------------------------------------------------------------- adapter record


class AdapterError(CifllmError, ValueError):
    """An adapter that does not belong to the model, or a property it was not trained on."""


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 (16 hex) over the sorted tensor names, shapes and bf16-cast values of a model folder's safetensors."""
    import torch  # heavy: only this function needs it (importing cifllm.core stays cheap)
    from safetensors import safe_open

    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("adapter_")]
    if not files:
        raise AdapterError(f"{d}: no *.safetensors weights to fingerprint")
    h = hashlib.sha256()
    tensors: dict[str, tuple[Path, str]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensors[k] = (f, k)
    handles: dict[Path, Any] = {}
    try:
        for name in sorted(tensors):
            f, k = tensors[name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt").__enter__()
            t = handles[f].get_tensor(k)
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    finally:
        for fh in handles.values():
            fh.__exit__(None, None, None)
    return h.hexdigest()[:16]


def read_adapter_record(adapter_dir: str | Path) -> dict[str, Any]:
    """The :data:`ADAPTER_RECORD` of an adapter folder (:class:`AdapterError` when it is not one)."""
    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{d}: not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    rec = d / ADAPTER_RECORD
    if not rec.is_file():
        raise AdapterError(f"{d}: no {ADAPTER_RECORD}; cannot tell which base model this adapter belongs to")
    loaded = load_json(rec, "adapter record", AdapterError)
    if not isinstance(loaded, dict):
        raise AdapterError(f"adapter record {rec}: expected a JSON object")
    return loaded


def check_adapter_base(adapter_dir: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """The adapter's record if it was trained on ``model_dir``'s weights; else :class:`AdapterError`."""
    rec = read_adapter_record(adapter_dir)
    want = rec.get("base_fingerprint")
    have = model_fingerprint(model_dir)
    if want != have:
        raise AdapterError(
            f"adapter {adapter_dir} was trained on base model {rec.get('base_model')!r} (fingerprint {want}); "
            f"{model_dir} has fingerprint {have}: load it on its own base model"
        )
    return rec


@dataclass
class ConditionCheck:
    """Result of :func:`check_conditions`: ``flags`` maps property -> note for values outside the training range."""

    flags: dict[str, str] = field(default_factory=dict)

    @property
    def extrapolating(self) -> bool:
        return bool(self.flags)


def check_conditions(record: dict[str, Any], conditions: dict[str, float]) -> ConditionCheck:
    """Refuse properties the adapter was not trained on; flag values outside the training range (allowed: asking
    beyond the range is the point of output extrapolation, but it is reported with every sample)."""
    trained = record.get("conditioning") or {}
    unknown = sorted(set(conditions) - set(trained))
    if unknown:
        raise AdapterError(
            f"the adapter was not trained on propert{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"it knows {sorted(trained) or 'none (unconditioned adapter)'}"
        )
    out = ConditionCheck()
    for k, v in conditions.items():
        st = trained[k]
        lo, hi = st.get("min"), st.get("max")
        if lo is None or hi is None or not math.isfinite(float(v)):
            continue
        span = max(hi - lo, 1e-12)
        if v > hi:
            out.flags[k] = f"{k}={v:g} is above the training maximum {hi:g} {st.get('unit', '')} (+{(v - hi) / span:.2f} x range)".strip()
        elif v < lo:
            out.flags[k] = f"{k}={v:g} is below the training minimum {lo:g} {st.get('unit', '')} (-{(lo - v) / span:.2f} x range)".strip()
    return out
