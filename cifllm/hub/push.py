"""Upload a model folder (safetensors weights, tokenizer, card, run records) to the Hugging Face Hub.

Only top-level files matching :data:`UPLOAD_PATTERNS` are uploaded, passed to ``upload_folder`` as an explicit
allow-list, so pickles (``training_args.bin``, ``*.pt``) and checkpoints never leave the machine; a file on the list
whose bytes look like a pickle or a ``torch.save`` archive stops the upload.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from cifllm.core.errors import CifllmError
from cifllm.hub.export import PICKLE_SUFFIXES

__all__ = ["REPO_ID_RE", "REQUIRED_FILES", "UPLOAD_PATTERNS", "PushError", "PushResult", "plan_upload", "push_to_hub"]

REPO_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
#: Files a model repository must have (``model.safetensors`` or a sharded index).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")
#: Top-level files that are uploaded.
UPLOAD_PATTERNS = ("*.safetensors", "*.json", "*.md", "*.txt", "*.yaml")
#: First bytes of pickles (protocol 2-5) and zip archives (``torch.save``).
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class PushError(CifllmError, ValueError):
    """A folder or repository id that must not be uploaded."""


@dataclass(frozen=True)
class PushResult:
    """What was (or, with ``dry_run``, would be) uploaded, and where."""

    repo_id: str
    files: list[str]
    skipped: list[str]
    total_mb: float
    dry_run: bool
    commit_url: str | None = None
    repo_url: str | None = None
    private: bool = False
    revision: str | None = None
    warnings: list[str] = field(default_factory=list)


def _looks_pickled(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as fh:
        head = fh.read(4)
    return any(head.startswith(m) for m in _PICKLE_MAGIC)


def plan_upload(model_dir: str | Path) -> tuple[list[str], list[str]]:
    """(files to upload, files left out) of ``model_dir``, after checking it is complete and pickle-free.

    Raises :class:`PushError` when a required file is missing or a file to upload looks like a pickle.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise PushError(f"{folder}: not a folder")
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    files, skipped = [], []
    for p in entries:
        ok = p.is_file() and not p.is_symlink() and not p.name.startswith(".")
        if ok and any(fnmatch.fnmatch(p.name, pat) for pat in UPLOAD_PATTERNS) and p.suffix.lower() not in PICKLE_SUFFIXES:
            files.append(p.name)
        else:
            skipped.append(p.name + ("/" if p.is_dir() else ""))
    names = set(files)
    sharded = "model.safetensors.index.json" in names
    missing = [f for f in REQUIRED_FILES if f not in names and not (f == "model.safetensors" and sharded)]
    if missing:
        hint = " (write it with `cifllm card`)" if "README.md" in missing else ""
        raise PushError(f"{folder}: missing {', '.join(missing)}{hint}; export the model with `cifllm export` first")
    pickled = [f for f in files if _looks_pickled(folder / f)]
    if pickled:
        raise PushError(f"{folder}: {', '.join(pickled)} look(s) like pickled data; refusing to upload")
    return files, skipped


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Check ``model_dir`` (:func:`plan_upload`) and upload it to model repository ``repo_id`` (created if needed).

    ``dry_run``: return the file list without contacting the Hub. ``token``: a Hub token (default: the logged-in
    one / ``HF_TOKEN``). Returns the commit URL in :attr:`PushResult.commit_url`.
    """
    if not REPO_ID_RE.match(repo_id or "") or ".." in repo_id:
        raise PushError(f"bad repository id {repo_id!r}: expected org/name (letters, digits, '-', '_', '.')")
    folder = Path(model_dir)
    files, skipped = plan_upload(folder)
    total = round(sum((folder / f).stat().st_size for f in files) / 1e6, 3)
    warnings = [f"not uploaded: {s}" for s in skipped]
    result = PushResult(repo_id, files, skipped, total, dry_run, private=private, revision=revision, warnings=warnings)
    if dry_run:
        return result
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload {folder.name} with cifllm push",
        allow_patterns=[glob.escape(f) for f in files],  # exactly the checked files
        ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES],
    )
    return PushResult(
        repo_id, files, skipped, total, False,
        commit_url=getattr(info, "commit_url", None), repo_url=str(repo_url), private=private, revision=revision, warnings=warnings,
    )
