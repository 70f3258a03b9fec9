"""Relaxation of one structure with any potential's ASE calculator, and the relaxation record.

The structure (primitive cell by default) relaxes with ASE ``FIRE`` (or ``BFGS``), cell and positions together
(``FrechetCellFilter``), until every force is below ``fmax`` (eV/A; the filter applies the same threshold to stress x
volume) or ``max_steps`` optimizer steps have run. Recorded: energy per atom before and after (eV/atom), steps,
converged, the largest final force (eV/A), the relaxed structure (CIF), the RMS displacement between the given and
the relaxed structure (``rmsd_A``: site by site, fractional displacement wrapped to the nearest image, mean
translation removed, in the relaxed lattice, A), ``rms_matcher`` (``StructureMatcher`` normalized RMS, null when the
relaxed structure no longer matches) and ``volume_ratio``.

Reasons (``ok`` False): ``unsupported_element``, ``too_many_atoms`` (> ``max_atoms`` in the relaxed cell),
``isolated_atom`` (the potential refuses an atom with no neighbour within its cutoff), ``exploding_energy`` (a
non-finite energy or |E| > ``max_abs_energy_per_atom`` at any step, or atoms closer than ``min_distance`` A after
relaxation), ``unphysical_cell`` (volume changed by more than ``max_volume_ratio`` either way), ``not_converged``
(step limit reached; the energy is recorded). Time limits and worker processes belong to the caller
(:func:`cifllm.evaluation.limits.map_with_time_limit`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cifllm.cif.matching import make_matcher

__all__ = ["RelaxSettings", "failure_record", "relax_with", "site_rmsd"]


@dataclass(frozen=True)
class RelaxSettings:
    """How a structure relaxes. ``optimizer``: ASE ``FIRE`` or ``BFGS``; ``fmax`` (eV/A) and ``max_steps``: convergence
    threshold and step limit; ``relax_cell``: cell and positions together (``FrechetCellFilter``); ``primitive``: relax
    the primitive cell (same energy per atom, fewer atoms); ``max_atoms``: larger cells are refused
    (``too_many_atoms``); ``max_abs_energy_per_atom`` (eV/atom), ``min_distance`` (A), ``max_volume_ratio``: the sanity
    limits behind ``exploding_energy`` and ``unphysical_cell``."""

    optimizer: str = "FIRE"
    fmax: float = 0.1
    max_steps: int = 500
    relax_cell: bool = True
    primitive: bool = True
    max_atoms: int = 200
    max_abs_energy_per_atom: float = 30.0
    min_distance: float = 0.5
    max_volume_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("FIRE", "BFGS"):
            raise ValueError(f"relax optimizer must be FIRE or BFGS, got {self.optimizer!r}")
        if self.fmax <= 0 or self.max_steps < 1:
            raise ValueError("relax fmax must be > 0 and max_steps >= 1")

    def key(self) -> str:
        """The settings as sorted JSON (every field changes a relaxation's result)."""
        return json.dumps(asdict(self), sort_keys=True)


def failure_record(reason: str, detail: str = "", **extra: Any) -> dict[str, Any]:
    """A relaxation record with every measured field null, ``ok`` False and ``reason``/``detail`` set."""
    rec: dict[str, Any] = {
        "ok": False,
        "reason": reason,
        "detail": detail[:300],
        "n_atoms": None,
        "formula": None,
        "elements": None,
        "energy_initial_per_atom": None,
        "energy_per_atom": None,
        "steps": None,
        "converged": None,
        "fmax_final": None,
        "rmsd_A": None,
        "rms_matcher": None,
        "volume_ratio": None,
        "relaxed_cif": None,
        "time_s": None,
    }
    rec.update(extra)
    return rec


def site_rmsd(initial: Any, relaxed: Any) -> float:
    """RMS site displacement (A) between two structures with the same sites in the same order: fractional
    displacement wrapped to the nearest image, mean (rigid translation) removed, in the relaxed lattice."""
    d = np.asarray(relaxed.frac_coords) - np.asarray(initial.frac_coords)
    d -= np.round(d)
    d -= d.mean(axis=0)
    cart = d @ np.asarray(relaxed.lattice.matrix)
    return float(np.sqrt(np.mean(np.sum(cart**2, axis=1))))


def _matcher_rms(a: Any, b: Any) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = make_matcher("novelty", supercell=True).get_rms_dist(a, b)
        except Exception:
            return None
    return None if r is None else round(float(r[0]), 5)


class _Exploded(Exception):
    pass


def relax_with(potential: Any, structure: Any, settings: RelaxSettings = RelaxSettings()) -> dict[str, Any]:
    """Relax one pymatgen ``Structure`` with ``potential`` (a :class:`~cifllm.potentials.base.Potential`) in this
    process; returns a record (see the module docstring). ``ok`` is True when the relaxation converged and passed every
    sanity check; otherwise ``reason`` says why."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    t0 = time.perf_counter()
    s = structure.copy()
    comp = s.composition
    base: dict[str, Any] = {"formula": comp.reduced_formula, "elements": sorted(el.symbol for el in comp.elements)}
    why = potential.unsupported(s)
    if why:
        return failure_record("unsupported_element", why, **base)
    if settings.primitive:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(Exception):
                s = s.get_primitive_structure(tolerance=0.02)  # exact symmetry only: never averages a distortion away
    n = len(s)
    base["n_atoms"] = n
    if n > settings.max_atoms:
        return failure_record("too_many_atoms", f"{n} > {settings.max_atoms} atoms", **base)

    calc = potential.calculator()
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = calc
    v0 = atoms.get_volume()

    def energy_per_atom() -> float:
        e = float(atoms.get_potential_energy()) / n
        if not math.isfinite(e) or abs(e) > settings.max_abs_energy_per_atom:
            raise _Exploded(f"energy {e:.4g} eV/atom (limit |E| <= {settings.max_abs_energy_per_atom:g})")
        return e

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e0 = energy_per_atom()
            obj = FrechetCellFilter(atoms) if settings.relax_cell else atoms
            opt = (FIRE if settings.optimizer == "FIRE" else BFGS)(obj, logfile=None)
            opt.attach(energy_per_atom, interval=1)
            converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
            e1 = energy_per_atom()
            forces = atoms.get_forces()
    except _Exploded as exc:
        return failure_record("exploding_energy", str(exc), **base, time_s=round(time.perf_counter() - t0, 3))
    except ValueError as exc:
        if "isolated atom" in str(exc):
            return failure_record("isolated_atom", str(exc), **base, time_s=round(time.perf_counter() - t0, 3))
        raise
    steps = int(opt.nsteps)
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    ratio = float(atoms.get_volume() / v0)
    dmat = relaxed.distance_matrix
    dmin = float(np.min(dmat[np.triu_indices(n, 1)])) if n > 1 else float("inf")
    fmax_final = float(np.max(np.linalg.norm(forces, axis=1)))
    rec = {
        "ok": converged,
        "reason": None if converged else "not_converged",
        "detail": "" if converged else f"max force {fmax_final:.3g} eV/A after {steps} steps",
        **base,
        "energy_initial_per_atom": round(e0, 6),
        "energy_per_atom": round(e1, 6),
        "steps": steps,
        "converged": converged,
        "fmax_final": round(fmax_final, 5),
        "rmsd_A": round(site_rmsd(s, relaxed), 5),
        "rms_matcher": _matcher_rms(s, relaxed),
        "volume_ratio": round(ratio, 5),
        "relaxed_cif": str(CifWriter(relaxed)),
        "time_s": round(time.perf_counter() - t0, 3),
    }
    if dmin < settings.min_distance:
        rec.update(ok=False, reason="exploding_energy", detail=f"atoms collapsed: min distance {dmin:.3f} A < {settings.min_distance:g} A after relaxation")
    elif not (1 / settings.max_volume_ratio <= ratio <= settings.max_volume_ratio):
        rec.update(ok=False, reason="unphysical_cell", detail=f"volume ratio relaxed/initial {ratio:.3g}")
    return rec
