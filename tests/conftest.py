"""Shared in-process fixtures: prototype crystals built with pymatgen, and a tiny corpus made from them."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", module="pymatgen")

DATA_DIR = Path(os.environ.get("CIFLLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def prototype_structures():
    """~48 ordered crystals of common prototypes (rock salt, CsCl, zinc blende, fluorite, perovskite, rutile,
    wurtzite, bcc/fcc metals) over several chemistries; lattice constants roughly physical (Angstrom)."""
    from pymatgen.core import Lattice, Structure

    out = []
    for a, b, lat in [("Na", "Cl", 5.64), ("Mg", "O", 4.21), ("K", "Br", 6.60), ("Ca", "S", 5.69), ("Li", "F", 4.03), ("Ba", "O", 5.52)]:
        out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    for a, b, lat in [("Cs", "Cl", 4.12), ("Cs", "Br", 4.29), ("Tl", "I", 4.20), ("Cu", "Zn", 2.95), ("Ni", "Al", 2.88)]:
        out.append(Structure.from_spacegroup("Pm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    for a, b, lat in [("Zn", "S", 5.41), ("Ga", "As", 5.65), ("In", "P", 5.87), ("Cd", "Te", 6.48), ("Al", "P", 5.45), ("Si", "C", 4.36)]:
        out.append(Structure.from_spacegroup("F-43m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.25, 0.25, 0.25]]))
    for a, b, lat in [("Ca", "F", 5.46), ("Ba", "F", 6.20), ("Sr", "Cl", 6.98), ("Ce", "O", 5.41), ("U", "O", 5.47)]:
        out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.25, 0.25, 0.25]]))
    for a, b, lat in [("Sr", "Ti", 3.905), ("Ba", "Ti", 4.00), ("Ca", "Ti", 3.84), ("K", "Nb", 4.00), ("La", "Al", 3.79), ("Sr", "Zr", 4.10)]:
        out.append(Structure.from_spacegroup("Pm-3m", Lattice.cubic(lat), [a, b, "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]))
    for a, la, lc, u in [("Ti", 4.59, 2.96, 0.305), ("Sn", 4.74, 3.19, 0.307), ("Ru", 4.49, 3.11, 0.306), ("Mn", 4.40, 2.87, 0.302)]:
        out.append(Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(la, lc), [a, "O"], [[0, 0, 0], [u, u, 0]]))
    for a, b, la, lc in [("Zn", "O", 3.25, 5.21), ("Ga", "N", 3.19, 5.19), ("Al", "N", 3.11, 4.98), ("Cd", "S", 4.14, 6.71)]:
        out.append(Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(la, lc), [a, b], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]))
    for el, lat in [("Fe", 2.87), ("W", 3.16), ("Mo", 3.15), ("Nb", 3.30), ("V", 3.03), ("Cr", 2.91)]:
        out.append(Structure.from_spacegroup("Im-3m", Lattice.cubic(lat), [el], [[0, 0, 0]]))
    for el, lat in [("Cu", 3.61), ("Al", 4.05), ("Ni", 3.52), ("Au", 4.08), ("Ag", 4.09), ("Pt", 3.92)]:
        out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [el], [[0, 0, 0]]))
    return out


@pytest.fixture(scope="session")
def structures():
    return prototype_structures()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, structures) -> Path:
    """A corpus folder (``cifllm.data.corpus`` format) of the prototype structures; ~1 in 5 rows in ``val``."""
    from cifllm.cif import format_formula, structure_to_text
    from cifllm.data.corpus import CorpusRow, write_corpus
    from cifllm.tokenization import build_tokenizer

    tok = build_tokenizer()
    rows = []
    for i, s in enumerate(structures):
        text = structure_to_text(s)
        comp = s.composition
        rows.append(
            CorpusRow(
                text=text,
                reduced_formula=format_formula(comp, reduced=True),
                elements=[e.symbol for e in comp.elements],
                n_sites=len(s),
                sg_number=s.get_space_group_info(symprec=0.1)[1],
                n_tokens=len(tok.encode(text, add_special_tokens=False).ids),
                sources=["prototypes"],
                source_ids=[f"prototypes:{i}"],
                properties={"density_g_cm3": round(float(s.density), 4)},
                year=None,
                provenance=[{"dataset": "prototypes", "id": str(i)}],
                split="val" if i % 5 == 4 else "train",
            )
        )
    return write_corpus(rows, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (``CIFLLM_DATA_DIR`` or ../shared/data); tests that need it skip when it is absent."""
    if not (DATA_DIR / "mp_20").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR} (set CIFLLM_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """HFEngine(threads=1) sets torch's process-wide thread count; give later test modules the original back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> Path:
    """A random-weight cif-v2 Llama (shape ``test``, 256 positions) saved like a trained model."""
    from cifllm.sampling.toy import save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("toy") / "model", shape="test", max_positions=256)


@pytest.fixture(autouse=True, scope="session")
def _small_default_hull(tmp_path_factory):
    """The default DFT hull of ranking / S.U.N. / the stability reward, for tests: a small table (rock salt NaCl at
    its MP formation energy) instead of one built from the data folder, so no test depends on the user's cache."""
    from cifllm.potentials.hull import HullEntry
    from cifllm.potentials.hull_table import write_hull_table

    path = tmp_path_factory.mktemp("hull") / "hull.csv.gz"
    write_hull_table([HullEntry("mp_20:mp-22862", (("Cl", 1.0), ("Na", 1.0)), -2.109608)], path)
    old = os.environ.get("CIFLLM_HULL")
    os.environ["CIFLLM_HULL"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CIFLLM_HULL", None)
    else:
        os.environ["CIFLLM_HULL"] = old
