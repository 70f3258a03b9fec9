"""Atomic file writes (temp file in the same directory + ``os.replace``), fsynced JSON-lines appends, content hashes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere set and
    restored at once (``os.umask`` has no read-only form)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one. An error names
    ``path`` (``IsADirectoryError`` for a folder), never the temporary file.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 minus the umask: 0644 under the usual
    022), not the 0600 of the temporary file it is written through (``tempfile.mkstemp``)."""
    p = Path(path)
    if p.is_dir():  # checked first: os.replace would report the temporary file, not the path the user gave
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file path", str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, p)
        except OSError as exc:  # name the destination, never the temporary file
            raise type(exc)(exc.errno, exc.strerror, str(p)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | Path, row: Any) -> None:
    """Append ``row`` as one JSON line and fsync, so a killed writer loses at most the line it was writing (readers
    skip a cut last line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
