"""SevenNet (``sevenn`` on PyPI, the ``mlip7`` extra): an optional second potential.

The sevenn wheel ships its pretrained checkpoints under ``sevenn/pretrained_potentials`` (``SevenNet_0__11Jul2024``
is ``7net-0``: MPtrj, the same training data as CHGNet 0.3.0, so MP2020-corrected GGA/GGA+U energies; 89 elements,
5 A cutoff). Only the shipped files are used: a model whose checkpoint is not in the installed package is refused
(sevenn itself would download it). Dependencies: e3nn, torch-geometric, matscipy, braceexpand (CPU torch is enough).

Batched single points: each structure becomes a SevenNet graph (``unlabeled_atoms_to_graph``), graphs are collated
with ``torch_geometric`` and the model runs once per batch (``set_is_batch_data(True)``); the ASE calculator shares
the same model in single-structure mode. Energies are the model's total energy over the number of atoms (eV/atom).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cifllm.potentials.base import Potential

__all__ = ["SevenNetPotential"]


class SevenNetPotential(Potential):
    name = "sevennet"
    package = "sevenn"
    extra = "mlip7"
    models = {
        "7net-0": "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
        "7net-0_22may2024": "pretrained_potentials/SevenNet_0__22May2024/checkpoint_sevennet_0.pth",
        "7net-l3i5": "pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
    }
    default_model = "7net-0"
    energy_scale = "raw"
    cutoff_A = 5.0

    def _load(self) -> Any:
        import sevenn._keys as KEY
        from sevenn.calculator import SevenNetCalculator
        from sevenn.util import load_checkpoint

        cp = load_checkpoint(str(self.checkpoint()))  # the file in the wheel: never a download
        model = cp.build_model()
        model.eval()
        calc = SevenNetCalculator(model, file_type="model_instance", device="cpu")
        type_map = cp.config[KEY.TYPE_MAP]
        return model, calc, float(cp.config[KEY.CUTOFF]), type_map

    def calculator(self) -> Any:
        return self.loaded()[1]

    def _elements(self) -> frozenset[str]:
        from pymatgen.core.periodic_table import Element

        return frozenset(Element.from_Z(int(z)).symbol for z in self.loaded()[3])

    def _energies(self, structures: Sequence[Any], batch_size: int) -> list[float | Exception]:
        import sevenn._keys as KEY
        from pymatgen.io.ase import AseAtomsAdaptor
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        model, _, cutoff, _ = self.loaded()
        out: list[float | Exception] = []
        graphs, where, natoms = [], [], []
        for i, s in enumerate(structures):
            try:
                graphs.append(AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(AseAtomsAdaptor.get_atoms(s), cutoff)))
                where.append(i)
                natoms.append(len(s))
                out.append(0.0)
            except Exception as exc:
                out.append(exc)
        model.set_is_batch_data(True)
        try:
            for b in range(0, len(graphs), batch_size):
                batch = Batch.from_data_list(graphs[b : b + batch_size])
                energies = model(batch)[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
                for k, e in enumerate(energies):
                    out[where[b + k]] = float(e) / natoms[b + k]
        finally:
            model.set_is_batch_data(False)
        return out
