import random

import pytest
from pymatgen.core import Composition, Lattice, Structure

from cifllm.cif import (
    SPACE_GROUP_SYMBOLS,
    CIFError,
    format_formula,
    parse_canonical,
    space_group_number,
    structure_to_text,
    text_to_structure,
)
from cifllm.cif.io import read_cif_text
from cifllm.cif.matching import make_matcher, round_trip


def test_space_group_table():
    assert len(SPACE_GROUP_SYMBOLS) == 230 == len(set(SPACE_GROUP_SYMBOLS))
    assert SPACE_GROUP_SYMBOLS[0] == "P1" and space_group_number("Fm-3m") == 225 and space_group_number("P2_1/c") == 14


@pytest.mark.parametrize("mode", ["symmetrized", "p1"])
def test_round_trip_prototypes(structures, mode):
    sm = make_matcher("roundtrip")
    for s in structures:
        text = structure_to_text(s, mode=mode)
        back = text_to_structure(text)
        assert sm.fit(s, back), text
        assert back.composition.reduced_formula == s.composition.reduced_formula


def test_layout_and_formula_prefix(structures):
    nacl = structures[0]
    text = structure_to_text(nacl)
    lines = text.splitlines()
    assert lines[0] == "data_Na4Cl4"
    assert lines[1] == "_symmetry_space_group_name_H-M Fm-3m"
    assert lines[3].startswith("_cell_length_a ") and lines[3].split()[1] == "5.6400"
    assert "Na Na0 4 a 0.0000 0.0000 0.0000 1" in lines and "Cl Cl1 4 b 0.5000 0.5000 0.5000 1" in lines
    assert "_atom_site_Wyckoff_symbol" in lines
    assert "_symmetry_equiv_pos_as_xyz" not in text
    assert text.startswith("data_" + format_formula(Composition("Na4Cl4")) + "\n")


def test_deterministic_under_site_order_and_supercell(structures):
    for s in structures[::5]:
        text = structure_to_text(s)
        shuffled = Structure.from_sites(random.Random(0).sample(list(s.sites), len(s)))
        assert structure_to_text(shuffled) == text
        assert structure_to_text(s * (2, 1, 1)) == text


def test_p1_mode_lists_every_site(structures):
    s = structures[0]
    text = structure_to_text(s, mode="p1")
    parsed = parse_canonical(text)
    assert parsed.sg_number == 1 and len(parsed.sites) == len(s.get_reduced_structure())


def test_format_formula():
    assert format_formula(Composition("ClNa")) == "Na1Cl1"
    assert format_formula(Composition("Na2Cl2"), reduced=True) == "NaCl"
    assert format_formula(Composition("Ti2O4Sr2")) == "Sr2Ti2O4"
    assert format_formula("Li0.5CoO2") == "Li0.5Co1O2"


def test_partial_occupancy_round_trip():
    s = Structure(Lattice.cubic(4.0), [{"Pd": 0.75, "Ag": 0.25}, "Sr"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    text = structure_to_text(s)
    assert "0.7500" in text and "0.2500" in text
    back = text_to_structure(text)
    assert not back.is_ordered and make_matcher("roundtrip").fit(s, back)


def test_oxidation_states_dropped():
    cif = (
        "data_x\n_symmetry_space_group_name_H-M 'P 1'\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_Int_Tables_number 1\n"
        "loop_\n _atom_type_symbol\n _atom_type_oxidation_number\n  Cs+ 1.0\n  Cl- -1.0\n"
        "loop_\n_atom_site_type_symbol\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        "_atom_site_occupancy\nCs+ Cs0 0 0 0 1\nCl- Cl1 0.5 0.5 0.5 1\n"
    )
    s = read_cif_text(cif)
    text = structure_to_text(s)
    assert text.startswith("data_Cs1Cl1\n_symmetry_space_group_name_H-M Pm-3m")
    assert round_trip(s).ok


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("", "empty"),
        ("hello world", "no_data_block"),
        ("data_NaCl\n_cell_length_a 5\n", "missing_tag"),
    ],
)
def test_parse_errors_have_reasons(bad, reason):
    with pytest.raises(CIFError) as exc:
        text_to_structure(bad)
    assert exc.value.reason == reason


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def test_corrupted_canonical_texts(structures):
    good = structure_to_text(structures[0])
    cases = {
        "bad_space_group": _mutate(good, "H-M Fm-3m", "H-M Xx-9"),
        "space_group_mismatch": _mutate(good, "_symmetry_Int_Tables_number 225", "_symmetry_Int_Tables_number 12"),
        "unknown_element": _mutate(good, "Na Na0", "Qq Na0"),
        "bad_site_row": good.rstrip("\n")[:-12] + "\n",  # truncated output
        "bad_cell": _mutate(good, "_cell_angle_alpha 90.0000", "_cell_angle_alpha 190.0000"),
        "bad_number": _mutate(good, "_cell_length_a 5.6400", "_cell_length_a nan"),
        "too_many_sites": _mutate(good, "Na Na0 4 ", "Na Na0 40000 "),
        "bad_occupancy": _mutate(good, "0.0000 0.0000 0.0000 1", "0.0000 0.0000 0.0000 1.7"),
    }
    for reason, text in cases.items():
        with pytest.raises(CIFError) as exc:
            text_to_structure(text)
        assert exc.value.reason == reason, (reason, exc.value)


def test_read_cif_text_rejects_non_cif():
    for text, reason in [("", "empty"), ("just words", "not_cif"), ("a\x00b _cell_length_a _atom_site_", "binary")]:
        with pytest.raises(CIFError) as exc:
            read_cif_text(text, "x.cif")
        assert exc.value.reason == reason and "x.cif" in str(exc.value)
    malformed = "data_x\n_cell_length_a 4\n_atom_site_fract_x\nloop_\n"
    with pytest.raises(CIFError) as exc:
        read_cif_text(malformed, "bad.cif")
    assert exc.value.reason == "unparsable"
