"""Find a model folder (base layer: sampling, training, the demo and the hub all resolve models here): the bundled default model, a local ``save_pretrained`` folder, or a Hugging Face Hub id.

Only safetensors weights and text records are downloaded from the Hub (:data:`DOWNLOAD_PATTERNS`): never pickles.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cifllm.core.errors import CifllmError
from cifllm.utils.resources import resources_root

__all__ = ["DEFAULT_MODEL_DIR", "DOWNLOAD_PATTERNS", "HUB_ID_RE", "MODEL_ENV", "ModelNotFoundError", "is_hub_id", "resolve_model"]

#: Where the trained default model ships inside the package (may be absent in a source checkout).
DEFAULT_MODEL_DIR = resources_root() / "default-model"
#: Environment variable naming the model used for ``None`` / ``"default"`` (a folder or a Hub id).
MODEL_ENV = "CIFLLM_MODEL"
#: Files fetched from a Hub repository: weights as safetensors, configs, tokenizer, card and records.
DOWNLOAD_PATTERNS = ["*.safetensors", "*.json", "*.md", "*.txt", "*.yaml"]
#: ``org/name`` as the Hub spells repository ids.
HUB_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelNotFoundError(CifllmError, FileNotFoundError):
    """No usable model folder for the given name (with a hint on how to get one)."""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repository id (``org/name``, no ``..``, not starting with ``.``)."""
    return bool(HUB_ID_RE.match(name)) and ".." not in name and not name.startswith(".") and not name.endswith(".")


def _check_folder(p: Path, what: str) -> Path:
    if not p.is_dir():
        raise ModelNotFoundError(f"{what} {p} is not a folder")
    if not (p / "config.json").is_file():
        raise ModelNotFoundError(f"{what} {p} has no config.json: not a save_pretrained model folder")
    return p


def _download(repo_id: str, revision: str | None, token: str | None) -> Path:
    from huggingface_hub import snapshot_download  # network client: only a Hub id needs it

    try:
        local = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=list(DOWNLOAD_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: one clear line for the user
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local folder, and downloading it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return _check_folder(Path(local), f"Hub model {repo_id} (downloaded to)")


def resolve_model(name_or_path: str | Path | None = None, revision: str | None = None, token: str | None = None) -> Path:
    """The model folder for ``name_or_path``.

    * ``None`` or ``"default"``: ``$CIFLLM_MODEL`` if set (a folder or a Hub id), else :data:`DEFAULT_MODEL_DIR`;
    * an existing local folder: it (it must contain ``config.json``);
    * an ``org/name`` Hub id: downloaded with ``snapshot_download`` (safetensors and text files only; cached).

    Raises :class:`ModelNotFoundError` with a hint when none of these gives a model folder.
    """
    if name_or_path is None or str(name_or_path) == "default":
        env = os.environ.get(MODEL_ENV, "").strip()
        if env and env != "default":
            return resolve_model(env, revision=revision, token=token)
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ModelNotFoundError(
                f"no default model installed at {DEFAULT_MODEL_DIR}; pass --model with a model folder or a Hugging Face "
                f"Hub id (org/name), set {MODEL_ENV}, or train one (`cifllm pretrain`) and export it "
                f"(`cifllm export RUN/model {DEFAULT_MODEL_DIR}`)"
            )
        return DEFAULT_MODEL_DIR
    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.exists():
        return _check_folder(p, "model folder")
    if is_hub_id(name):
        return _download(name, revision, token)
    raise ModelNotFoundError(f"model {name!r}: no such folder, and not a Hugging Face Hub id (org/name)")
