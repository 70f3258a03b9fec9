"""The default DFT hull of ranking, S.U.N. and the stability reward: built once from the data, then cached.

What it holds (``data_prep/dft_hull_phases.py`` writes it; :func:`load_default_hull` builds it on first use): of every
DFT row with a formation energy (:func:`cifllm.potentials.dft.dft_rows`: MP-20 and MPTS-52 under ``$CIFLLM_DATA_DIR``,
Materials Project GGA/GGA+U with MP2020 corrections, CC BY 4.0), only the phases *on* the hull of their own chemical
system (E_hull <= :data:`ON_HULL_TOL`). The pruning is exact: a phase above the hull of its own system stays above the
hull of any larger system (adding phases only lowers a hull). Columns: ``id``, ``formula`` (cell formula),
``formation_energy_per_atom`` (eV/atom). The table is data and never part of the package or the repository: it lives
in ``$CIFLLM_HULL`` or the user cache (``$XDG_CACHE_HOME/cifllm``, default ``~/.cache/cifllm``).

The hull knows only the phases of those data sets (a fraction of MP): a missing competing phase lowers a candidate's
E_hull, never raises it (``benchmarks/bench_hull.py`` measures the effect against MP's own E_hull).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cifllm.core.errors import CifllmError
from cifllm.potentials.dft import DftRow, dft_rows
from cifllm.potentials.hull import DftHull, HullEntry
from cifllm.utils import atomic_write_bytes

__all__ = ["HullUnavailableError", "ON_HULL_TOL", "default_hull_file", "hull_phases", "load_default_hull", "load_hull_table", "write_hull_table"]

#: a phase is kept when its E_hull on the hull of every row of its system is at most this (eV/atom)
ON_HULL_TOL = 1e-6


class HullUnavailableError(CifllmError, FileNotFoundError):
    """No hull table and no data to build one from."""


def default_hull_file() -> Path:
    """``$CIFLLM_HULL``, else ``<$XDG_CACHE_HOME or ~/.cache>/cifllm/dft_hull_phases.csv.gz``."""
    if os.environ.get("CIFLLM_HULL"):
        return Path(os.environ["CIFLLM_HULL"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifllm" / "dft_hull_phases.csv.gz"
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


def write_hull_table(entries: Iterable[HullEntry], path: str | Path) -> int:
    """Write ``entries`` as the gzipped CSV :func:`load_hull_table` reads (atomic, deterministic bytes); returns
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


def load_default_hull(data_dir: str | Path | None = None) -> DftHull:
    """The default hull (module docstring): the cached table, or built from the DFT rows under ``data_dir`` (None:
    ``$CIFLLM_DATA_DIR``) and cached first (~1-3 min once on 2 cores). Raises :class:`HullUnavailableError` when
    there is neither."""
    path = default_hull_file()
    if not path.is_file():
        try:
            rows = [r for r in dft_rows(data_dir) if r.formation_energy_per_atom is not None]
        except (CifllmError, OSError) as exc:
            raise HullUnavailableError(
                f"no DFT hull at {path} and none can be built ({exc}); set CIFLLM_DATA_DIR to the data folder (MP-20, MPTS-52) "
                "or CIFLLM_HULL to a table written by data_prep/dft_hull_phases.py"
            ) from None
        if not rows:
            raise HullUnavailableError(f"no DFT hull at {path}: the data folder holds no row with a formation energy")
        write_hull_table(hull_phases(rows), path)
    return load_hull_table(path)


def load_hull_table(path: str | Path) -> DftHull:
    """A hull table written by :func:`write_hull_table`."""
    from pymatgen.core import Composition

    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    entries = []
    for r in rows:
        comp = Composition(r["formula"])
        entries.append(HullEntry(r["id"], tuple(sorted((el.symbol, float(a)) for el, a in comp.items())), float(r["formation_energy_per_atom"])))
    return DftHull(entries, source=f"{Path(path).name} ({len(entries)} hull phases of MP-20 + MPTS-52)")
