"""Your own structures for fine-tuning: a folder of ``.cif`` files, a CSV/Parquet file with a CIF column (and numeric
property columns), or a corpus folder that ``cifllm data`` built.

Files go through the same pipeline as the pretraining corpus (:func:`cifllm.data.prep.prepare_corpus`: the filters,
canonical cif-v2 text, deduplication, every dropped record listed with its reason in ``rejects.jsonl``); the train /
validation split is by reduced formula (``val_fraction`` of the formulas, hashed, so all polymorphs of a formula land
on one side). A one-entry registry describing the input is written next to the corpus, so the run can be repeated
with ``cifllm data registry=<run>/own_data/registry data_dir=... datasets=own``.

Folder of a fine-tuning run on own data::

    <out>/own_data/registry/own.yaml    the registry entry made from the config (format, CIF column, property column)
    <out>/own_data/corpus/              the corpus (manifest.json, report.md, rejects.jsonl, dataset/)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifllm.data.corpus import load_corpus
from cifllm.data.prep import PrepConfig, prepare_corpus
from cifllm.data.registry import DataError
from cifllm.utils import atomic_write_text

__all__ = ["OWN_DATASET", "OwnData", "own_data_format", "prepare_own_data"]

#: Dataset name of the user's data in its registry entry and in the corpus ``sources`` column.
OWN_DATASET = "own"
_TABLE_SUFFIXES = {".csv": "csv", ".gz": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class OwnData:
    """Rows (corpus records: ``text``, ``properties`` JSON, ...) of the train and val sides, and where they came from."""

    corpus: Path
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    manifest_file: Path
    report: dict[str, Any]


def own_data_format(path: str | Path) -> str:
    """``corpus`` (a folder with ``manifest.json``), ``cif_dir`` (a folder of ``.cif`` files), ``csv`` or ``parquet``;
    raises :class:`~cifllm.data.registry.DataError` naming the path otherwise."""
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return "corpus"
        if any(p.glob("*.cif")):
            return "cif_dir"
        raise DataError(f"data={p}: a folder without .cif files and not a corpus (no manifest.json)")
    if p.is_file():
        fmt = _TABLE_SUFFIXES.get(p.suffix.lower())
        if fmt == "csv" and p.suffix.lower() == ".gz" and not p.name.lower().endswith(".csv.gz"):
            fmt = None
        if fmt:
            return fmt
        raise DataError(f"data={p}: expected a folder of .cif files, a .csv/.csv.gz/.parquet file or a corpus folder")
    raise DataError(f"data={p}: no such file or folder")


def registry_entry(data: Path, fmt: str, cif_column: str, properties: dict[str, str]) -> dict[str, Any]:
    """The registry entry (``cifllm.data.registry`` keys) for ``data``; ``properties`` maps name -> column."""
    entry: dict[str, Any] = {
        "name": OWN_DATASET,
        "title": f"own data: {data.name}",
        "kind": "structures",
        "format": fmt,
        "files": [{"path": data.name, "split": "all"}],
        "licence": "the user's own data",
        "description": f"fine-tuning data given as data={data}",
    }
    if fmt in ("csv", "parquet"):
        entry["cif_column"] = cif_column
        if properties:
            entry["properties"] = {name: {"column": col, "unit": ""} for name, col in properties.items()}
    elif properties:
        raise DataError(f"data={data}: a folder of CIFs has no property columns; give a CSV/Parquet file with a CIF column and {list(properties.values())}")
    return entry


def prepare_own_data(
    data: str | Path,
    out: Path,
    cif_column: str = "cif",
    properties: dict[str, str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> OwnData:
    """Build (or reuse) the corpus of ``data`` under ``out`` (see module doc) and return its train / val rows.

    ``properties``: property name -> column of a CSV/Parquet ``data`` (stored under the name in each row's
    ``properties``); a corpus folder is used as it is (its rows' ``properties`` keys must already carry them)."""
    src = Path(data).expanduser().resolve()
    fmt = own_data_format(src)
    props = dict(properties or {})
    if fmt == "corpus":
        corpus = src
    else:
        reg_dir = out / "registry"
        entry = registry_entry(src, fmt, cif_column, props)
        reg_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(reg_dir / f"{OWN_DATASET}.yaml", yaml.safe_dump(entry, sort_keys=False))
        corpus = out / "corpus"
        cfg = PrepConfig(
            data_dir=str(src.parent), registry=str(reg_dir), datasets=(OWN_DATASET,), out=str(corpus), val_fraction=val_fraction,
            seed=seed, workers=1,
        )
        prepare_corpus(cfg, progress=progress)
    ds = load_corpus(corpus)
    rows = [dict(r) for r in ds]
    for r in rows:
        if isinstance(r.get("properties"), str):
            r["properties"] = json.loads(r["properties"] or "{}")
    report_file = corpus / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    if not rows:
        raise DataError(f"data={src}: no structure passed the corpus filters (see {corpus / 'rejects.jsonl'})")
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    return OwnData(corpus=corpus, train=train, val=val, manifest_file=corpus / "manifest.json", report=report)
