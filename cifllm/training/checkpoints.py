"""Checkpoint integrity and resume selection.

The Trainer writes ``<run>/checkpoint-<step>/``; once every process has finished writing, :func:`write_marker` adds
``cifllm_checkpoint.json`` listing every file with its size and SHA-256 (for files over ``HASH_LIMIT`` bytes, the
SHA-256 of the first and last MiB). So:

* a checkpoint without a marker was being written when the run died: it is moved aside (``incomplete-checkpoint-N``)
  and the previous one is used; a killed run therefore loses at most one checkpoint interval;
* a checkpoint whose files differ from its marker is corrupt: :class:`CheckpointError`, before any long work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from cifllm.core.errors import CifllmError
from cifllm.utils import atomic_write_json, atomic_write_text

__all__ = [
    "MARKER",
    "CheckpointError",
    "find_resume_checkpoint",
    "list_checkpoints",
    "move_incomplete_aside",
    "truncate_log",
    "verify_checkpoint",
    "write_marker",
]

MARKER = "cifllm_checkpoint.json"
HASH_LIMIT = 256 << 20  # bytes: files up to this size are hashed in full
_EDGE = 1 << 20  # bytes hashed at each end of larger files
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(CifllmError, RuntimeError):
    """A checkpoint that cannot be resumed from (corrupt, or not a checkpoint of this run)."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= HASH_LIMIT:
            while block := fh.read(1 << 20):
                h.update(block)
        else:
            h.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER and not p.is_symlink())


def write_marker(ckpt: str | Path, step: int) -> Path:
    """Record every file of a finished checkpoint (size in bytes, SHA-256) in ``cifllm_checkpoint.json``."""
    ckpt = Path(ckpt)
    files = {str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in _files(ckpt)}
    atomic_write_json(ckpt / MARKER, {"step": int(step), "files": files})
    return ckpt / MARKER


def verify_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """Check a checkpoint against its marker; raises :class:`CheckpointError` naming the first bad file."""
    ckpt = Path(ckpt)
    hint = f"move {ckpt} aside to resume from the checkpoint before it"
    try:
        marker = json.loads((ckpt / MARKER).read_text())
        files = marker["files"]
        step = int(marker["step"])
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: no {MARKER} (the checkpoint was not finished); {hint}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt}/{MARKER} is unreadable ({exc}); {hint}") from None
    for rel, meta in files.items():
        p = ckpt / rel
        if not p.is_file():
            raise CheckpointError(f"{ckpt}: file {rel} is missing; {hint}")
        size = p.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{ckpt}: {rel} has {size} bytes, expected {meta['bytes']} (truncated?); {hint}")
        if _digest(p) != meta["sha256"]:
            raise CheckpointError(f"{ckpt}: {rel} does not match its recorded SHA-256 (corrupt); {hint}")
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(f"{ckpt}: trainer_state.json missing or unreadable ({exc}); {hint}") from None
    if int(state.get("global_step", -1)) != step:
        raise CheckpointError(f"{ckpt}: trainer_state.json says step {state.get('global_step')}, marker says {step}")
    return marker


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder, newest first."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return sorted(out, reverse=True)


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """The newest finished checkpoint (verified) and the unfinished newer ones (to move aside).

    Read-only. Raises :class:`CheckpointError` if the newest finished checkpoint is corrupt.
    """
    incomplete: list[Path] = []
    for _step, path in list_checkpoints(run_dir):
        if not (path / MARKER).is_file():
            incomplete.append(path)
            continue
        verify_checkpoint(path)
        return path, incomplete
    return None, incomplete


def move_incomplete_aside(paths: list[Path]) -> list[Path]:
    """Rename unfinished checkpoints to ``incomplete-checkpoint-N[.k]`` (the Trainer would otherwise write into them)."""
    moved = []
    for p in paths:
        target = p.with_name("incomplete-" + p.name)
        k = 1
        while target.exists():
            target = p.with_name(f"incomplete-{p.name}.{k}")
            k += 1
        os.replace(p, target)
        moved.append(target)
    return moved


def truncate_log(log_path: str | Path, step: int) -> int:
    """Drop JSONL records logged after ``step`` (they will be logged again after the resume); returns lines kept."""
    p = Path(log_path)
    if not p.is_file():
        return 0
    kept = []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if int(rec.get("step", 0)) <= step:
            kept.append(line)
    atomic_write_text(p, "".join(k + "\n" for k in kept))
    return len(kept)
