"""The potential layer (cifllm.potentials): the DFT-anchored hull on a hand-made chemical system, formation energies
from elemental references, MP2020 corrections, hull metrics, DFT rows from a registry, and the CHGNet (and, when
installed, SevenNet) backends on CPU: batched single points equal one-by-one ones; the shipped elemental references.

The hand-made system: elements A = Na, B = Cl at 0; NaCl at -2.0 eV/atom and NaCl3 at -0.5 eV/atom (above the
NaCl-Cl tie line, -1.0 at x_Cl = 0.75), so the hull is Na - NaCl - Cl.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest

from cifllm.potentials import RelaxSettings, UnknownPotentialError, get_potential
from cifllm.potentials.base import mp2020_correction_per_atom
from cifllm.potentials.dft import dft_rows, formula_of_cif
from cifllm.potentials.hull import DftHull, HullEntry, HullScorer, formation_energy_per_atom
from cifllm.potentials.references import (
    ElementalReferences,
    ReferenceCandidate,
    compute_elemental_references,
    load_elemental_references,
    write_elemental_references,
)
from cifllm.potentials.validation import classification, error_stats

warnings.filterwarnings("ignore")


def _hull() -> DftHull:
    return DftHull(
        [
            HullEntry("nacl", (("Cl", 1.0), ("Na", 1.0)), -2.0),
            HullEntry("nacl3", (("Cl", 3.0), ("Na", 1.0)), -0.5),
            HullEntry("kcl", (("Cl", 1.0), ("K", 1.0)), -2.2),
        ]
    )


def _rocksalt(a: float = 5.64):
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# ---------------------------------------------------------------- no potential needed


def test_hull_known_answers():
    h = _hull()
    on = h.e_above_hull({"Na": 1, "Cl": 1}, -2.1)
    assert on["e_above_hull"] == pytest.approx(-0.1, abs=1e-9) and on["hull_n_entries"] == 2
    assert h.e_above_hull({"Na": 2, "Cl": 2}, -1.95)["e_above_hull"] == pytest.approx(0.05, abs=1e-9)  # per atom, any cell
    # NaCl3 at x_Cl = 0.75: hull between NaCl (-2.0, x 0.5) and Cl (0, x 1) is -1.0
    assert h.e_above_hull({"Na": 1, "Cl": 3}, -0.5)["e_above_hull"] == pytest.approx(0.5, abs=1e-9)
    d = h.e_above_hull({"Na": 1, "Cl": 3}, -1.2)
    assert d["e_above_hull"] == pytest.approx(-0.2, abs=1e-9) and d["hull_decomposition"] == ["Cl2", "NaCl"]
    # an element no compound of the data holds still has its reference at 0: Na-O has no phase, so E_hull = E_f
    assert h.e_above_hull({"Na": 2, "O": 1}, -0.3)["e_above_hull"] == pytest.approx(-0.3, abs=1e-9)
    assert h.e_above_hull({"Na": 1}, 0.02)["e_above_hull"] == pytest.approx(0.02, abs=1e-9)
    # a ternary sees every binary sub-system: K-Na-Cl at x = 1/4, 1/4, 1/2 lies on the NaCl-KCl line (-2.1)
    assert h.e_above_hull({"Na": 1, "K": 1, "Cl": 2}, -2.0)["e_above_hull"] == pytest.approx(0.1, abs=1e-9)
    assert h.subsystems(["Na", "Cl", "O"]) == ["Cl-Na"]


def test_hull_leaves_out_held_out_ids():
    from cifllm.potentials.dft import DftRow

    rows = [
        DftRow("mp_20:mp-1", "mp-1", "mp_20", "test", (("Cl", 1.0), ("Na", 1.0)), -2.0, 0.0, ""),
        DftRow("mp_20:mp-2", "mp-2", "mp_20", "test", (("Cl", 1.0), ("Na", 1.0)), -1.9, 0.1, ""),
        DftRow("mp40:mp-3", "mp-3", "mp40_time_split", "test", (("Cl", 1.0), ("Na", 1.0)), None, 0.0, ""),
    ]
    full = DftHull.from_rows(rows)
    assert len(full.entries) == 2  # no formation energy: not a phase
    held = DftHull.from_rows(rows, exclude=["mp-1"])
    assert [e.id for e in held.entries] == ["mp_20:mp-2"]
    assert held.e_above_hull({"Na": 1, "Cl": 1}, -2.0)["e_above_hull"] == pytest.approx(-0.1, abs=1e-9)


def test_formation_energy_from_elemental_references():
    refs = {"Na": -1.3, "Cl": -1.8}
    # E_f = E - (x_Na mu_Na + x_Cl mu_Cl) = -3.7 - (0.5 * -1.3 + 0.5 * -1.8) = -2.15
    assert formation_energy_per_atom({"Na": 4, "Cl": 4}, -3.7, refs) == pytest.approx(-2.15)
    assert formation_energy_per_atom({"Na": 1, "Cl": 3}, -2.0, refs) == pytest.approx(-2.0 - (0.25 * -1.3 + 0.75 * -1.8))
    with pytest.raises(KeyError, match="O"):
        formation_energy_per_atom({"Na": 2, "O": 1}, -3.0, refs)


def test_mp2020_correction():
    from pymatgen.core import Lattice, Structure

    feo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert mp2020_correction_per_atom(_rocksalt()) == pytest.approx(-0.614 / 2, abs=1e-6)  # Cl anion correction
    assert mp2020_correction_per_atom(feo) == pytest.approx((-0.687 - 2.256) / 2, abs=1e-6)  # oxide + Fe GGA+U mixing
    assert mp2020_correction_per_atom(Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])) == 0.0


def test_hull_metrics_counts():
    pred = [-0.01, 0.02, 0.0, 0.3, 0.05]
    true = [0.0, 0.0, 0.05, 0.2, 1e-17]
    st = classification(pred, true, 0.0)
    assert (st["tp"], st["fp"], st["fn"], st["tn"]) == (1, 1, 2, 1)  # 1e-17 counts as on the hull
    assert st["f1"] == pytest.approx(2 / (2 + 1 + 2), abs=1e-4) and st["precision"] == 0.5
    ms = classification(pred, true, 0.1)
    assert (ms["tp"], ms["fn"], ms["tn"]) == (4, 0, 1) and ms["f1"] == 1.0
    e = error_stats(pred, true)
    assert e["n"] == 5 and e["mae"] == pytest.approx((0.01 + 0.02 + 0.05 + 0.1 + 0.05) / 5, abs=1e-5)
    assert e["mae_ci95"][0] <= e["mae"] <= e["mae_ci95"][1]
    assert error_stats([], [])["mae"] is None  # not measured: null


def test_dft_rows_from_a_registry(tmp_path):
    """Rows with a formation energy or an E_hull, one per material id (first dataset wins), compositions from the
    CIF formula."""
    import pandas as pd

    cif = _rocksalt().to(fmt="cif")
    (tmp_path / "d").mkdir()
    pd.DataFrame({"material_id": ["mp-1", "mp-2"], "cif": [cif, cif], "formation_energy_per_atom": [-2.0, None], "e_above_hull": [0.0, None]}).to_csv(tmp_path / "d" / "a.csv", index=False)
    pd.DataFrame({"material_id": ["mp-1", "mp-3"], "cif": [cif, cif], "energy_above_hull": [0.5, 0.1]}).to_csv(tmp_path / "d" / "b.csv", index=False)
    reg = tmp_path / "reg"
    reg.mkdir()
    for name, f, props in (("mp_20", "a.csv", {"formation_energy_per_atom": "formation_energy_per_atom", "e_above_hull": "e_above_hull"}), ("mpts_52", "b.csv", {"energy_above_hull": "energy_above_hull"})):
        (reg / f"{name}.yaml").write_text(
            json.dumps({"name": name, "title": name, "kind": "structures", "format": "csv", "id_column": "material_id", "licence": "test", "files": [{"path": f"d/{f}", "split": "test"}], "properties": {k: {"column": v, "unit": "eV/atom"} for k, v in props.items()}})
        )
    rows = dft_rows(tmp_path, datasets=("mp_20", "mpts_52"), registry_dir=reg)
    assert [(r.id, r.formation_energy_per_atom, r.e_above_hull) for r in rows] == [("mp_20:mp-1", -2.0, 0.0), ("mpts_52:mp-3", None, 0.1)]
    assert dict(rows[0].composition) == {"Na": 4.0, "Cl": 4.0}
    no_sum = "\n".join(line for line in cif.splitlines() if not line.startswith("_chemical_formula_sum"))
    assert formula_of_cif(no_sum) == {"Na": 4.0, "Cl": 4.0}  # no formula line: the structure is parsed


def test_unknown_potential_and_model_are_refused():
    with pytest.raises(UnknownPotentialError, match="potential must be one of"):
        get_potential("mace")
    with pytest.raises(UnknownPotentialError, match="shipped in the chgnet wheel"):
        get_potential("chgnet", "/tmp/weights.pth")
    with pytest.raises(ValueError, match="FIRE or BFGS"):
        RelaxSettings(optimizer="LBFGS")


# ---------------------------------------------------------------- CHGNet on CPU


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    p = get_potential("chgnet")
    p.loaded()  # one model load for the module
    return p


def test_chgnet_single_point_is_batched_and_matches_one_by_one(chgnet):
    from pymatgen.core import Lattice, Structure

    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    both = chgnet.single_point([_rocksalt(), fe], batch_size=2)
    one = chgnet.single_point([_rocksalt()]) + chgnet.single_point([fe])
    assert all(isinstance(e, float) and math.isfinite(e) for e in both)
    assert both == pytest.approx(one, abs=1e-4)
    assert -4.5 < both[0] < -3.0 and -9.5 < both[1] < -7.5  # NaCl and bcc Fe, eV/atom (MP: -3.7, -8.5 corrected)
    far = Structure(Lattice.cubic(30.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    og = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    recs = chgnet.single_point_records([far, og, fe])
    assert [r.reason for r in recs] == ["isolated_atom", "unsupported_element", None]
    assert recs[2].energy_per_atom == pytest.approx(both[1], abs=1e-4)
    assert chgnet.key.startswith("chgnet-") and chgnet.weights_key == "chgnet/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"


def test_shipped_references_and_scorer(chgnet):
    refs = load_elemental_references(chgnet)
    assert {"H", "O", "Na", "Cl", "Fe", "Si", "Se", "Br"} <= set(refs.energies)
    assert all(math.isfinite(e) for e in refs.energies.values())
    assert refs.meta["potential_key"].startswith("chgnet-") and refs.meta["relax_settings"]["fmax"] > 0
    assert refs.elements["Na"]["source"] and refs.elements["Na"]["converged"]
    scorer = HullScorer(chgnet, _hull(), refs)
    (rec,) = scorer.score([_rocksalt()])
    ef = formation_energy_per_atom({"Na": 4, "Cl": 4}, rec["energy_per_atom"], refs.energies)
    assert rec["formation_energy_per_atom"] == pytest.approx(ef, abs=1e-5)
    assert rec["e_above_hull"] == pytest.approx(ef + 2.0, abs=1e-5)  # NaCl's hull point is -2.0 here
    assert -2.4 < ef < -1.8  # MP: -2.08 eV/atom (MP2020); CHGNet is trained on corrected energies
    # an element without a reference: a reason, not a crash
    partial = HullScorer(chgnet, _hull(), ElementalReferences(refs.weights_key, {"Na": refs.energies["Na"]}))
    (miss,) = partial.score([_rocksalt()])
    assert miss["e_above_hull"] is None and miss["hull_reason"] == "no_elemental_reference"


@pytest.mark.slow  # SevenNet's model load takes ~10 s on 2 shared cores; `make test-slow` runs it
def test_sevennet_batched_single_point_matches_its_calculator():
    pytest.importorskip("sevenn")
    from pymatgen.io.ase import AseAtomsAdaptor

    p = get_potential("sevennet")
    s = _rocksalt()
    (e,) = p.single_point([s])
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = p.calculator()
    assert e == pytest.approx(atoms.get_potential_energy() / len(s), abs=1e-4)
    assert p.energy_scale == "raw" and p.mp_compatible(s, e) == pytest.approx(e - 0.307, abs=1e-6)


def test_dft_hull_from_a_corpus(tmp_path):
    """A corpus keeps each structure's properties: rows with a formation energy become phases; others do not."""
    from pymatgen.core import Composition, Lattice, Structure

    from cifllm.cif import format_formula, structure_to_text
    from cifllm.data.corpus import CorpusRow, write_corpus
    from cifllm.tokenization import build_tokenizer

    tok = build_tokenizer()
    cscl = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows = []
    for i, (s, props) in enumerate([(_rocksalt(), {"formation_energy_per_atom": -2.0, "e_above_hull": 0.0}), (cscl, {"band_gap": 4.0})]):
        t = structure_to_text(s)
        rows.append(
            CorpusRow(
                text=t, reduced_formula=format_formula(Composition(s.composition), reduced=True), elements=["Cl", "Na"], n_sites=len(s), sg_number=225,
                n_tokens=len(tok.encode(t, add_special_tokens=False).ids), sources=["mp_20"], source_ids=[f"mp_20:mp-{i}"], properties=props, year=None, provenance=[], split="train",
            )
        )
    write_corpus(rows, tmp_path / "corpus")
    hull = DftHull.from_corpus(tmp_path / "corpus")
    assert len(hull.entries) == 1 and hull.entries[0].composition == (("Cl", 1.0), ("Na", 1.0))
    assert hull.e_above_hull({"Na": 1, "Cl": 1}, -1.9)["e_above_hull"] == pytest.approx(0.1, abs=1e-9)
    assert DftHull.from_corpus(tmp_path / "corpus", exclude=["mp-0"]).entries == []  # held out by material id


