"""Universal interatomic potentials: one interface (:class:`~cifllm.potentials.base.Potential`: batched single
points, relaxation, supported elements), CHGNet as the default backend and SevenNet as an optional one, the
potentials' own elemental reference energies (:mod:`~cifllm.potentials.references`, shipped in
``cifllm/resources/potentials``) and the DFT-anchored convex hull (:mod:`~cifllm.potentials.hull`).

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
