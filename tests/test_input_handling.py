"""Issue 31, items 1-7: input handling found with damaged and experimental CIFs. One test (or a few) per item; each
failed on the code before the fix."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from cifllm.cif import CIFError, structure_to_text, text_to_structure
from cifllm.cif.canonical import MAX_FORMULA_CHARS, OCCUPANCY_TOLERANCE
from cifllm.cif.formula import parse_stated_formula
from cifllm.cif.io import read_cif_text, structure_block
from cifllm.data.filters import FilterSettings, Reject, process_record
from cifllm.data.readers import RawRecord
from cifllm.evaluation import bond_gates, checks
from cifllm.evaluation.checks import CheckSettings, check_bond_lengths, check_sample, check_structural


def _record(cif: str) -> RawRecord:
    return RawRecord("exp", "exp.csv", 0, "r", cif=cif)


def _exp_cif(formula: str, rows: str, name: str = "global", cell: tuple[float, float, float] = (5.0, 5.0, 5.0)) -> str:
    """An experimental-style CIF (labels, P1 operators, occupancies, ``_chemical_formula_sum`` per formula unit)."""
    a, b, c = cell
    return (
        f"data_{name}\n_chemical_formula_sum '{formula}'\n_cell_length_a {a}\n_cell_length_b {b}\n_cell_length_c {c}\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\n"
        "loop_\n_symmetry_equiv_pos_as_xyz\n'x, y, z'\n"
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        f"_atom_site_occupancy\n{rows}"
    )


# ---------------------------------------------------------------- 1. formulas with groups, brackets, hydrate dots

# CaCO3 in P1: Ca at the origin, C at the centre, three O around it (a toy geometry, distances > 1.2 A)
_CACO3_ROWS = "Ca1 Ca 0 0 0 1\nC1 C 0.5 0.5 0.5 1\nO1 O 0.75 0.5 0.5 1\nO2 O 0.5 0.75 0.5 1\nO3 O 0.5 0.5 0.75 1\n"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Mg3 Si4 (O12 H2)", "Mg3 Si4 O12 H2"),
        ("Ca (C O3)", "Ca C O3"),
        ("Ca [C O3]", "Ca C O3"),
        ("Cu S O4 . 5 H2 O", "Cu S O9 H10"),
        ("Cu S O4 \u00b7 5 H2 O", "Cu S O9 H10"),
        ("Al2 Si2 O5 (O H)4", "Al2 Si2 O9 H4"),
        ("2(C6 H5 N), Cu Cl4", "C12 H10 N2 Cu Cl4"),
        ("C12 H17 N4 O S 1+, C6 H2 N3 O7 1-", "C18 H19 N7 O8 S"),
    ],
)
def test_stated_formulas_with_groups_parse(value, expected):
    from pymatgen.core import Composition

    assert parse_stated_formula(value).almost_equals(Composition(expected))


@pytest.mark.parametrize("value", ["(Mg,Fe)2 Si O4", "Xx2 O3", "Na Cl)"])
def test_unreadable_stated_formula_is_a_named_error(value):
    with pytest.raises(CIFError) as e:
        parse_stated_formula(value)
    assert e.value.reason == "formula_unparsable"
    assert parse_stated_formula("?") is None and parse_stated_formula(" . ") is None


def test_parenthesised_formula_is_cross_checked():
    """'Ca (C O3)' was not compared at all: a row-deleted or element-swapped record was kept with a wrong composition."""
    good = _exp_cif("Ca (C O3)", _CACO3_ROWS)
    assert not isinstance(process_record(_record(good), FilterSettings()), Reject)
    row_deleted = _exp_cif("Ca (C O3)", _CACO3_ROWS.replace("O3 O 0.5 0.5 0.75 1\n", ""))
    swapped = _exp_cif("Ca (C O3)", _CACO3_ROWS.replace("Ca1 Ca", "Sr1 Sr"))
    for bad in (row_deleted, swapped):
        r = process_record(_record(bad), FilterSettings())
        assert isinstance(r, Reject) and r.reason == "formula_disagrees", r
    unparsable = _exp_cif("(Ca,Sr) (C O3)", _CACO3_ROWS)
    r = process_record(_record(unparsable), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_unparsable", r


# ---------------------------------------------------------------- 2. several data blocks of the same name


def test_first_of_equally_named_blocks_is_read():
    """pymatgen keys blocks by name and keeps the last of equal names: the file was kept as the second compound."""
    caco3 = _exp_cif("Ca C O3", _CACO3_ROWS)
    nacl = _exp_cif("Na Cl", "Na1 Na 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1\n", cell=(3.2, 3.2, 3.2))
    two = caco3 + "\n" + nacl  # both blocks are data_global
    assert structure_block(two).startswith("data_global") and "Ca1" in structure_block(two)
    assert read_cif_text(two).composition.reduced_formula == "CaCO3"
    r = process_record(_record(two), FilterSettings())
    assert not isinstance(r, Reject) and r.reduced_formula == "CaCO3", r
    # the formula is read from the block that is parsed: the first block's formula against the first block's sites
    wrong_first = _exp_cif("Na Cl", _CACO3_ROWS) + "\n" + nacl
    r = process_record(_record(wrong_first), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_disagrees", r
    # a leading block without a structure (publication data) is skipped
    header_only = "data_global\n_journal_name_full 'Am. Mineral.'\n_chemical_formula_sum 'Na Cl'\n\n" + caco3
    assert read_cif_text(header_only).composition.reduced_formula == "CaCO3"


# ---------------------------------------------------------------- 3. the hydrogen rule


_LIH_ROWS = "Li1 Li 0 0 0 1\nH1 H 0.5 0.5 0.5 {occ}\n"


def test_hydrogen_rule():
    """A hydride whose H has occupancy 0 was kept as the bare metal, hydrous minerals without their H."""
    lih = _exp_cif("Li H", _LIH_ROWS.format(occ=1), cell=(4.0, 4.0, 4.0))
    r = process_record(_record(lih), FilterSettings())
    assert not isinstance(r, Reject) and r.reduced_formula == "LiH", r
    zero_h = _exp_cif("Li H", _LIH_ROWS.format(occ=0), cell=(4.0, 4.0, 4.0))
    unlocated = _exp_cif("Ca (C O3) . H2 O", _CACO3_ROWS)
    for cif in (zero_h, unlocated):
        r = process_record(_record(cif), FilterSettings())
        assert isinstance(r, Reject) and r.reason == "hydrogen_missing", r
    half_h = _exp_cif("Li H2", _LIH_ROWS.format(occ=1), cell=(4.0, 4.0, 4.0))  # located, but not all of it
    r = process_record(_record(half_h), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_disagrees", r


# ---------------------------------------------------------------- 4. bond check on ~1,000 symmetry-unique sites


def _jittered_p1(n: int = 10, spacing: float = 2.5, seed: int = 0) -> Structure:
    """n^3 atoms (rock-salt order) on a grid, each moved by up to 0.3 A: no symmetry, every site unique."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    frac = (g + 0.5 + rng.uniform(-0.12, 0.12, g.shape)) / n
    return Structure(Lattice.cubic(spacing * n), ["Mg" if sum(p) % 2 else "O" for p in g], frac)


