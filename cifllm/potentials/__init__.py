"""Universal interatomic potentials: one interface (:class:`~cifllm.potentials.base.Potential`: batched single
points, relaxation, supported elements), CHGNet as the default backend and SevenNet as an optional one, the
potentials' own elemental reference energies (:mod:`~cifllm.potentials.references`, shipped in
``cifllm/resources/potentials``) and the DFT-anchored convex hull (:mod:`~cifllm.potentials.hull`).

Use (ranking, S.U.N.)::

    from cifllm.potentials import RelaxSettings, get_potential
    from cifllm.potentials.hull import DftHull, HullScorer

    pot = get_potential("chgnet")          # or "sevennet" (the mlip7 extra); the model loads once per process
    energies = pot.single_point(structures)  # eV/atom, batched (None + a reason in single_point_records)
    record = pot.relax(structure, RelaxSettings(fmax=0.1, max_steps=300))
    hull = DftHull.from_registry()         # MP-20 + MPTS-52 DFT formation energies ($CIFLLM_DATA_DIR); or .from_corpus(dir)
    scorer = HullScorer(pot, hull)         # the potential's shipped elemental references
    verdicts = scorer.score(structures)    # energy_per_atom, formation_energy_per_atom, e_above_hull, stable, metastable

Relaxation here runs in the calling process without a time limit (``max_steps`` bounds it); the evaluation stage
bounds each structure in time with worker processes (:class:`cifllm.evaluation.stability.RelaxTask`).

Layer: above ``data`` (the hull reads DFT formation energies from the dataset registry or a corpus), below
``sampling`` and ``evaluation`` (ranking and the stability stage use it).
"""

from __future__ import annotations

from cifllm.potentials.base import MissingExtraError, Potential, SinglePoint, UnknownPotentialError
from cifllm.potentials.chgnet import CHGNetPotential
from cifllm.potentials.relax import RelaxSettings, failure_record, relax_with, site_rmsd
from cifllm.potentials.sevennet import SevenNetPotential

__all__ = [
    "BACKENDS",
    "DEFAULT_POTENTIAL",
    "CHGNetPotential",
    "MissingExtraError",
    "Potential",
    "RelaxSettings",
    "SevenNetPotential",
    "SinglePoint",
    "UnknownPotentialError",
    "available_potentials",
    "failure_record",
    "get_potential",
    "relax_with",
    "site_rmsd",
]

#: backend name -> class
BACKENDS: dict[str, type[Potential]] = {"chgnet": CHGNetPotential, "sevennet": SevenNetPotential}
DEFAULT_POTENTIAL = "chgnet"

_INSTANCES: dict[tuple[str, str, int], Potential] = {}


def get_potential(name: str = DEFAULT_POTENTIAL, model: str | None = None, threads: int = 1) -> Potential:
    """The process-wide instance of a backend (``chgnet`` or ``sevennet``) and model (None: the backend's default);
    the model loads on first use, once per process. Raises :class:`UnknownPotentialError` for an unknown name or
    model, :class:`MissingExtraError` when its extra is not installed."""
    if name not in BACKENDS:
        raise UnknownPotentialError(f"potential must be one of {sorted(BACKENDS)}, got {name!r}")
    cls = BACKENDS[name]
    model = model or cls.default_model
    k = (name, model, threads)
    if k not in _INSTANCES:
        p = cls(model, threads=threads)
        p.checkpoint()
        _INSTANCES[k] = p
    return _INSTANCES[k]


def available_potentials() -> list[str]:
    """Backends whose package and default checkpoint are installed (no torch import)."""
    out = []
    for name, cls in BACKENDS.items():
        try:
            cls().checkpoint()
        except MissingExtraError:
            continue
        out.append(name)
    return out
