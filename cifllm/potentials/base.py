"""The interface every universal interatomic potential implements (:class:`Potential`), the relaxation settings
(:class:`RelaxSettings`) and the registry of backends (:func:`get_potential`).

Units: energies in eV/atom (per atom of the cell given), forces in eV/A, distances in A. A single point is the
potential's energy of the structure as given (no relaxation); a relaxation moves positions and cell (ASE
``FrechetCellFilter``) until every force is below ``fmax`` (:mod:`cifllm.potentials.relax`).

Weights are only those shipped inside a backend's wheel (nothing is downloaded at run time): each backend lists its
model names and the checkpoint file under the installed package (:attr:`Potential.models`); a name outside that list
is refused, never treated as a path or URL.

Keys. :attr:`Potential.key` (``<backend>-<package version>/<model>/<checkpoint file>``) names cached results;
:attr:`Potential.weights_key` (``<backend>/<model>/<checkpoint file>``, no package version) names the shipped
elemental reference energies (:mod:`cifllm.potentials.references`). Both are read from the installed package
without importing torch.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cifllm.core.errors import CifllmError
from cifllm.potentials.relax import RelaxSettings, relax_with

__all__ = [
    "MissingExtraError",
    "Potential",
    "mp2020_correction_per_atom",
    "RelaxSettings",
    "SinglePoint",
    "UnknownPotentialError",
]


class MissingExtraError(CifllmError, ValueError):
    """The optional extra of a potential (``mlip``: chgnet; ``mlip7``: sevenn) is not installed."""


class UnknownPotentialError(CifllmError, ValueError):
    """A potential or model name that no installed backend ships."""


@dataclass(frozen=True)
class SinglePoint:
    """One single-point result: ``energy_per_atom`` (eV/atom, None when it could not be computed) and why not
    (``reason``: ``unsupported_element``, ``too_many_atoms``, ``isolated_atom``, ``exploding_energy``, ``error``)."""

    energy_per_atom: float | None
    reason: str | None = None
    detail: str = ""


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class Potential(ABC):
    """A universal interatomic potential: batched single points, relaxation, supported elements.

    Subclasses set the class attributes and implement :meth:`_load` (model and ASE calculator, once per instance),
    :meth:`_energies` (batched total energies per atom) and :meth:`_elements`. Instances are cheap until first use;
    :func:`cifllm.potentials.get_potential` keeps one per (backend, model) per process, so the model loads once.
    """

    #: backend name (``chgnet``)
    name: ClassVar[str]
    #: the pip distribution / import package that ships the weights
    package: ClassVar[str]
    #: the cifllm extra that installs it
    extra: ClassVar[str]
    #: model name -> checkpoint path relative to the installed package
    models: ClassVar[dict[str, str]]
    default_model: ClassVar[str]
    #: neighbour cutoff of the graph (A): an atom with no neighbour within it is isolated
    cutoff_A: ClassVar[float]
    #: the energy scale the model was trained on: ``mp2020`` (MPtrj corrected energies: MP2020 anion and GGA/GGA+U
    #: mixing corrections included) or ``raw`` (MPtrj uncorrected DFT energies; :meth:`mp_compatible` adds the
    #: MP2020 corrections so that formation energies compare with MP's)
    energy_scale: ClassVar[str]

    def __init__(self, model: str | None = None, threads: int = 1, batch_size: int = 16) -> None:
        model = model or self.default_model
        if model not in self.models:
            raise UnknownPotentialError(f"{self.name} model must be one of {sorted(self.models)} (checkpoints shipped in the {self.package} wheel), got {model!r}")
        self.model = model
        self.threads = threads
        self.batch_size = batch_size
        self._loaded: Any = None

    # ---------------------------------------------------------------- identity (no torch)

    def checkpoint(self) -> Path:
        """The checkpoint file inside the installed package; :class:`MissingExtraError` when absent."""
        root = _package_root(self.package)
        if root is None:
            raise MissingExtraError(f"the {self.name} potential needs the {self.extra} extra: pip install 'cifllm[{self.extra}]' (CPU torch is enough)")
        path = root / self.models[self.model]
        if not path.is_file():
            raise MissingExtraError(f"{self.package} is installed without its pretrained {self.model} checkpoint ({path})")
        return path

    @property
    def version(self) -> str:
        """The installed package version."""
        self.checkpoint()
        return importlib.metadata.version(self.package)

    @property
    def key(self) -> str:
        """``<backend>-<package version>/<model>/<checkpoint file>``: names cached energies and relaxations."""
        return f"{self.name}-{self.version}/{self.model}/{self.checkpoint().name}"

    @property
    def weights_key(self) -> str:
        """``<backend>/<model>/<checkpoint file>``: names the shipped elemental reference energies."""
        return f"{self.name}/{self.model}/{self.checkpoint().name}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"

    # ---------------------------------------------------------------- backend hooks

    @abstractmethod
    def _load(self) -> Any:
        """Load the model (and whatever :meth:`calculator` and :meth:`_energies` need) once; returns a handle."""

    @abstractmethod
    def _energies(self, structures: Sequence[Any], batch_size: int) -> list[float | Exception]:
        """Energies per atom (eV/atom) of pymatgen structures, batched; an item that fails is its exception."""

    @abstractmethod
    def _elements(self) -> frozenset[str]:
        """Element symbols the model was trained on."""

    @abstractmethod
    def calculator(self) -> Any:
        """The ASE calculator of this potential (loaded once)."""

    # ---------------------------------------------------------------- shared API

    def loaded(self) -> Any:
        if self._loaded is None:
            self.checkpoint()
            import torch

            if self.threads > 0:
                torch.set_num_threads(self.threads)
            with warnings.catch_warnings(), contextlib.redirect_stdout(_Null()):
                warnings.simplefilter("ignore")
                self._loaded = self._load()
        return self._loaded

    @property
    def elements(self) -> frozenset[str]:
        """Element symbols this potential covers."""
        return self._elements()

    def unsupported(self, structure: Any) -> str | None:
        """Why this potential cannot evaluate ``structure`` (elements outside :attr:`elements`, partial occupancy),
        or None."""
        if not structure.is_ordered:
            return "partially occupied sites"
        bad = sorted({el.symbol for el in structure.composition.elements} - self.elements)
        return f"{','.join(bad)}: not covered by {self.name} {self.model}" if bad else None

    def single_point_records(self, structures: Sequence[Any], batch_size: int | None = None, max_atoms: int = 500, max_abs_energy_per_atom: float = 30.0) -> list[SinglePoint]:
        """Energy per atom (eV/atom) of each pymatgen structure as given, in batches of ``batch_size`` (one model
        call per batch); structures the potential cannot evaluate get a reason instead (see :class:`SinglePoint`)."""
        out: list[SinglePoint | None] = [None] * len(structures)
        todo: list[int] = []
        for i, s in enumerate(structures):
            why = self.unsupported(s)
            if why:
                out[i] = SinglePoint(None, "unsupported_element", why)
            elif len(s) > max_atoms:
                out[i] = SinglePoint(None, "too_many_atoms", f"{len(s)} > {max_atoms} atoms")
            else:
                todo.append(i)
        if todo:
            self.loaded()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                energies = self._energies([structures[i] for i in todo], batch_size or self.batch_size)
            for i, e in zip(todo, energies, strict=True):
                if isinstance(e, Exception):
                    msg = f"{type(e).__name__}: {e}"
                    out[i] = SinglePoint(None, "isolated_atom" if "isolated atom" in str(e).lower() else "error", msg[:300])
                elif not math.isfinite(e) or abs(e) > max_abs_energy_per_atom:
                    out[i] = SinglePoint(None, "exploding_energy", f"energy {e:.4g} eV/atom (limit |E| <= {max_abs_energy_per_atom:g})")
                else:
                    out[i] = SinglePoint(float(e))
        return [r for r in out if r is not None]

    def single_point(self, structures: Sequence[Any], batch_size: int | None = None) -> list[float | None]:
        """Energies per atom (eV/atom) of pymatgen structures, batched; None where :meth:`single_point_records` gives
        a reason."""
        return [r.energy_per_atom for r in self.single_point_records(structures, batch_size)]

    def mp_compatible(self, structure: Any, energy_per_atom: float | None) -> float | None:
        """``energy_per_atom`` (eV/atom) on the MP2020-corrected scale: unchanged for a potential trained on corrected
        energies, plus :func:`mp2020_correction_per_atom` for one trained on raw DFT energies; None stays None."""
        if energy_per_atom is None or self.energy_scale == "mp2020":
            return energy_per_atom
        return energy_per_atom + mp2020_correction_per_atom(structure)

    def relax(self, structure: Any, settings: RelaxSettings = RelaxSettings()) -> dict[str, Any]:
        """Relax one pymatgen structure in this process; the record of :func:`cifllm.potentials.relax.relax_with`."""
        return relax_with(self, structure, settings)

    def timed_single_point(self, structures: Sequence[Any], batch_size: int | None = None) -> tuple[list[SinglePoint], float]:
        """:meth:`single_point_records` and its wall time in seconds (model load excluded)."""
        self.loaded()
        t0 = time.perf_counter()
        recs = self.single_point_records(structures, batch_size)
        return recs, time.perf_counter() - t0


_COMPAT: list[Any] = []


def mp2020_correction_per_atom(structure: Any) -> float:
    """The Materials Project 2020 energy correction (eV/atom) that MP adds to a raw GGA/GGA+U energy of this pymatgen
    structure: anion corrections (oxide/peroxide/superoxide from the structure, S, halides, N, H, ...) and the
    GGA/GGA+U mixing correction, assuming MP's own run type (GGA+U with MP's U values when the structure holds O or F
    and a U element, else GGA). pymatgen ``MaterialsProject2020Compatibility`` with ``check_potcar=False``; 0.0 for
    an element; a composition the scheme rejects raises ``ValueError``."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    if not _COMPAT:
        _COMPAT.append(MaterialsProject2020Compatibility(check_potcar=False))
    compat = _COMPAT[0]
    comp = structure.composition
    if len(comp.elements) == 1:
        return 0.0
    symbols = {el.symbol for el in comp.elements}
    hubbards: dict[str, float] = {}
    for anion in ("O", "F"):
        if anion in symbols and not hubbards:
            hubbards = {el: u for el, u in compat.u_settings.get(anion, {}).items() if el in symbols and u}
    params = {"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards, "is_hubbard": bool(hubbards)}
    entry = ComputedStructureEntry(structure, 0.0, parameters=params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        done = compat.process_entry(entry, clean=True)
    if done is None:
        raise ValueError(f"MP2020 compatibility rejects {comp.reduced_formula}")
    return float(done.correction) / comp.num_atoms


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass
