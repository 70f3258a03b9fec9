"""CrystaLLM's validity, reproduced (cifllm.evaluation.crystallm_consistency): each sub-check on hand-made canonical
texts - one consistent, then each inconsistency - and how ``check_sample`` reports it next to the strict rule."""

from __future__ import annotations

import time
import warnings

import pytest
from pymatgen.core import Lattice, Structure

from cifllm.cif import parse_canonical, structure_to_text, text_to_structure
from cifllm.cif.crystallm import crystallm_cif, symmetry_operators_xyz
from cifllm.evaluation.checks import check_sample
from cifllm.evaluation.crystallm_consistency import CRYSTALLM_CHECKS, bond_length_reasonableness, crystallm_is_valid
from cifllm.evaluation.run import summarize

NACL = """data_Na4Cl4
_symmetry_space_group_name_H-M Fm-3m
_symmetry_Int_Tables_number 225
_cell_length_a 5.6400
_cell_length_b 5.6400
_cell_length_c 5.6400
_cell_angle_alpha 90.0000
_cell_angle_beta 90.0000
_cell_angle_gamma 90.0000
_cell_volume 179.4061
_cell_formula_units_Z 4
_chemical_formula_structural NaCl
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_symmetry_multiplicity
_atom_site_Wyckoff_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na Na0 4 a 0.0000 0.0000 0.0000 1
Cl Cl1 4 b 0.5000 0.5000 0.5000 1
"""


def _failed(text: str) -> dict[str, str]:
    v = crystallm_is_valid(text)
    return {n: c.reason for n, c in v.checks.items() if c.ok is not True}


def test_consistent_text_passes_every_sub_check():
    v = crystallm_is_valid(NACL)
    assert tuple(v.checks) == CRYSTALLM_CHECKS
    assert v.valid and v.reason == "" and all(c.ok for c in v.checks.values())
    assert v.checks["crystallm_bond_length"].value == pytest.approx(1.0)
    s = check_sample(NACL)
    assert s.consistent and s.consistent_strict and s.valid_all and s.reason == ""


@pytest.mark.parametrize(
    "old, new",
    [("_cell_angle_beta 90.0000", "_cell_angle_beta 175.0000"), ("_cell_length_c 5.6400", "_cell_length_c 1200.0000")],
)
def test_not_sensible_cell_stops_before_the_structure(old, new):
    v = crystallm_is_valid(NACL.replace(old, new))
    assert not v.valid and v.reason == "crystallm_not_sensible"
    assert v.checks["crystallm_space_group"].ok is None and v.checks["crystallm_bond_length"].reason == "skipped_crystallm_sensible"
    assert v.checks["crystallm_formula"].ok and v.checks["crystallm_multiplicity"].ok  # text-only checks still run


def test_formula_sub_check():
    assert _failed(NACL.replace("_chemical_formula_structural NaCl", "_chemical_formula_structural NaCl2")) == {
        "crystallm_formula": "crystallm_formula_mismatch"
    }
    # CrystaLLM's data_ formula is letters and digits only: a fractional count fails (its regex finds no formula)
    frac = NACL.replace("data_Na4Cl4", "data_Na2.5Cl4")
    assert _failed(frac)["crystallm_formula"] == "crystallm_bad_data_formula"
    # Z is not part of CrystaLLM's rule (the strict one checks it)
    z = NACL.replace("_cell_formula_units_Z 4", "_cell_formula_units_Z 3")
    assert crystallm_is_valid(z).valid
    assert check_sample(z).checks["formula"].reason == "z_mismatch" and not check_sample(z).consistent_strict


def test_multiplicity_sub_check_counts_stated_multiplicities_exactly():
    doubled = NACL.replace("data_Na4Cl4", "data_Na8Cl8").replace("_cell_formula_units_Z 4", "_cell_formula_units_Z 8")
    assert _failed(doubled) == {"crystallm_multiplicity": "crystallm_multiplicity_mismatch"}
    # occupancies are ignored: a half-occupied Na row still counts 4 Na (the bond check then fails on the disorder)
    half = NACL.replace("Na Na0 4 a 0.0000 0.0000 0.0000 1", "Na Na0 4 a 0.0000 0.0000 0.0000 0.5")
    assert _failed(half) == {"crystallm_bond_length": "crystallm_disordered"}


