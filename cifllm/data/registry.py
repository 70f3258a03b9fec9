"""The dataset registry: one YAML file per dataset in the package (``cifllm/resources/datasets/``, linked from the
checkout's ``data_prep/datasets/``).

Each entry names its files (relative to the data directory, with the SHA-256 of the *uncompressed* content and the
public URL serving that content where one exists), the CIF and id columns, the property columns with units, the
licence and citation. ``kind: table`` entries carry no structures (e.g. MP creation dates joined onto MP ids).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.core.inputs import load_yaml
from cifllm.utils.resources import resolve_path, resources_root

__all__ = ["DataError", "DatasetSpec", "FileSpec", "load_registry", "resolve_data_dir", "DEFAULT_REGISTRY"]

#: the packaged registry folder (``cifllm/resources/datasets``)
DEFAULT_REGISTRY = resources_root() / "datasets"
FORMATS = ("csv", "parquet", "cif_dir", "structure_files")


class DataError(ValueError):
    """A problem with the data or its description that stops preparation before any long work."""


@dataclass(frozen=True)
class FileSpec:
    path: str
    split: str = "all"
    sha256: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    kind: str
    format: str
    files: tuple[FileSpec, ...]
    licence: str
    citation: str = ""
    description: str = ""
    cif_column: str | None = "cif"
    id_column: str | None = None
    year_column: str | None = None
    join_on: str | None = None
    join_key: str | None = None
    join_columns: dict[str, str] = field(default_factory=dict)
    properties: dict[str, dict[str, str]] = field(default_factory=dict)
    extra_columns: dict[str, str] = field(default_factory=dict)
    full_dataset_urls: tuple[str, ...] = ()
    priority: int = 100
    source_file: str = ""

    def property_units(self) -> dict[str, str]:
        return {k: v.get("unit", "") for k, v in self.properties.items()}


_KEYS = {f for f in DatasetSpec.__dataclass_fields__ if f != "source_file"}


def _spec_from_yaml(path: Path) -> DatasetSpec:
    raw: dict[str, Any] = load_yaml(path, "registry entry", DataError)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a registry entry must be a mapping")
    unknown = set(raw) - _KEYS
    if unknown:
        raise DataError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {sorted(_KEYS)}")
    for req in ("name", "title", "kind", "format", "files", "licence"):
        if not raw.get(req):
            raise DataError(f"{path}: missing required key {req!r}")
    if raw["kind"] not in ("structures", "table"):
        raise DataError(f"{path}: kind must be 'structures' or 'table', got {raw['kind']!r}")
    if raw["format"] not in FORMATS:
        raise DataError(f"{path}: format must be one of {FORMATS}, got {raw['format']!r}")
    files = []
    for i, f in enumerate(raw["files"]):
        if not isinstance(f, dict) or "path" not in f:
            raise DataError(f"{path}: files[{i}] needs a 'path'")
        files.append(FileSpec(path=f["path"], split=f.get("split", "all"), sha256=f.get("sha256"), url=f.get("url")))
    for name, prop in (raw.get("properties") or {}).items():
        if not isinstance(prop, dict) or "column" not in prop:
            raise DataError(f"{path}: property {name!r} needs a 'column' (and a 'unit')")
    raw["files"] = tuple(files)
    raw["full_dataset_urls"] = tuple(raw.get("full_dataset_urls") or ())
    for k in ("properties", "extra_columns", "join_columns"):
        raw[k] = raw.get(k) or {}
    return DatasetSpec(**raw, source_file=str(path))


def load_registry(registry_dir: str | Path = DEFAULT_REGISTRY) -> dict[str, DatasetSpec]:
    """All registry entries by name, ordered by ``priority`` then name (this order ranks sources when duplicates merge:
    the first source's record becomes the representative). The checkout's ``data_prep/datasets`` resolves to the
    packaged registry where the checkout is absent."""
    d = resolve_path(registry_dir)
    if d.is_file():
        raise DataError(f"registry folder {d}: is a file, expected a folder of <dataset>.yaml entries")
    if not d.is_dir():
        raise DataError(f"registry folder {d} does not exist")
    specs: dict[str, DatasetSpec] = {}
    for p in sorted(d.glob("*.yaml")):
        spec = _spec_from_yaml(p)
        if spec.name in specs:
            raise DataError(f"{p}: dataset name {spec.name!r} already defined in {specs[spec.name].source_file}")
        specs[spec.name] = spec
    if not specs:
        raise DataError(f"registry folder {d} has no *.yaml entries")
    return dict(sorted(specs.items(), key=lambda kv: (kv[1].priority, kv[0])))


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else ``$CIFLLM_DATA_DIR``; raises :class:`DataError` naming the variable if it does not exist."""
    raw = data_dir or os.environ.get("CIFLLM_DATA_DIR")
    if not raw:
        raise DataError("no data directory: pass data_dir=... or set CIFLLM_DATA_DIR (e.g. ../shared/data)")
    p = Path(raw).expanduser()
    if not p.is_dir():
        src = "data_dir" if data_dir else "CIFLLM_DATA_DIR"
        raise DataError(f"{src}={raw} is not a directory")
    return p.resolve()
