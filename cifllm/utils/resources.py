"""Files that ship inside the package (``cifllm/resources/``), found with :mod:`importlib.resources`.

Layout (the checkout's ``eval/tasks``, ``train/configs``, ... are links to these folders, so the checkout paths in the
README keep working and there is one copy of each file)::

    tasks/*.yaml                 discovery tasks            (checkout: eval/tasks)
    datasets/*.yaml              dataset registry           (checkout: data_prep/datasets)
    configs/train/*.yaml         pretraining / LoRA presets (checkout: train/configs)
    configs/eval/*.yaml          sample / evaluate configs  (checkout: eval/*.yaml)
    configs/data/*.yaml          corpus-build configs       (checkout: data_prep/*.yaml)
    configs/deepspeed/*.json     DeepSpeed profiles         (checkout: train/deepspeed)
    configs/accelerate/*.yaml    accelerate launch configs  (checkout: train/accelerate)
    templates/miyabi/*.pbs.tmpl  cluster job templates      (checkout: train/miyabi)
    prompts/*.txt                prompt files               (checkout: eval/*.txt)

:func:`resolve_path` turns a user's value into a file: an existing path wins; ``builtin:<name>`` names a packaged
file (``builtin:tiny``, ``builtin:configs/train/tiny.yaml``); a checkout path that does not exist here (an installed
package, run outside the checkout: ``train/configs/tiny.yaml``, ``data_prep/datasets``) falls back to its packaged
copy. This module imports nothing from cifllm (every layer may use it).
"""

from __future__ import annotations

from importlib import resources as _ilr
from pathlib import Path, PurePosixPath

__all__ = [
    "BUILTIN_PREFIX",
    "CHECKOUT_FOLDERS",
    "ResourceError",
    "list_resources",
    "resolve_path",
    "resource_path",
    "resources_root",
]

BUILTIN_PREFIX = "builtin:"

#: checkout folder -> the packaged folder(s) holding what it held (file names are the same)
CHECKOUT_FOLDERS: dict[str, tuple[str, ...]] = {
    "eval/tasks": ("tasks",),
    "data_prep/datasets": ("datasets",),
    "data_prep": ("configs/data",),
    "train/configs": ("configs/train",),
    "train/deepspeed": ("configs/deepspeed",),
    "train/accelerate": ("configs/accelerate",),
    "train/miyabi": ("templates/miyabi",),
    "eval": ("configs/eval", "prompts"),
}
_SEARCH_ORDER: tuple[str, ...] = tuple(dict.fromkeys(f for fs in CHECKOUT_FOLDERS.values() for f in fs))


class ResourceError(FileNotFoundError):
    """A packaged file that is missing (an incomplete installation) or a ``builtin:`` name that matches no file (an
    ``OSError``: ``cifllm <stage>`` reports it in one line, exit code 2)."""


def resources_root() -> Path:
    """The package's ``resources`` folder (a real folder: wheels install unzipped)."""
    root = _ilr.files("cifllm").joinpath("resources")
    if not isinstance(root, Path):
        raise ResourceError(f"cifllm is installed as a zip ({root}); install it as files (pip install cifllm)")
    return root


def resource_path(*parts: str) -> Path:
    """``resources/<parts...>``; raises :class:`ResourceError` when it is not in the installed package."""
    p = resources_root().joinpath(*parts)
    if not p.exists():
        raise ResourceError(f"packaged resource {p} is missing: the cifllm installation is incomplete (reinstall it)")
    return p


def list_resources(folder: str, pattern: str = "*") -> list[Path]:
    """The packaged files of ``folder`` matching ``pattern`` (sorted); a missing or empty folder is an error."""
    d = resource_path(folder)
    files = sorted(p for p in d.glob(pattern) if p.is_file())
    if not files:
        raise ResourceError(f"packaged folder {d} has no {pattern} files: the cifllm installation is incomplete")
    return files


def _builtin(name: str, folders: tuple[str, ...]) -> Path:
    root = resources_root()
    direct = root / name
    if name and direct.is_file() and ".." not in PurePosixPath(name).parts:
        return direct
    hits = [
        p
        for folder in (folders or _SEARCH_ORDER)
        if (root / folder).is_dir()
        for p in sorted((root / folder).iterdir())
        if p.is_file() and name in (p.name, p.stem, p.name.split(".", 1)[0])
    ]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        names = ", ".join(BUILTIN_PREFIX + str(p.relative_to(root)) for p in hits)
        raise ResourceError(f"{BUILTIN_PREFIX}{name} is ambiguous: {names}")
    known = sorted({p.stem.split(".", 1)[0] for f in (folders or _SEARCH_ORDER) if (root / f).is_dir() for p in (root / f).iterdir() if p.is_file()})
    raise ResourceError(f"no packaged file {BUILTIN_PREFIX}{name}; known: {', '.join(known)}")


def resolve_path(value: str | Path, folders: tuple[str, ...] = ()) -> Path:
    """The file a user's ``value`` names (see the module docstring); ``folders`` narrows a ``builtin:`` search.

    Returns ``Path(value)`` unchanged when nothing matches, so the caller reports the missing file in its own words.
    """
    s = str(value)
    if s.startswith(BUILTIN_PREFIX):
        return _builtin(s[len(BUILTIN_PREFIX) :], folders)
    p = Path(s).expanduser()
    if p.exists() or p.is_absolute():
        return p
    rel = PurePosixPath(p.as_posix())
    if str(rel) in CHECKOUT_FOLDERS:  # a whole checkout folder (eval/tasks, data_prep/datasets, ...)
        cand = resources_root() / CHECKOUT_FOLDERS[str(rel)][0]
        if cand.is_dir():
            return cand
    for packaged in CHECKOUT_FOLDERS.get(str(rel.parent), ()):
        cand = resources_root() / packaged / rel.name
        if cand.is_file():
            return cand
    return p