def test_bond_check_is_bounded_on_a_huge_p1_text():
    """CrystalNN ran 14-23 s on one P1 text of 1,000 rows (1,000 symmetry-unique sites)."""
    import pymatgen.analysis.local_env  # noqa: F401  (import time is not the check's)

    s = _jittered_p1(10)
    t0 = time.perf_counter()
    r = check_bond_lengths(s, CheckSettings(), equivalent_atoms=np.arange(len(s)))
    assert time.perf_counter() - t0 < 2.0
    assert r.ok is False and r.reason == "too_many_sites_for_bond_check" and r.value is None
    small = _jittered_p1(3)  # 27 unique sites: analysed
    assert check_bond_lengths(small, CheckSettings(), equivalent_atoms=np.arange(len(small))).reason != "too_many_sites_for_bond_check"


def test_isolated_atoms_fail_the_bond_check(monkeypatch):
    """Atoms 87 A apart passed the bond check ("no bond with known radii"); now the sparse cell is refused before
    CrystalNN, and an atom with no neighbour within 24 A counts as a failed bond."""
    s = Structure(Lattice.cubic(100.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    r = check_bond_lengths(s)
    assert r.ok is False and r.reason == "cell_too_sparse_for_bond_check" and r.value is None
    monkeypatch.setattr(bond_gates, "MAX_BOND_VOLUME_PER_SITE", float("inf"))
    r = check_bond_lengths(s)
    assert r.ok is False and r.reason == "bond_length_unreasonable" and "no neighbour" in r.detail


# ---------------------------------------------------------------- 5. the data_ line


def test_huge_data_line_is_refused_before_the_formula_check(structures):
    """A 1.6 MB formula took 17-25 s (93 s on a busy machine) in check_formula."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = structure_to_text(structures[0]).splitlines()
    lines[0] = "data_" + "Na1Cl1" * 270_000
    t0 = time.perf_counter()
    v = check_sample("\n".join(lines) + "\n")
    assert time.perf_counter() - t0 < 1.0
    assert v.reason == "formula_too_long" and v.checks["parse"].reason == "formula_too_long"
    rows = "Na1 Na 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1\n"
    cif = _exp_cif("Na Cl " * (MAX_FORMULA_CHARS // 6 + 1), rows, cell=(3.2, 3.2, 3.2))
    r = process_record(_record(cif), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_too_long", r
    # the same in a CIF: pymatgen's own formula check (check_cif) took > 300 s on a 1.6 MB _chemical_formula_sum
    cif = _exp_cif("Na1 Cl1 " * 200_000, rows, cell=(3.2, 3.2, 3.2))
    t0 = time.perf_counter()
    r = process_record(_record(cif), FilterSettings())
    assert time.perf_counter() - t0 < 3.0
    assert isinstance(r, Reject) and r.reason == "formula_too_long", r


# ---------------------------------------------------------------- 6. neighbour-list memory in huge cells


@pytest.mark.parametrize("length", [400.0, 999.0])
def test_huge_cell_gets_a_clean_verdict_quickly(length):
    """A 400 A cell peaked at 2.5 GB in check_structural, a 999 A cell took 17 s and 2.7 GB or ended in MemoryError."""
    s = Structure(Lattice.cubic(length), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9004]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = structure_to_text(s, mode="p1")
    r = checks._neighbor_search_radius(text_to_structure(text), 0.5)
    coords = text_to_structure(text).cart_coords
    extent = coords.max(axis=0) - coords.min(axis=0)
    assert np.prod(np.ceil((extent + 2 * max(r, 1.0) + 1e-6) / max(r, 1.0))) <= checks.MAX_NEIGHBOR_CUBES
    t0 = time.perf_counter()
    res = check_structural(text_to_structure(text))
    assert time.perf_counter() - t0 < 1.0
    assert res.ok is False and res.reason == "atoms_too_close"  # the two Cl 0.4 A apart are still found
    v = check_sample(text)
    assert all(c.reason != "check_crashed" for c in v.checks.values()), {k: c.detail for k, c in v.checks.items()}
    assert v.checks["structural"].reason == "atoms_too_close"


# ---------------------------------------------------------------- 7. occupancies just above 1


def _with_occupancy(text: str, occ: str) -> str:
    lines = text.splitlines()
    return "\n".join(ln if not ln.endswith(" 1") or ln.startswith("_") else ln[:-1] + occ for ln in lines) + "\n"


@pytest.mark.parametrize("excess", ["0000000000000002", "0005", "001", "01"])
def test_occupancy_within_tolerance_is_rescaled(structures, excess):
    occ = "1." + excess
    assert float(occ) <= 1 + OCCUPANCY_TOLERANCE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        canonical = _with_occupancy(structure_to_text(structures[0]), occ)
    s = text_to_structure(canonical)
    assert s.is_ordered and all(sum(site.species.values()) == pytest.approx(1.0) for site in s)
    assert check_sample(canonical).checks["parse"].ok
    cif = str(CifWriter(structures[0])).replace("  1\n", f"  {occ}\n")
    assert read_cif_text(cif).is_ordered
    assert not isinstance(process_record(_record(cif), FilterSettings()), Reject)


@pytest.mark.parametrize("occ", ["1.0100001", "1.05", "2"])
def test_occupancy_above_tolerance_is_a_named_reject(structures, occ):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        canonical = _with_occupancy(structure_to_text(structures[0]), occ)
    v = check_sample(canonical)
    assert v.checks["parse"].reason == "bad_occupancy", v.checks["parse"]
    cif = str(CifWriter(structures[0])).replace("  1\n", f"  {occ}\n")
    r = process_record(_record(cif), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "bad_occupancy", r


def test_elongated_cell_does_not_run_away_in_the_bond_check(structures):
    """NaCl with a = 999 A: CrystalNN's Voronoi search widened its sphere to ~1,000 A (> 5 min, gigabytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = structure_to_text(structures[0]).splitlines()
    text = "\n".join("_cell_length_a 999.0000" if ln.startswith("_cell_length_a") else ln for ln in lines) + "\n"
    t0 = time.perf_counter()
    v = check_sample(text)
    assert time.perf_counter() - t0 < 20.0
    assert v.checks["bond_length"].reason == "cell_too_sparse_for_bond_check" and v.checks["bond_length"].value is None
    # dense but elongated: a chain of 80 atoms 2.5 A apart in a 200 x 3 x 3 A cell (22.5 A^3 per site)
    chain = Structure(Lattice.orthorhombic(200.0, 3.0, 3.0), ["Cu"] * 80, [[i / 80, 0, 0] for i in range(80)])
    assert bond_gates.voronoi_reach(chain) > bond_gates.MAX_BOND_SEARCH_ATOMS
    t0 = time.perf_counter()
    r = check_bond_lengths(chain)
    assert time.perf_counter() - t0 < 1.0
    assert r.ok is False and r.reason == "bond_search_too_large" and r.value is None
    assert bond_gates.voronoi_reach(structures[0]) < 1_000  # a dense cell: far below the bound
