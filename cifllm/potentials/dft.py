"""Rows of the data that carry DFT energies: structures with a Materials Project formation energy per atom and,
where given, the energy above MP's hull.

Sources (the dataset registry, ``cifllm/resources/datasets``; read with :func:`cifllm.data.readers.iter_dataset`):
``mp_20`` (``formation_energy_per_atom``, ``e_above_hull``), ``mpts_52`` (``formation_energy_per_atom``,
``energy_above_hull``), ``mp40_time_split`` (``energy_above_hull`` only: no formation energy, so it never enters a
hull; its rows can still be held out and scored against their E_hull). The same MP material in several sources
(by ``material_id``) is kept once, the first source in :data:`DFT_DATASETS` order. The two formation-energy sources
agree where they overlap (1,694 shared MP-20/MPTS-52 ids in the shared data: median difference 0, max 0.1 eV/atom).

A corpus (:func:`cifllm.data.corpus.load_corpus`) keeps each structure's first-seen properties in its
``properties`` JSON, so a corpus built from these sources also yields rows (:func:`dft_rows_from_corpus`).

Compositions come from the CIF's ``_chemical_formula_sum`` (pymatgen-written CIFs, every source here), parsed with
pymatgen ``Composition``; a CIF without it is parsed in full.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cifllm.cif.io import read_cif_text
from cifllm.data.corpus import load_corpus
from cifllm.data.readers import iter_dataset
from cifllm.data.registry import DEFAULT_REGISTRY, load_registry, resolve_data_dir

__all__ = ["DFT_DATASETS", "DftRow", "dft_rows", "dft_rows_from_corpus", "formula_of_cif"]

#: registry entries read for DFT rows, in priority order
DFT_DATASETS: tuple[str, ...] = ("mp_20", "mpts_52", "mp40_time_split")
_FORMATION = ("formation_energy_per_atom",)
_EHULL = ("e_above_hull", "energy_above_hull")
_SUM = re.compile(r"^_chemical_formula_sum\s+'?([^'\n]+?)'?\s*$", re.M)


@dataclass(frozen=True)
class DftRow:
    """One structure with DFT energies (eV/atom). ``id``: ``<dataset>:<material id>``; ``material_id``: the MP id;
    ``composition``: element -> amount in the cell; ``formation_energy_per_atom``/``e_above_hull``: None when the
    source lacks them; ``cif``: the source CIF text."""

    id: str
    material_id: str
    dataset: str
    split: str
    composition: tuple[tuple[str, float], ...]
    formation_energy_per_atom: float | None
    e_above_hull: float | None
    cif: str

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(sorted(el for el, _ in self.composition))

    @property
    def n_atoms(self) -> float:
        return sum(a for _, a in self.composition)


def formula_of_cif(cif: str) -> dict[str, float]:
    """Element -> amount of a CIF's cell, from ``_chemical_formula_sum`` (else the parsed structure)."""
    from pymatgen.core import Composition

    m = _SUM.search(cif)
    comp = Composition(m.group(1)) if m else read_cif_text(cif).composition
    return {el.symbol: float(a) for el, a in comp.element_composition.items()}


def _first(props: dict[str, float], names: Iterable[str]) -> float | None:
    for n in names:
        if props.get(n) is not None:
            return float(props[n])
    return None


def dft_rows(data_dir: str | Path | None = None, datasets: Sequence[str] = DFT_DATASETS, registry_dir: str | Path = DEFAULT_REGISTRY) -> list[DftRow]:
    """Every row of ``datasets`` with a formation energy or an E_hull, one per MP material id (first source wins).
    ``data_dir``: the shared data folder (None: ``$CIFLLM_DATA_DIR``)."""
    root = resolve_data_dir(data_dir)
    specs = load_registry(registry_dir)
    out: list[DftRow] = []
    seen: set[str] = set()
    for name in datasets:
        for rec in iter_dataset(specs[name], root):
            ef, eh = _first(rec.properties, _FORMATION), _first(rec.properties, _EHULL)
            if (ef is None and eh is None) or not rec.cif or rec.record_id in seen:
                continue
            seen.add(rec.record_id)
            comp = formula_of_cif(rec.cif)
            out.append(DftRow(f"{name}:{rec.record_id}", rec.record_id, name, rec.split, tuple(sorted(comp.items())), ef, eh, rec.cif))
    return out


def dft_rows_from_corpus(corpus_dir: str | Path, split: str | None = None) -> list[DftRow]:
    """Rows of a corpus whose ``properties`` hold a formation energy or an E_hull (compositions from the reduced
    formula; ``material_id`` is the first merged source id)."""
    from pymatgen.core import Composition

    ds = load_corpus(corpus_dir, split=split).select_columns(["id", "text", "reduced_formula", "properties", "source_ids", "split"])
    out: list[DftRow] = []
    for r in ds:
        props = json.loads(r["properties"] or "{}")
        ef, eh = _first(props, _FORMATION), _first(props, _EHULL)
        if ef is None and eh is None:
            continue
        src = (r["source_ids"] or [r["id"]])[0]
        dataset, _, mid = src.partition(":")
        comp = {el.symbol: float(a) for el, a in Composition(r["reduced_formula"]).items()}
        out.append(DftRow(f"corpus:{r['id']}", mid or src, dataset, r["split"], tuple(sorted(comp.items())), ef, eh, r["text"]))
    return out
