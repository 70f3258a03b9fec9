"""Export a trained model folder as a Hub-ready copy: safetensors weights in bf16/fp16/fp32, tokenizer, run records.

Nothing pickled is copied (``training_args.bin``, ``*.pt``, ...). The copy is written to a temporary folder next to
the destination, reloaded with plain ``transformers`` (``trust_remote_code=False``) and compared with the source on a
short CIF prompt before it is renamed into place, so a destination either is a checked export or does not exist.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cifllm.core.errors import CifllmError
from cifllm.modeling import sampling_generation_config
from cifllm.tokenization import load_tokenizer
from cifllm.utils import atomic_write_json, sha256_file

__all__ = [
    "CHECK_PROMPT",
    "DTYPES",
    "LOGIT_TOLERANCE",
    "PICKLE_SUFFIXES",
    "RECORD_FILES",
    "ExportError",
    "ExportResult",
    "export_model",
]

DTYPES = ("bfloat16", "float16", "float32")
#: Max |logit difference| allowed, as a fraction of the largest |logit| of the source (at least 1.0).
LOGIT_TOLERANCE: dict[str, float] = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}
#: File suffixes that may hold pickles: never exported, never uploaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")
#: Run records copied as they are (besides ``cifllm_*.json``).
RECORD_FILES = ("config.yaml", "data_manifest.json")
#: The prompt whose logits are compared (a canonical CIF header).
#: Keys ``AutoTokenizer.from_pretrained`` records in a loaded tokenizer that describe the loading machine, not the model.
_LOAD_TIME_KEYS = ("is_local", "local_files_only", "_commit_hash", "cache_dir", "token")
CHECK_PROMPT = "data_Na4Cl4\n_symmetry_space_group_name_H-M Fm-3m\n_symmetry_Int_Tables_number 225\n"


class ExportError(CifllmError, RuntimeError):
    """A source that cannot be exported, or an export that fails its check."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, what it weighs and how close its logits are to the source's."""

    dst: Path
    dtype: str
    src_weights_mb: float
    dst_weights_mb: float
    dst_total_mb: float
    max_abs_logit_diff: float
    tolerance: float
    top1_agreement: float
    sha256: dict[str, str]
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["dst"] = str(self.dst)
        return d


def _mb(paths: list[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 3)


def _weights(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _drop_load_time_keys(path: Path) -> None:
    """Remove keys ``from_pretrained`` adds to a loaded tokenizer's config (``is_local``, ...) before shipping it."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    drop = [k for k in _LOAD_TIME_KEYS if k in cfg]
    if drop:
        atomic_write_json(path, {k: v for k, v in cfg.items() if k not in drop})


def _logits(model: Any, input_ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=input_ids).logits.float()


def export_model(src: str | Path, dst: str | Path, dtype: str = "bfloat16", overwrite: bool = False) -> ExportResult:
    """Write a checked ``dtype`` safetensors copy of model folder ``src`` to ``dst`` (see the module docstring).

    Copies the tokenizer (saved again from the loaded cifllm tokenizer), ``cifllm_*.json``, ``config.yaml`` and
    ``data_manifest.json``, and writes ``cifllm_export.json`` (dtype, source, SHA-256 of the weights, logit check).
    Raises :class:`ExportError` on a bad source, an existing ``dst`` without ``overwrite``, or a failed check.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if not (src_p / "config.json").is_file():
        raise ExportError(f"{src_p}: not a save_pretrained model folder (no config.json)")
    if not _weights(src_p):
        raise ExportError(f"{src_p}: no *.safetensors weights (export reads safetensors only, never pickles)")
    if src_p == dst_p or src_p in dst_p.parents:
        raise ExportError(f"destination {dst_p} must not be the source folder or inside it")
    if dst_p.exists() and not overwrite:
        raise ExportError(f"{dst_p} exists; pass overwrite=True (--overwrite) to replace it")
    dst_p.parent.mkdir(parents=True, exist_ok=True)

    tok = load_tokenizer(src_p)
    torch_dtype = getattr(torch, dtype)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst_p.name}.", suffix=".tmp", dir=dst_p.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src_p), dtype=torch_dtype)
        model.config.use_cache = True
        model.generation_config = sampling_generation_config(model.config)  # plain model.generate samples, whole CIFs
        model.save_pretrained(str(tmp))  # transformers 5 writes safetensors only
        del model
        tok.save_pretrained(str(tmp))
        _drop_load_time_keys(tmp / "tokenizer_config.json")
        for f in sorted(src_p.glob("cifllm_*.json")):
            if f.name != "cifllm_export.json":
                shutil.copy2(f, tmp / f.name)
        for name in RECORD_FILES:
            if (src_p / name).is_file():
                shutil.copy2(src_p / name, tmp / name)
        bad = [p.name for p in tmp.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if bad:
            raise ExportError(f"export wrote pickle-like file(s) {bad}; refusing")

        # check: plain transformers loads it (no remote code), tokenizes alike, and gives close logits
        ref_model = AutoModelForCausalLM.from_pretrained(str(src_p), dtype=torch.float32).eval()
        new_model = AutoModelForCausalLM.from_pretrained(str(tmp), trust_remote_code=False).eval()
        new_tok = AutoTokenizer.from_pretrained(str(tmp), trust_remote_code=False)
        got_dtype = str(next(new_model.parameters()).dtype).removeprefix("torch.")
        if got_dtype != dtype:
            raise ExportError(f"exported weights load as {got_dtype}, expected {dtype}")
        ids = tok(CHECK_PROMPT)["input_ids"]
        if new_tok(CHECK_PROMPT)["input_ids"] != ids:
            raise ExportError("the exported tokenizer encodes the check prompt differently from the source tokenizer")
        input_ids = torch.tensor([ids])
        ref = _logits(ref_model, input_ids)
        new = _logits(new_model.float(), input_ids)  # the stored weights' rounding, computed in fp32
        del ref_model, new_model
        diff = float((ref - new).abs().max())
        tol = LOGIT_TOLERANCE[dtype] * max(1.0, float(ref.abs().max()))
        top1 = float((ref.argmax(-1) == new.argmax(-1)).float().mean())
        if not diff <= tol:
            raise ExportError(f"exported logits differ from the source by {diff:.3g} > tolerance {tol:.3g} ({dtype})")

        weights = _weights(tmp)
        sha = {p.name: sha256_file(p) for p in weights}
        previous = None
        if (src_p / "cifllm_export.json").is_file():
            try:
                previous = json.loads((src_p / "cifllm_export.json").read_text()).get("export")
            except (OSError, ValueError):
                previous = None
        record = {
            "export": {
                "dtype": dtype,
                "source": str(src_p),
                "source_sha256": {p.name: sha256_file(p) for p in _weights(src_p)},
                "sha256": sha,
                "check_prompt": CHECK_PROMPT,
                "max_abs_logit_diff": diff,
                "tolerance": tol,
                "top1_agreement": top1,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "previous_export": previous,
        }
        atomic_write_json(tmp / "cifllm_export.json", record)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        src_mb, dst_mb, total_mb = _mb(_weights(src_p)), _mb(weights), _mb([tmp / f for f in files])

        # move into place: old destination aside, new one in, old one removed
        old = None
        if dst_p.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst_p.name}.", suffix=".old", dir=dst_p.parent))
            os.replace(dst_p, old / "x")
        os.replace(tmp, dst_p)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(dst_p, dtype, src_mb, dst_mb, total_mb, diff, tol, top1, sha, files)
