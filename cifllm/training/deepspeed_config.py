"""Load and sanity-check a DeepSpeed JSON before anything expensive starts.

The JSON files in ``train/deepspeed/`` use ``"auto"`` for everything the Trainer knows (batch sizes, gradient
accumulation, clipping, optimizer hyper-parameters, bf16), so they never disagree with ``PretrainConfig``. A hand-edited
file can; the checks below turn such contradictions into one clear ``DeepSpeedConfigError`` listing all problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifllm.core.errors import CifllmError
from cifllm.core.inputs import load_json
from cifllm.utils.resources import resolve_path

__all__ = ["DeepSpeedConfigError", "load_deepspeed_config", "check_deepspeed_config"]


class DeepSpeedConfigError(CifllmError, ValueError):
    """A DeepSpeed config that cannot work as written."""


def _enabled(node: Any) -> bool | str | None:
    if not isinstance(node, dict):
        return None
    return node.get("enabled")


def check_deepspeed_config(
    ds: dict[str, Any],
    *,
    batch_size: int,
    grad_accum: int,
    world_size: int,
    bf16: bool,
    lr: float,
    max_grad_norm: float,
    name: str = "deepspeed config",
) -> list[str]:
    """Problems of ``ds`` against the run's settings (empty list: fine). Values ``"auto"`` always match."""
    problems: list[str] = []
    zero = ds.get("zero_optimization", {}) or {}
    if not isinstance(zero, dict):
        return [f"zero_optimization must be a mapping, got {zero!r}"]
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage must be 0-3, got {stage!r}")

    devices = {}
    for key in ("offload_param", "offload_optimizer"):
        node = zero.get(key)
        if node is None:
            continue
        if not isinstance(node, dict):
            problems.append(f"zero_optimization.{key} must be a mapping")
            continue
        dev = node.get("device", "none")
        devices[key] = dev
        if dev not in ("none", "cpu", "nvme"):
            problems.append(f"zero_optimization.{key}.device must be none/cpu/nvme, got {dev!r}")
        if dev == "nvme" and not node.get("nvme_path"):
            problems.append(f"zero_optimization.{key}.device is nvme but no nvme_path is given")
    if devices.get("offload_param", "none") != "none" and stage != 3:
        problems.append(f"offload_param needs ZeRO stage 3 (stage is {stage}); use offload_optimizer for stage 1/2")
    if devices.get("offload_optimizer", "none") != "none" and stage == 0:
        problems.append("offload_optimizer needs ZeRO stage >= 1 (stage is 0)")
    if "cpu_offload" in zero and "offload_optimizer" in zero:
        problems.append("zero_optimization has both the legacy cpu_offload and offload_optimizer; keep offload_optimizer")
    if stage == 3:
        gather = zero.get("stage3_gather_16bit_weights_on_model_save", zero.get("gather_16bit_weights_on_model_save"))
        if gather is not True:
            problems.append(
                "ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true, otherwise the final "
                "model/ folder holds no weights that from_pretrained can load"
            )

    fp16, ds_bf16 = _enabled(ds.get("fp16")), _enabled(ds.get("bf16"))
    if fp16 is True:
        problems.append("fp16 is not supported by cifllm pretraining (no loss-scaling config); use bf16 (or 'auto')")
    if fp16 is True and ds_bf16 is True:
        problems.append("fp16.enabled and bf16.enabled are both true")
    if ds_bf16 is True and not bf16:
        problems.append("bf16.enabled is true but the run uses fp32 (precision=fp32 or no bf16 support); set it to 'auto'")
    if ds_bf16 is False and bf16:
        problems.append("bf16.enabled is false but the run uses bf16 (precision=bf16/auto); set it to 'auto'")

    def must_match(key: str, value: Any, want: Any, what: str) -> None:
        if value is not None and value != "auto" and value != want:
            problems.append(f"{key}={value!r} contradicts {what}={want!r} (use 'auto')")

    must_match("train_micro_batch_size_per_gpu", ds.get("train_micro_batch_size_per_gpu"), batch_size, "batch_size")
    must_match("gradient_accumulation_steps", ds.get("gradient_accumulation_steps"), grad_accum, "grad_accum")
    must_match(
        "train_batch_size", ds.get("train_batch_size"), batch_size * grad_accum * world_size,
        "batch_size x grad_accum x world_size",
    )
    must_match("gradient_clipping", ds.get("gradient_clipping"), max_grad_norm, "max_grad_norm")
    opt = ds.get("optimizer")
    if isinstance(opt, dict):
        must_match("optimizer.params.lr", (opt.get("params") or {}).get("lr"), lr, "lr")
    if "scheduler" in ds:
        problems.append(
            "remove the 'scheduler' block: the learning-rate schedule (cosine with warm-up) comes from the run config"
        )
    return [f"{name}: {p}" for p in problems]


def load_deepspeed_config(path: str | Path, **run: Any) -> dict[str, Any]:
    """Read a DeepSpeed JSON and check it against the run (keyword args of :func:`check_deepspeed_config`)."""
    p = resolve_path(path, folders=("configs/deepspeed",))  # train/deepspeed/<x>.json or builtin:<x>: the packaged file
    ds = load_json(p, "DeepSpeed config", DeepSpeedConfigError)  # names the file: missing, a folder, binary, bad JSON
    if not isinstance(ds, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config {p}: top level must be an object")
    problems = check_deepspeed_config(ds, name=str(p), **run)
    if problems:
        raise DeepSpeedConfigError("contradictory DeepSpeed config:\n  " + "\n  ".join(problems))
    if ds.get("train_batch_size") == "auto":
        # DeepSpeed derives it from micro batch x accumulation x world size; the Trainer's "auto" fill can run before
        # the process group exists (world size 1 on DeepSpeed's CPU accelerator) and then contradicts DeepSpeed
        del ds["train_batch_size"]
    return ds
