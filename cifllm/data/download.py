"""Downloading registry files from their public URLs, with SHA-256 verification of the uncompressed content.

Works with any URL scheme ``urllib`` opens (``https://``, ``file://``); files are written atomically and gzipped when
the registry path ends in ``.gz`` but the source serves plain text.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
from pathlib import Path

from cifllm.data.registry import DataError, DatasetSpec
from cifllm.utils import atomic_write_bytes

__all__ = ["content_sha256", "download_file", "download_dataset", "verify_dataset"]


def content_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content, decompressed first if it is gzip."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return hashlib.sha256(raw).hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` (gzip-compressing if ``dest`` ends in .gz and the payload is not gzip);
    verify the uncompressed content against ``sha256`` when given. Raises :class:`DataError`."""
    dest = Path(dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - URLs come from the registry
            payload = resp.read()
    except Exception as exc:
        raise DataError(f"download of {url} failed: {type(exc).__name__}: {exc}") from None
    plain = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
    if sha256 and hashlib.sha256(plain).hexdigest() != sha256:
        raise DataError(f"{url}: checksum mismatch (expected {sha256}, got {hashlib.sha256(plain).hexdigest()}); nothing written")
    data = gzip.compress(plain, mtime=0) if dest.name.endswith(".gz") else plain
    atomic_write_bytes(dest, data)
    return dest


def download_dataset(spec: DatasetSpec | str, data_dir: str | Path) -> list[Path]:
    """Download every file of ``spec`` that has a URL into ``data_dir``/<registry path>."""
    if isinstance(spec, str):
        raise DataError(f"unknown dataset {spec!r}")
    out = []
    no_url = [f.path for f in spec.files if not f.url]
    if no_url:
        raise DataError(
            f"{spec.name}: file(s) {no_url} have no single public URL (they were assembled from several sources); "
            f"full upstream files: {list(spec.full_dataset_urls) or 'none listed'}"
        )
    for fs in spec.files:
        out.append(download_file(fs.url, Path(data_dir) / fs.path, fs.sha256))  # type: ignore[arg-type]
    return out


def verify_dataset(spec: DatasetSpec, data_dir: str | Path) -> list[dict[str, str]]:
    """Status per file: ok | missing | mismatch | no_sha."""
    rows = []
    for fs in spec.files:
        p = Path(data_dir) / fs.path
        if not p.exists():
            status = "missing"
        elif not fs.sha256:
            status = "no_sha"
        else:
            status = "ok" if content_sha256(p) == fs.sha256 else "mismatch"
        rows.append({"path": str(p), "status": status})
    return rows