def test_space_group_sub_check_compares_symbols():
    # F-43m with the rock-salt positions generates the same atoms: only the stated group is wrong
    t = NACL.replace("Fm-3m\n_symmetry_Int_Tables_number 225", "F-43m\n_symmetry_Int_Tables_number 216")
    v = crystallm_is_valid(t)
    assert _failed(t) == {"crystallm_space_group": "crystallm_space_group_mismatch"}
    assert v.checks["crystallm_space_group"].detail == "stated F-43m, detected Fm-3m"


@pytest.mark.parametrize(
    "a, reason",
    [
        ("3.6000", "crystallm_bond_length_unreasonable"),  # Na-Cl 1.80 A / expected 2.83 A = 0.64 < 0.68
        ("4.0000", ""),  # 0.71: inside the 1 +- 0.32 window
        ("6.5000", ""),  # 1.15
        ("8.0000", "crystallm_no_bonds"),  # 1.41: CrystalNN keeps no bond at all, CrystaLLM's score divides by zero
    ],
)
def test_bond_length_sub_check(a, reason):
    # expected Na-Cl: the electronegativities differ by >= 1.7, so Na's cationic + Cl's anionic radius (1.16 + 1.67 A)
    bond = crystallm_is_valid(NACL.replace("5.6400", a)).checks["crystallm_bond_length"]
    assert bond.reason == reason
    if reason == "crystallm_bond_length_unreasonable":
        assert bond.value == 0.0 and "ratio 0.64" in bond.detail


def test_bond_length_skips_own_images_and_fails_without_bonds():
    # one Cu per primitive cell: every CrystalNN neighbour is the site's own image, which CrystaLLM skips, so its score
    # divides by zero; the strict rule counts those bonds and passes
    cu = structure_to_text(Structure(Lattice.cubic(2.55), ["Cu"], [[0, 0, 0]]), mode="p1")
    assert _failed(cu)["crystallm_bond_length"] == "crystallm_no_bonds"
    assert check_sample(cu).checks["bond_length"].ok


