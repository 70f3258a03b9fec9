"""Trainer callbacks: JSONL metrics log and checkpoint markers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from cifllm.training.checkpoints import write_marker

__all__ = ["JsonlLogCallback", "CheckpointMarkerCallback"]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class JsonlLogCallback(TrainerCallback):
    """Appends every Trainer log (training loss, learning rate, tokens/s, eval loss, ...) to ``log.jsonl`` as one JSON
    object per line with ``step`` (optimizer steps), ``epoch`` and ``time`` (Unix seconds). Main process only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            rec = {"step": state.global_step, "epoch": round(float(state.epoch or 0.0), 4), "time": round(time.time(), 3)}
            rec.update({k: v for k, v in logs.items() if k not in ("epoch",)})
            self.write(rec)


class CheckpointMarkerCallback(TrainerCallback):
    """After every checkpoint save, waits for all processes, then writes ``cifllm_checkpoint.json`` (main process)."""

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its shards / rng state
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_marker(ckpt, state.global_step)
        _barrier()
