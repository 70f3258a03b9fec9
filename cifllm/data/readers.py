"""Readers: turn registry entries and loose files into :class:`RawRecord` objects (no parsing yet).

Supported inputs: CSV/Parquet with a CIF column (optionally several files joined on an index column), folders of
``.cif`` files, and structure files that ASE or pymatgen read (extxyz, POSCAR, pymatgen JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.cif import CIFError
from cifllm.cif.io import read_structure_file
from cifllm.core.inputs import check_file
from cifllm.data.registry import DataError, DatasetSpec, FileSpec

__all__ = ["RawRecord", "iter_dataset", "read_table", "load_join_table", "records_from_paths"]


@dataclass
class RawRecord:
    """One input record: CIF text or a pymatgen Structure dict, with its provenance and properties."""

    dataset: str
    file: str
    row: int
    record_id: str
    cif: str | None = None
    structure: dict | None = None
    properties: dict[str, float] = field(default_factory=dict)
    year: int | None = None
    split: str = "all"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.file} record {self.row} (id {self.record_id})"


def read_table(path: Path, fmt: str, columns: list[str] | None = None):
    """Read a CSV/Parquet file with pandas; raises :class:`DataError` naming the file and missing columns."""
    import pandas as pd

    check_file(path, "data file", DataError)
    try:
        df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, low_memory=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as {fmt} ({type(exc).__name__}: {str(exc)[:200]})") from None
    df.columns = [("Unnamed: 0" if str(c).startswith("Unnamed: 0") or str(c) == "" else str(c)) for c in df.columns]
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)[:20]}")
    return df


def _clean_value(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _required_columns(spec: DatasetSpec, *, all_props: bool = True) -> list[str]:
    cols = [spec.cif_column] if spec.cif_column else []
    if spec.id_column:
        cols.append(spec.id_column)
    if spec.year_column:
        cols.append(spec.year_column)
    if all_props:
        cols += [p["column"] for p in spec.properties.values()]
    cols += list(spec.extra_columns.values())
    return [c for c in dict.fromkeys(cols) if c]


def _iter_table(spec: DatasetSpec, fs: FileSpec, data_dir: Path, limit: int) -> Iterator[RawRecord]:
    path = data_dir / fs.path
    props_here = {k: v["column"] for k, v in spec.properties.items()}
    if spec.join_on:  # each file holds only some properties
        df = read_table(path, spec.format)
        props_here = {k: c for k, c in props_here.items() if c in df.columns}
        need = [c for c in (spec.cif_column, spec.join_on) if c]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)[:20]}")
    else:
        df = read_table(path, spec.format, _required_columns(spec))
    if limit:
        df = df.head(limit)
    id_col = spec.id_column
    for row_i, row in enumerate(df.to_dict("records")):
        rid = str(_clean_value(row[id_col])) if id_col else str(row_i)
        props: dict[str, float] = {}
        bad_props: dict[str, str] = {}
        for name, col in props_here.items():
            v = _clean_value(row.get(col))
            if v is not None:
                try:
                    props[name] = float(v)
                except (TypeError, ValueError):  # kept, visibly, in the provenance instead of the numeric properties
                    bad_props[name] = str(v)
        year = None
        if spec.year_column:
            y = _clean_value(row.get(spec.year_column))
            year = int(y) if y is not None else None
        extras = {k: _clean_value(row.get(c)) for k, c in spec.extra_columns.items()}
        if bad_props:
            extras["non_numeric_properties"] = bad_props
        cif = row.get(spec.cif_column) if spec.cif_column else None
        yield RawRecord(
            dataset=spec.name,
            file=fs.path,
            row=row_i,
            record_id=rid,
            cif=cif if isinstance(cif, str) else "",
            properties=props,
            year=year,
            split=fs.split,
            extras=extras,
        )


def _iter_structure_files(spec: DatasetSpec, fs: FileSpec, data_dir: Path, limit: int) -> Iterator[RawRecord]:
    base = data_dir / fs.path
    if spec.format == "cif_dir":
        if not base.is_dir():
            raise DataError(f"{base}: folder not found")
        paths = sorted(base.glob("*.cif"))
    else:
        paths = sorted(base.glob("*")) if base.is_dir() else [base]
        if not base.exists():
            raise DataError(f"{base}: not found")
    n = 0
    for p in paths:
        for rec in records_from_paths([p], dataset=spec.name, split=fs.split, rel_to=data_dir):
            yield rec
            n += 1
            if limit and n >= limit:
                return


def records_from_paths(paths: list[Path], dataset: str = "files", split: str = "all", rel_to: Path | None = None) -> Iterator[RawRecord]:
    """Records from loose files: ``.cif`` text goes through the CIF parser later; other files (extxyz, POSCAR, pymatgen
    JSON) are read now with ASE/pymatgen. An unreadable file yields a record whose ``extras['read_error']`` says why."""
    for p in paths:
        name = str(p.relative_to(rel_to)) if rel_to and p.is_relative_to(rel_to) else str(p)
        if p.suffix.lower() == ".cif":
            try:
                raw = p.read_bytes()
                text = "" if b"\x00" in raw[:4096] else raw.decode("utf-8", errors="replace")
                err = "binary: NUL bytes in file" if b"\x00" in raw[:4096] else None
            except OSError as exc:
                text, err = "", f"unreadable: {exc}"
            yield RawRecord(dataset, name, 0, p.stem, cif=text, split=split, extras={"read_error": err} if err else {})
            continue
        try:
            structures = read_structure_file(p)
        except CIFError as exc:
            yield RawRecord(dataset, name, 0, p.stem, cif="", split=split, extras={"read_error": f"{exc.reason}: {exc.detail}"})
            continue
        for i, s in enumerate(structures):
            rid = p.stem if len(structures) == 1 else f"{p.stem}#{i}"
            yield RawRecord(dataset, name, i, rid, structure=s.as_dict(), split=split)


def iter_dataset(spec: DatasetSpec, data_dir: Path, limit_per_file: int = 0) -> Iterator[RawRecord]:
    """Every record of a registry entry. ``join_on`` entries are merged across files first (one record per index,
    all properties together, the per-file splits kept in ``extras['splits']``)."""
    if spec.kind != "structures":
        raise DataError(f"{spec.name} is a {spec.kind!r} entry, it has no structures")
    if spec.format in ("cif_dir", "structure_files"):
        for fs in spec.files:
            yield from _iter_structure_files(spec, fs, data_dir, limit_per_file)
        return
    if not spec.join_on:
        for fs in spec.files:
            yield from _iter_table(spec, fs, data_dir, limit_per_file)
        return
    merged: dict[str, RawRecord] = {}
    for fs in spec.files:
        for rec in _iter_table(spec, fs, data_dir, 0):
            if limit_per_file and int(rec.row) >= limit_per_file:
                continue
            key = rec.record_id
            if key not in merged:
                rec.extras["splits"] = {}
                merged[key] = rec
            m = merged[key]
            if rec.cif and m.cif and rec.cif.strip() != m.cif.strip():
                m.extras.setdefault("join_conflicts", []).append(fs.path)
            m.properties.update(rec.properties)
            for p in rec.properties:
                m.extras["splits"][p] = fs.split
            m.extras.setdefault("files", []).append(fs.path)
    yield from merged.values()


def load_join_table(spec: DatasetSpec, data_dir: Path) -> dict[str, dict[str, Any]]:
    """For ``kind: table`` entries with ``join_key``: key value -> {new column: value}."""
    if not spec.join_key:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for fs in spec.files:
        df = read_table(data_dir / fs.path, spec.format, [spec.join_key, *spec.join_columns.values()])
        for row in df.to_dict("records"):
            out[str(row[spec.join_key])] = {k: _clean_value(row[c]) for k, c in spec.join_columns.items()}
    return out