def test_bond_length_unknown_radius_fails():
    # He has neither an electronegativity nor an atomic radius in pymatgen: CrystaLLM's radius sum raises
    nahe = structure_to_text(Structure(Lattice.cubic(3.0), ["Na", "He"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert _failed(nahe)["crystallm_bond_length"] == "crystallm_bad_radius"


def test_orbit_score_equals_the_all_site_score(structures):
    for s in structures[:8]:
        t = structure_to_text(s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cs = Structure.from_str(crystallm_cif(parse_canonical(t)), fmt="cif")
        reps = crystallm_is_valid(t).checks["crystallm_bond_length"]
        full = bond_length_reasonableness(cs)
        assert (reps.ok, reps.reason, reps.value) == (full.ok, full.reason, full.value), t.splitlines()[0]


def test_crystallm_cif_holds_the_texts_own_structure(structures):
    """pymatgen reading the CIF with the operators of the text's setting gets the structure cifllm's parser gets."""
    assert symmetry_operators_xyz(225, "cif-v2")[0] == "x, y, z" and len(symmetry_operators_xyz(225, "cif-v2")) == 192
    for s in structures:
        for fmt in ("cif-v1", "cif-v2"):
            t = structure_to_text(s, text_format=fmt)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cs = Structure.from_str(crystallm_cif(parse_canonical(t)), fmt="cif")
            ours = text_to_structure(t)
            assert len(cs) == len(ours) and cs.composition.almost_equals(ours.composition), (fmt, t.splitlines()[0])


def test_unparsable_text_fails_every_sub_check_with_its_reason():
    v = crystallm_is_valid("data_NaCl\nnot a cif")
    assert not v.valid and {c.ok for c in v.checks.values()} == {False}
    assert v.reason.startswith("crystallm_")


def test_resource_gate_is_a_failure_with_its_reason():
    v = crystallm_is_valid(NACL, max_sites=4)  # 8 sites
    assert v.checks["crystallm_bond_length"].reason == "crystallm_resource_gate" and not v.valid
    # 1,000 rows stated with multiplicity 1 on general positions of Fm-3m: 192,000 sites for a CIF reader to make
    # (minutes and gigabytes in pymatgen); the gate counts the images first and refuses in a fraction of a second
    rows = "".join(f"Na Na{i} 1 a 0.{(37 * i) % 9973:04d} 0.{(53 * i) % 9967:04d} 0.{(71 * i) % 9949:04d} 1\n" for i in range(1000))
    t0 = time.perf_counter()
    v = crystallm_is_valid(NACL[: NACL.index("Na Na0")] + rows)
    assert time.perf_counter() - t0 < 5
    assert v.checks["crystallm_space_group"].reason == v.checks["crystallm_bond_length"].reason == "crystallm_resource_gate"


def test_check_sample_names_both_verdicts_and_metrics_count_their_agreement():
    crystallm_only = NACL.replace("_cell_formula_units_Z 4", "_cell_formula_units_Z 3")  # strict: Z mismatch
    neither = NACL.replace("data_Na4Cl4", "data_Na8Cl8")
    verdicts = [check_sample(t).to_json() for t in (NACL, crystallm_only, neither)]
    assert [(v["consistent"], v["consistent_strict"]) for v in verdicts] == [(True, True), (True, False), (False, False)]
    assert verdicts[1]["valid_all"] and verdicts[1]["reason"] == "z_mismatch"  # the strict failure is still named
    m = summarize(verdicts)
    assert m["consistency_agreement"] == {"both": 1, "crystallm_only": 1, "strict_only": 0, "neither": 1}
    assert m["counts"]["consistent"] == 2 and m["counts"]["consistent_strict"] == 1
    assert m["failure_reasons"]["crystallm_multiplicity"] == {"crystallm_multiplicity_mismatch": 1}


def test_report_shows_both_definitions(tmp_path):
    from cifllm.evaluation.report import write_report
    from cifllm.evaluation.run import DEFINITIONS

    verdicts = [check_sample(t).to_json() for t in (NACL, NACL.replace("_cell_formula_units_Z 4", "_cell_formula_units_Z 3"))]
    m = summarize(verdicts)
    m["definitions"] = DEFINITIONS
    md = write_report(tmp_path, m, verdicts)[0].read_text()
    assert "## Self-consistency: CrystaLLM's definition vs the strict rule" in md and "| pass | fail | 1 |" in md
    assert "| consistent | 2 |" in md and "| consistent_strict | 1 |" in md and "CrystaLLM is_sensible" in md


def test_crystallm_bond_check_is_bounded_like_the_strict_one():
    """An elongated cell whose Voronoi search would run away (999 A axis) is refused before CrystalNN, in seconds,
    by the same bounds as the strict bond check (it ran for minutes before)."""
    import time

    from pymatgen.core import Lattice, Structure

    from cifllm.cif import parse_canonical, structure_to_text
    from cifllm.evaluation.crystallm_consistency import check_crystallm

    s = Structure(Lattice.orthorhombic(5.7, 5.7, 999.0), ["Na", "Cl"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.001], [0, 0.5, 0.001], [0, 0.5, 0.3], [0.5, 0, 0.3], [0.5, 0.5, 0.6], [0, 0, 0.6]])
    t0 = time.perf_counter()
    v = check_crystallm(parse_canonical(structure_to_text(s)))
    assert time.perf_counter() - t0 < 60
    bond = v.checks["crystallm_bond_length"]
    assert bond.ok is False and bond.reason == "crystallm_resource_gate" and ("bond_search_too_large" in bond.detail or "cell_too_sparse" in bond.detail)
