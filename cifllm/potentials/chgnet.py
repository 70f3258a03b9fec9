"""CHGNet (``chgnet`` on PyPI, the ``mlip`` extra): the default potential.

The wheel ships the pretrained checkpoints (``chgnet/pretrained/0.3.0``, 4.9 MB), so nothing is downloaded; the
checkpoint is CHGNet's own ``torch.save`` format, read by ``CHGNet.load`` from the installed package (trusted as much
as the package's code). Elements: Z 1-94 (its atom embedding). Energies: CHGNet 0.3.0 is trained on MPtrj, whose
energy labels are Materials Project GGA/GGA+U energies with the MP2020 compatibility corrections applied (CHGNet's
fine-tuning notes ask for MP2020-corrected labels to stay compatible with pretraining), so its total energies sit on
the same scale as MP's corrected formation energies once the elemental references are taken from the same potential
(:mod:`cifllm.potentials.references`).

Batched single points: each structure becomes a CHGNet crystal graph (an isolated atom - no neighbour within 6 A -
fails that structure only), then ``CHGNet.predict_graph(graphs, task="e", batch_size=...)`` evaluates them in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cifllm.potentials.base import Potential

__all__ = ["CHGNetPotential"]

_MAX_Z = 94


class CHGNetPotential(Potential):
    name = "chgnet"
    package = "chgnet"
    extra = "mlip"
    models = {
        "0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
        "0.2.0": "pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
        "r2scan": "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
    }
    default_model = "0.3.0"
    energy_scale = "mp2020"
    cutoff_A = 6.0

    def _load(self) -> Any:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        model = CHGNet.load(model_name=self.model, use_device="cpu", verbose=False)
        model.graph_converter.set_isolated_atom_response("error")
        calc = CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="error")
        return model, calc

    def calculator(self) -> Any:
        return self.loaded()[1]

    def _elements(self) -> frozenset[str]:
        from pymatgen.core.periodic_table import Element

        return frozenset(Element.from_Z(z).symbol for z in range(1, _MAX_Z + 1))

    def _energies(self, structures: Sequence[Any], batch_size: int) -> list[float | Exception]:
        model = self.loaded()[0]
        out: list[float | Exception] = []
        graphs, where = [], []
        for i, s in enumerate(structures):
            try:
                graphs.append(model.graph_converter(s))
                where.append(i)
                out.append(0.0)
            except Exception as exc:  # isolated atoms, bad cells: this structure only
                out.append(exc)
        if graphs:
            preds = model.predict_graph(graphs, task="e", batch_size=batch_size)
            if isinstance(preds, dict):
                preds = [preds]
            for i, p in zip(where, preds, strict=True):
                out[i] = float(p["e"])
        return out