def test_compute_and_merge_elemental_references(chgnet, tmp_path):
    """mu = relaxed energy per atom - the structure's DFT E_hull; merge keeps the other elements."""
    from pymatgen.core import Lattice, Structure

    na = Structure.from_spacegroup("Im-3m", Lattice.cubic(4.23), ["Na"], [[0, 0, 0]])
    refs = compute_elemental_references(chgnet, {"Na": ReferenceCandidate("Na", na, "test:na", 0.01)}, RelaxSettings(fmax=0.05), elements=["Na", "Og"])
    r = refs.elements["Na"]
    assert r["converged"] and refs.energies["Na"] == pytest.approx(r["relaxed_energy_per_atom"] - 0.01, abs=1e-6)
    assert refs.elements["Og"]["reason"] == "no_structure" and "Og" not in refs.energies
    path = tmp_path / "refs.json"
    write_elemental_references(ElementalReferences(refs.weights_key, {"Na": -1.0, "Cl": -2.0}, {"Na": {}, "Cl": {}}, {"m": 1}), path)
    write_elemental_references(refs, path, merge=True)
    back = load_elemental_references(chgnet, path)
    assert back.energies == {"Cl": -2.0, "Na": refs.energies["Na"]} and back.meta == {"m": 1}


@pytest.mark.data
def test_every_element_of_the_dft_data_has_shipped_references(data_dir):
    """The DFT hull never lacks an element (they sit at 0), and each shipped potential has a reference energy for every
    element of the MP rows, so no real MP composition gets ``no_elemental_reference``."""
    import importlib.util

    rows = dft_rows(data_dir)
    elements = {el for r in rows for el, _ in r.composition}
    assert len(rows) > 20_000 and len(elements) > 80
    for name in ("chgnet", "sevennet"):
        if importlib.util.find_spec({"chgnet": "chgnet", "sevennet": "sevenn"}[name]) is None:
            continue
        refs = load_elemental_references(get_potential(name))
        assert elements <= set(refs.energies), sorted(elements - set(refs.energies))
