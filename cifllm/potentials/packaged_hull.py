"""The DFT hull that ships inside the package, so ``cifllm generate --rank energy`` places candidates on a hull from an
installed wheel, offline, without the data folder.

What ships (``cifllm/resources/potentials/dft_hull_phases.csv.gz``, written by ``data_prep/dft_hull_phases.py``): of
every DFT row with a formation energy (:func:`cifllm.potentials.dft.dft_rows`: MP-20 and MPTS-52, Materials Project
GGA/GGA+U with MP2020 corrections, CC BY 4.0), only the phases *on* the hull of their own chemical system (E_hull <=
:data:`ON_HULL_TOL` on the hull of all rows of that system and its sub-systems). The pruning is exact: a phase above the
hull of its own system stays above the hull of any larger system (adding phases only lowers a hull), so it can never
be a vertex of a candidate's hull. Columns: ``id`` (``<dataset>:<material id>``), ``formula`` (cell formula),
``formation_energy_per_atom`` (eV/atom).

The shipped hull knows only the phases of those data sets (a fraction of MP): a missing competing phase lowers a
candidate's E_hull, never raises it (``benchmarks/bench_hull.py`` measures the effect against MP's own E_hull).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from cifllm.potentials.dft import DftRow
from cifllm.potentials.hull import DftHull, HullEntry
from cifllm.utils import atomic_write_bytes
from cifllm.utils.resources import resources_root

__all__ = ["ON_HULL_TOL", "PACKAGED_HULL_FILE", "hull_phases", "load_packaged_hull", "write_hull_table"]

#: a phase is kept when its E_hull on the hull of every row of its system is at most this (eV/atom)
ON_HULL_TOL = 1e-6
PACKAGED_HULL_FILE = resources_root() / "potentials" / "dft_hull_phases.csv.gz"
_COLUMNS = ("id", "formula", "formation_energy_per_atom")


def hull_phases(rows: Iterable[DftRow]) -> list[HullEntry]:
    """The rows with a formation energy that lie on the hull of their own chemical system (with its sub-systems),
    one entry per row (ties on the hull are all kept)."""
    hull = DftHull.from_rows(rows)
    keep: list[HullEntry] = []
    for e in hull.entries:
        comp = dict(e.composition)
        if hull.e_above_hull(comp, e.formation_energy_per_atom)["e_above_hull"] <= ON_HULL_TOL:
            keep.append(e)
    return keep


def _formula(composition: Sequence[tuple[str, float]]) -> str:
    return " ".join(f"{el}{a:g}" for el, a in composition)


def write_hull_table(entries: Iterable[HullEntry], path: str | Path = PACKAGED_HULL_FILE) -> int:
    """Write ``entries`` as the gzipped CSV :func:`load_packaged_hull` reads (atomic, deterministic bytes); returns
    the number of rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS)
    n = 0
    for e in sorted(entries, key=lambda e: e.id):
        w.writerow((e.id, _formula(e.composition), f"{e.formation_energy_per_atom:.6f}"))
        n += 1
    atomic_write_bytes(path, gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0))
    return n


def load_packaged_hull(path: str | Path = PACKAGED_HULL_FILE) -> DftHull:
    """The shipped DFT hull (see the module docstring)."""
    from pymatgen.core import Composition

    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    entries = []
    for r in rows:
        comp = Composition(r["formula"])
        entries.append(HullEntry(r["id"], tuple(sorted((el.symbol, float(a)) for el, a in comp.items())), float(r["formation_energy_per_atom"])))
    return DftHull(entries, source=f"packaged:{Path(path).name} ({len(entries)} hull phases of MP-20 + MPTS-52)")
