"""Canonical text v2 (Wyckoff column) and the constraint engine: the machine accepts every real v2 text, and with
random choices (the machine alone, and a random-weight model through HF generate) every sample parses, keeps its
prompt's composition and has consistent computed fields - nothing but the engine can make that true."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from pymatgen.core import Composition, Element, Lattice, Structure

from cifllm.cif import CIFError, parse_canonical, structure_to_text, text_to_structure
from cifllm.cif.bonds import expected_bond_length
from cifllm.cif.canonical import (
    LOOP_TAGS,
    SPACE_GROUP_SYMBOLS,
    cell_volume,
    element_order,
    format_formula,
    format_number,
    space_group_number,
)
from cifllm.cif.wyckoff import coordinate_plan, space_group_wyckoff, wyckoff_coords
from cifllm.sampling.constraints import (
    CIFConstraint,
    ConstraintConfig,
    ConstraintError,
    State,
    TokenTable,
    _counts_tokens,
    crystal_system_rules,
    min_rows,
    realizable,
    realizable_space_groups,
    row_tokens,
    rows_tokens,
)
from cifllm.tokenization import build_tokenizer

TOK = build_tokenizer()
TABLE = TokenTable(TOK)


def _ids(text: str) -> list[int]:
    return TOK.encode(text, add_special_tokens=False).ids


def _walk(prompt: str, rng: np.random.Generator, config: ConstraintConfig | None = None) -> tuple[str, CIFConstraint]:
    """Sample uniformly among the allowed tokens until the machine ends: a 'model' that knows nothing."""
    m = CIFConstraint(TABLE, config or ConstraintConfig(max_tokens=1400))
    m.feed_prompt(_ids(prompt))
    out: list[int] = []
    while not m.done:
        a = m.allowed()
        tok = int(a) if isinstance(a, int | np.integer) else int(rng.choice(np.flatnonzero(a)))
        m.advance(tok)
        out.append(tok)
    return prompt + TOK.decode([t for t in out if t != TABLE.eos]), m


def _consistent(text: str) -> None:
    """Every computed field agrees with the rest (what the engine forces)."""
    p = parse_canonical(text)
    assert p.text_format == "cif-v2"
    assert space_group_number(p.sg_symbol) == p.sg_number
    assert abs(cell_volume(p.abc, p.angles) - p.volume) < 1e-3
    comp = Composition(p.formula)
    red, z = comp.get_reduced_composition_and_factor()
    z_expected = int(round(z)) if abs(z - round(z)) < 1e-6 and round(z) >= 1 else 1  # the writer's rule (O5 -> O2 x 2.5)
    assert p.z == z_expected and Composition(p.reduced_formula) == red
    counts: dict[str, float] = {}
    for i, row in enumerate(p.sites):
        assert row.label == f"{row.symbol}{i}"
        counts[row.symbol] = counts.get(row.symbol, 0) + row.multiplicity
    assert Composition(counts) == comp
    s = text_to_structure(text)  # expands by symmetry; wyckoff_mismatch would raise
    assert s.composition == comp  # site counts add up: nothing merged, nothing missing


def test_wyckoff_table_is_pyxtal_and_first_representatives_are_projections():
    pytest.importorskip("pyxtal")
    from cifllm.cif.wyckoff import build_table

    shipped = json.loads((__import__("importlib.resources").resources.files("cifllm") / "resources" / "wyckoff.json").read_text())
    assert build_table() == shipped
    for n in range(1, 231):
        for w in space_group_wyckoff(n):
            r = np.asarray(w.rot)
            assert np.array_equal(r @ r, r)


def test_v2_text_round_trip_and_wyckoff(structures):
    for s in structures:
        text = structure_to_text(s)
        p = parse_canonical(text)
        assert p.text_format == "cif-v2" and all(r.wyckoff for r in p.sites)
        back = text_to_structure(text)
        assert back.composition.reduced_composition == s.composition.reduced_composition
        # v1 still written and parsed
        v1 = structure_to_text(s, text_format="cif-v1")
        assert parse_canonical(v1).text_format == "cif-v1"
        assert text_to_structure(v1).composition.reduced_composition == s.composition.reduced_composition


def test_first_representative_form_is_written():
    # rock salt in Fm-3m: Na at 4a (0,0,0), Cl at 4b (1/2,1/2,1/2)
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    text = structure_to_text(s)
    assert "Na Na0 4 a 0.0000 0.0000 0.0000 1" in text and "Cl Cl1 4 b 0.5000 0.5000 0.5000 1" in text
    # x,0,0-type position: the free coordinate is written first (ITA form), not 0,x,0
    plan = coordinate_plan(225, "e")
    assert [k for k, *_ in plan] == ["free", "const", "const"]


def test_wyckoff_mismatch_is_a_parse_error():
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    text = structure_to_text(s)
    with pytest.raises(CIFError) as e:
        text_to_structure(text.replace("Cl Cl1 4 b 0.5000 0.5000 0.5000", "Cl Cl1 4 b 0.2500 0.5000 0.5000"))
    assert e.value.reason == "wyckoff_mismatch"
    with pytest.raises(CIFError) as e:
        text_to_structure(text.replace("Cl Cl1 4 b", "Cl Cl1 8 b"))
    assert e.value.reason == "wyckoff_mismatch"


def test_long_axis_orbits_use_an_angstrom_tolerance():
    """An 87-layer polytype with an aperiodic stacking along a 219 A axis (the SiC-87R case). The old tolerance,
    symprec / shortest axis as a fraction, was ~7 A along c: the text re-expanded to 108 of the 174 atoms (checked
    against the code before the fix)."""
    rng = np.random.default_rng(3)
    n = 87
    seq = [0]
    while len(seq) < n:
        seq.append(int(rng.choice([k for k in range(3) if k != seq[-1]])))
    shifts = [(0, 0), (1 / 3, 2 / 3), (2 / 3, 1 / 3)]
    species, coords = [], []
    for k, pos in enumerate(seq):
        x, y = shifts[pos]
        species += ["Si", "C"]
        coords += [[x, y, k / n], [x, y, k / n + 0.0253 * 30 / n]]
    s = Structure(Lattice.hexagonal(3.08, 219.3), species, coords)
    for fmt in ("cif-v1", "cif-v2"):
        back = text_to_structure(structure_to_text(s, text_format=fmt))
        assert back.composition.reduced_composition == s.composition.reduced_composition, fmt
        assert len(back) == len(s), fmt


def test_machine_accepts_every_real_v2_text(structures):
    for s in structures:
        text = structure_to_text(s)
        m = CIFConstraint(TABLE)
        for tok in _ids(text) + [TABLE.eos]:
            a = m.allowed()
            assert (a == tok) if isinstance(a, int | np.integer) else a[tok], text
            m.advance(tok)
        assert m.done


# Pd17Se15 (SuperCon3D, Pm-3m): 1b and 3d used, then Se on 12i and 12j while 1a is still free. The machine used to end
# a multiplicity choice as soon as one option was complete, so "1" always became 1 (never 12): this real CIF was refused.
PD17SE15 = """data_Pd34Se30
_symmetry_space_group_name_H-M Pm-3m
_symmetry_Int_Tables_number 221
_cell_length_a 10.6400
_cell_length_b 10.6400
_cell_length_c 10.6400
_cell_angle_alpha 90.0000
_cell_angle_beta 90.0000
_cell_angle_gamma 90.0000
_cell_volume 1204.5501
_cell_formula_units_Z 2
_chemical_formula_structural Pd17Se15
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_symmetry_multiplicity
_atom_site_Wyckoff_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Pd Pd0 1 b 0.5000 0.5000 0.5000 1
Pd Pd1 3 d 0.5000 0.0000 0.0000 1
Pd Pd2 6 e 0.2380 0.0000 0.0000 1
Pd Pd3 24 m 0.3520 0.3520 0.1500 1
Se Se4 6 f 0.2570 0.5000 0.5000 1
Se Se5 12 i 0.0000 0.2300 0.2300 1
Se Se6 12 j 0.5000 0.1680 0.1680 1
"""


def test_a_multiplicity_that_extends_another_can_be_chosen():
    """Multiplicity 12 while 1 is allowed too (1a free): the choice runs to the separator."""
    m = CIFConstraint(TABLE, ConstraintConfig(max_tokens=4096))
    for tok in _ids(PD17SE15) + [TABLE.eos]:
        a = m.allowed()
        assert (a == tok) if isinstance(a, int | np.integer) else a[tok], TOK.decode(_ids(PD17SE15)[: m.n_tokens])
        m.advance(tok)
    assert m.done


# ----------------------------------------------------------------------------------------------------------------
# the state machine: its named states, in order, each with its allowed-token rule


def _trace(text: str, config: ConstraintConfig | None = None) -> list[tuple[State, str]]:
    """Feed ``text`` + EOS to a machine; the text each state covered, in order (consecutive tokens of one state
    joined)."""
    m = CIFConstraint(TABLE, config or ConstraintConfig())
    out: list[tuple[State, list[int]]] = []
    for tok in _ids(text) + [TABLE.eos]:
        if not out or out[-1][0] is not m.state:
            out.append((m.state, []))
        out[-1][1].append(tok)
        m.advance(tok)
    assert m.done and m.state is State.DONE and m.allowed() == TABLE.eos
    return [(state, TOK.decode(ids, skip_special_tokens=False)) for state, ids in out]


def test_a_canonical_cif_passes_every_named_state_in_order():
    """A real CIF (Pd17Se15: fixed points and free positions) read by the machine: each section of the text is
    consumed by the state named after it, rows cycle through their four states, and every state appears."""
    lines = PD17SE15.splitlines(keepends=True)
    expected = [
        (State.DATA, "data_"),
        (State.FORMULA, lines[0][len("data_") :]),
        (State.SPACE_GROUP, "".join(lines[1:3])),
        (State.CELL, "".join(lines[3:9])),
        (State.COMPUTED, "".join(lines[9:12])),
        (State.LOOP_HEADER, "".join(lines[12:21])),
    ]
    for line in lines[21:]:
        el, label, mult, letter, x, y, z, occ = line.split()
        expected += [
            (State.ROW_SITE, f"{el} {label} "),
            (State.ROW_POSITION, f"{mult} {letter} "),
            (State.ROW_COORDINATES, f"{x} {y} {z}"),
            (State.ROW_OCCUPANCY, f" {occ}\n"),
        ]
    expected.append((State.END, "<|eos|>"))
    assert _trace(PD17SE15, ConstraintConfig(max_tokens=4096)) == expected
    assert {s for s, _ in expected} == set(State) - {State.DONE}


def _at(prefix: str, config: ConstraintConfig | None = None) -> CIFConstraint:
    """A machine that has consumed ``prefix`` as sampled tokens (not as a prompt)."""
    m = CIFConstraint(TABLE, config or ConstraintConfig())
    for tok in _ids(prefix):
        m.advance(tok)
    return m


def _allowed_ids(m: CIFConstraint) -> set[int]:
    a = m.allowed()
    return {int(a)} if isinstance(a, int | np.integer) else set(np.flatnonzero(a).tolist())


def _forced_run(m: CIFConstraint) -> tuple[str, list[State]]:
    """Advance through forced tokens up to the next real choice (or the end): (their text, the states passed)."""
    ids: list[int] = []
    states: list[State] = []
    while not m.done and isinstance(a := m.allowed(), int | np.integer):
        if not states or states[-1] is not m.state:
            states.append(m.state)
        ids.append(int(a))
        m.advance(int(a))
    return TOK.decode(ids, skip_special_tokens=False), states


def _cubic_header(formula: str, symbol: str, a: float) -> str:
    """The canonical header of ``formula`` in space group ``symbol`` with a cubic metric of edge ``a`` (Angstrom),
    up to the atom-site rows."""
    red, z = Composition(formula).get_reduced_composition_and_factor()
    return (
        f"data_{formula}\n_symmetry_space_group_name_H-M {symbol}\n_symmetry_Int_Tables_number {space_group_number(symbol)}\n"
        + "".join(f"_cell_length_{x} {format_number(a)}\n" for x in "abc")
        + "".join(f"_cell_angle_{x} 90.0000\n" for x in ("alpha", "beta", "gamma"))
        + f"_cell_volume {format_number(cell_volume((a,) * 3, (90.0,) * 3))}\n_cell_formula_units_Z {int(z)}\n"
        + f"_chemical_formula_structural {format_formula(red, reduced=True)}\nloop_\n"
        + "".join(tag + "\n" for tag in LOOP_TAGS)
    )


def test_each_state_allows_what_its_rule_says():
    """The allowed set of each state is what its rule (the table in the module docstring) says, on Na4Cl4 with
    the default settings (no token budget)."""
    m = CIFConstraint(TABLE)
    assert m.state is State.DATA and m.allowed() == TABLE.one("data_")
    # FORMULA: any element up to max_z first; then a count without a leading zero; then more digits (<= max_atoms),
    # an element later in electronegativity order, or the newline
    newline = TABLE.one("\n")
    m = _at("data_")
    assert m.state is State.FORMULA
    assert _allowed_ids(m) == {i for i, el in TABLE.element_id.items() if Element(el).Z <= 94}
    assert _allowed_ids(_at("data_Na")) == set(TABLE.digit[1:])
    later = {i for i, el in TABLE.element_id.items() if Element(el).Z <= 94 and element_order(el) > element_order("Na")}
    assert _allowed_ids(_at("data_Na4")) == set(TABLE.digit) | later | {newline}
    assert _allowed_ids(_at("data_Na20")) == {TABLE.digit[0]} | later | {newline}  # Na200: max_atoms; Na201 is over
    # SPACE_GROUP: exactly the groups whose Wyckoff multiplicities realize the counts (Fm-3m has no 1-fold site)
    m = _at("data_Na1Cl1\n_symmetry_space_group_name_H-M ")
    assert m.state is State.SPACE_GROUP
    assert _allowed_ids(m) == {TABLE.vocab[SPACE_GROUP_SYMBOLS[n - 1]] for n in range(1, 231) if realizable(n, [1, 1])}
    assert TABLE.vocab["Fm-3m"] not in _allowed_ids(m) and TABLE.vocab["Pm-3m"] in _allowed_ids(m)
    # CELL: a free length from 1 to 100 A (no leading zero); the cubic system forces b = c = a and the angles
    header = _cubic_header("Na4Cl4", "Fm-3m", 5.64)
    cell_a = header.index("_cell_length_a ") + len("_cell_length_a ")
    m = _at(header[:cell_a])
    assert m.state is State.CELL and _allowed_ids(m) == set(TABLE.digit[1:])
    m = _at(header[: cell_a + len("5.6400\n")])
    text, states = _forced_run(m)
    # CELL (b, c, angles), COMPUTED, LOOP_HEADER, ROW_SITE (the first formula element), ROW_POSITION (Na4 fits only
    # the 4-fold positions)
    assert text == header[cell_a + len("5.6400\n") :] + "Na Na0 4 "
    assert states == [State.CELL, State.COMPUTED, State.LOOP_HEADER, State.ROW_SITE, State.ROW_POSITION]
    # ROW_POSITION: the two 4-fold fixed points of Fm-3m, 4a and 4b
    assert _allowed_ids(m) == {TABLE.vocab["a"], TABLE.vocab["b"]}
    # after 4a: its coordinates forced (a fixed point), occupancy 1; Cl's row forced too (4a is taken: only 4b is
    # left), then END once every count is used up
    m.advance(TABLE.vocab["a"])
    text, states = _forced_run(m)
    assert text == " 0.0000 0.0000 0.0000 1\nCl Cl1 4 b 0.5000 0.5000 0.5000 1\n<|eos|>"
    row = [State.ROW_COORDINATES, State.ROW_OCCUPANCY, State.ROW_SITE, State.ROW_POSITION]
    assert states == [State.ROW_POSITION, *row, *row[:2], State.END] and m.done and m.state is State.DONE
    # ROW_COORDINATES in P1 (every coordinate free): any digit for a first atom; the last free coordinate of a
    # later atom keeps min_bond_ratio x the expected bond length (at least min_distance) from the atoms written
    p1 = _cubic_header("Na4Cl4", "P1", 10.0) + "Na Na0 1 a 0."
    m = _at(p1)
    assert m.state is State.ROW_COORDINATES and _allowed_ids(m) == set(TABLE.digit)
    m = _at(p1 + "0000 0.0000 0.0000 1\nNa Na1 1 a 0.0000 0.0000 0.")
    cfg = ConstraintConfig()
    closest = max(cfg.min_distance, cfg.min_bond_ratio * expected_bond_length("Na", "Na"))  # ~2.5 A
    digits = {TABLE.digit.index(i) for i in _allowed_ids(m)}
    for d in range(10):
        ends = [min(z, 1 - z) * 10.0 for z in (d / 10, (d + 1) / 10)]  # distance to Na0 along c at the block's ends
        if min(ends) >= closest + 0.01:
            assert d in digits, d
        if max(ends) < closest:
            assert d not in digits, d
    assert {3, 4, 5, 6} <= digits and not {0, 1, 8, 9} & digits
    # level grammar: ROW_SITE lets the model pick any formula element, or EOS after a complete row
    m = _at(header + "Na Na0 4 a 0.0000 0.0000 0.0000 1\n", ConstraintConfig(level="grammar"))
    assert m.state is State.ROW_SITE and _allowed_ids(m) == {TABLE.vocab["Na"], TABLE.vocab["Cl"], TABLE.eos}


def test_realizability_knapsack():
    assert realizable(225, [4, 4]) and not realizable(225, [1, 1])  # Fm-3m has no 1-fold position
    assert realizable(1, [7, 3])  # P1 realizes anything
    assert 225 in realizable_space_groups((4, 4)) and 225 not in realizable_space_groups((1, 1))
    # elements are the tokenizer's symbols: not D/T, which pymatgen merges into H (a D23H96... walk broke accounting)
    assert {"H", "Og"} <= set(TABLE.element_id.values()) and not {"D", "T"} & set(TABLE.element_id.values())
    # fixed points are single-use: Pm-3m has 1a, 1b and no other 1-fold position
    assert realizable(221, [1, 1]) and not realizable(221, [1, 1, 1])


@pytest.mark.parametrize("prompt", ["", "data_Na4Cl4\n", "data_Li4Fe4P4O16\n", "data_Sr1Ti1O3\n_symmetry_space_group_name_H-M Pm-3m\n_symmetry_Int_Tables_number 221\n"])
def test_random_walk_always_parses_and_adheres(prompt):
    rng = np.random.default_rng(0)
    for _ in range(40):
        text, m = _walk(prompt, rng)
        assert not m.stats.dead_end, m.stats
        _consistent(text)
        if prompt:
            assert text_to_structure(text).composition.reduced_formula == Composition(prompt[5:].split("\n")[0]).reduced_formula


@pytest.mark.slow
def test_random_walk_1000_samples():
    rng = np.random.default_rng(1)
    prompts = ["", "data_Na4Cl4\n", "data_Li4Fe4P4O16\n", "data_Ba2Cu2O4\n"]
    for k in range(1000):
        text, m = _walk(prompts[k % 4], rng)
        assert not m.stats.dead_end, (m.stats, text)
        _consistent(text)


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        ("data_Na201Cl1\n", "atoms"),
        ("data_Na24Cl24\n_symmetry_space_group_name_H-M P1\n", "needs at least 48 atom-site rows"),
        ("data_Cl4Na4\n", "order"),
        ("data_Na1Cl1\n_symmetry_space_group_name_H-M Fm-3m\n", "cannot realize"),
    ],
)
def test_bad_prompts_fail_before_sampling(prompt, match):
    m = CIFConstraint(TABLE, ConstraintConfig(max_tokens=1024))
    with pytest.raises(ConstraintError, match=match):
        m.feed_prompt(_ids(prompt))


@pytest.mark.parametrize("prefix", ["data_", "data_Na", "data_Na4", "data_Na24Cl2", "data_Na4Cl4\n_symmetry_space_group_name_H-M "])
def test_a_prompt_ending_inside_a_choice_gets_the_models_allowed_set(prefix):
    """A free prefix may end where the machine reads the prompt's own tokens leniently (inside the formula, before
    the space-group symbol). The model then gets what it may write there - the set a machine has after the same
    tokens sampled - not the whole vocabulary (it got all 499 ids, and a random token then raised ConstraintError
    in the middle of generation); where nothing fits the token budget, the prompt is refused before sampling."""
    cfg = ConstraintConfig(max_tokens=1024)
    m = CIFConstraint(TABLE, cfg)
    m.feed_prompt(_ids(prefix))
    assert _allowed_ids(m) == _allowed_ids(_at(prefix, cfg))
    assert 1 < len(_allowed_ids(m)) < 200
    text, m = _walk(prefix, np.random.default_rng(0), cfg)
    assert not m.stats.dead_end and text.startswith(prefix)
    _consistent(text)
    with pytest.raises(ConstraintError, match="cannot be continued|too many atoms for max_tokens"):
        CIFConstraint(TABLE, ConstraintConfig(max_tokens=150)).feed_prompt(_ids(prefix))


def test_hf_engine_constrained_random_model(tmp_path):
    """A random-weight model through HF generate: every sample parses and keeps its prompt's composition."""
    from cifllm.sampling.engines import EngineError, GenerationParams, HFEngine
    from cifllm.sampling.prompts import build_prompt
    from cifllm.sampling.toy import save_random_llama

    model = save_random_llama(tmp_path / "m", shape="test", max_positions=2048)
    eng = HFEngine(model, device="cpu")
    prompts = [build_prompt(), build_prompt(composition="NaCl", z=4), build_prompt(composition="SrTiO3", space_group="Pm-3m")]
    params = GenerationParams(num_samples=6, max_new_tokens=1400, batch_size=18, constrained=True, top_k=10, temperature=0.8)
    gens = list(eng.generate(prompts, params))
    assert len(gens) == 18
    for g in gens:
        p = prompts[g.prompt_index]
        text = p.text + g.text
        assert g.finished and g.constraint is not None and not g.constraint["dead_end"]
        _consistent(text)
        if p.kind != "de_novo":
            assert text_to_structure(text).composition.reduced_formula == Composition(p.meta["formula"]).reduced_formula
    # unconstrained, the same model writes garbage: the engine is what makes the difference
    raw = list(eng.generate(prompts[:1], GenerationParams(num_samples=4, max_new_tokens=200)))
    assert not any(_parses(prompts[0].text + g.text) for g in raw)
    # a v1 model is refused before sampling
    meta = json.loads((model / "cifllm_tokenizer.json").read_text())
    (model / "cifllm_tokenizer.json").write_text(json.dumps({**meta, "version": "cif-v1"}))
    with pytest.raises(EngineError, match="cif-v1"):
        list(HFEngine(model, device="cpu").generate(prompts, params))


def _parses(text: str) -> bool:
    try:
        text_to_structure(text)
        return True
    except CIFError:
        return False


def test_grammar_level_is_well_formed_but_unaccounted():
    """The ablation level: computed fields forced (so the header is consistent), rows free - random choices then
    break the composition, which is what the full engine's accounting prevents."""
    rng = np.random.default_rng(5)
    cfg = ConstraintConfig(level="grammar", max_tokens=1400)
    adhered = 0
    for _ in range(20):
        text, _m = _walk("data_Na4Cl4\n", rng, cfg)
        p = parse_canonical(text)
        assert p.sg_number == space_group_number(p.sg_symbol) and abs(cell_volume(p.abc, p.angles) - p.volume) < 1e-3
        with contextlib.suppress(CIFError):
            adhered += text_to_structure(text).composition.reduced_formula == "NaCl"
    assert adhered < 20


def test_prompt_adherence_and_unmeasured_novelty_in_the_summary(structures):
    """A valid sample whose composition differs from its prompt is counted as not adherent; novelty that was not
    measured is None, never 0."""
    from cifllm.evaluation.run import evaluate_texts, summarize

    nacl = structure_to_text(next(s for s in structures if s.composition.reduced_formula == "NaCl"))
    verdicts = evaluate_texts([nacl, nacl], workers=1)
    samples = [{"prompt_meta": {"reduced_formula": "NaCl"}}, {"prompt_meta": {"reduced_formula": "KCl"}}]
    m = summarize(verdicts, samples, novelty_measured=False)
    assert [v["prompt_adherence"] for v in verdicts] == [True, False]
    assert m["counts"]["composition_prompted"] == 2 and m["rates"]["prompt_adherence"] == 0.5
    assert m["counts"]["valid_not_adherent"] == 1
    assert m["rates"]["novel"] is None and m["rates_among_valid"]["novel"] is None and m["counts"]["novel"] is None


def test_guard_margin_is_per_image_no_dead_end_on_a_long_axis():
    """A random-weight model through vLLM wrote this first row (general position 8l of P-4m2, c = 75 A) and the guard
    found no z: its mirror image (x, -y, z) sits 0.17 A away whatever z is, and a single worst-case margin of twice
    the 0.075 A an atom moves per 0.001 of z pushed it under 0.1 A. Per-image margins keep z free."""
    header = (
        "data_Po9W9C7F8\n_symmetry_space_group_name_H-M P-4m2\n_symmetry_Int_Tables_number 115\n_cell_length_a 11.5703\n"
        "_cell_length_b 11.5703\n_cell_length_c 75.0607\n_cell_angle_alpha 90.0000\n_cell_angle_beta 90.0000\n"
        "_cell_angle_gamma 90.0000\n_cell_volume 10048.5142\n_cell_formula_units_Z 1\n_chemical_formula_structural Po9W9C7F8\n"
        "loop_\n_atom_site_type_symbol\n_atom_site_label\n_atom_site_symmetry_multiplicity\n_atom_site_Wyckoff_symbol\n"
        "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\nPo Po0 8 l 0.0671 0.0073 0."
    )
    m = CIFConstraint(TABLE, ConstraintConfig(max_tokens=1536))
    m.feed_prompt(_ids(header))
    a = m.allowed()
    assert not isinstance(a, int | np.integer) and int(np.asarray(a)[TABLE.digit].sum()) == 10
    assert m.stats.dead_end == ""


def test_isotope_aliases_are_not_formula_elements():
    """pymatgen reads D and T as hydrogen, so a formula `D10H4` is H14 and the reduced formula the engine forces
    disagrees with data_ (3 of 1,250 random-model samples through vLLM): they are not elements of the machine."""
    assert {"D", "T"}.isdisjoint(TABLE.element_id.values()) and {"H", "Ti", "Ta"} <= set(TABLE.element_id.values())
    with pytest.raises(ConstraintError):
        CIFConstraint(TABLE, ConstraintConfig()).feed_prompt(_ids("data_D2O1\n"))


# ----------------------------------------------------------------------------------------------------------------
# token budget: the fewest Wyckoff rows of a composition, and every sample finishing within max_tokens


def _brute_min_rows(sg: int, counts: tuple[int, ...]) -> int | None:
    """Fewest rows by searching multisets of Wyckoff letters (not multiplicity classes) per element, each fixed point
    used at most once overall (memoized search over: element, atoms left, next letter, fixed letters used)."""
    ws = space_group_wyckoff(sg)
    inf = 10**9
    memo: dict[tuple[int, int, int, frozenset[int]], int] = {}

    def rec(e: int, left: int, start: int, used: frozenset[int]) -> int:
        if left == 0:
            return 0 if e + 1 == len(counts) else rec(e + 1, counts[e + 1], 0, used)
        key = (e, left, start, used)
        if key not in memo:
            best = inf
            for j in range(start, len(ws)):
                w = ws[j]
                if w.multiplicity <= left and not (w.dof == 0 and j in used):
                    nxt = rec(e, left - w.multiplicity, j if w.dof else j + 1, used | {j} if w.dof == 0 else used)
                    best = min(best, nxt + 1)
            memo[key] = best
        return memo[key]

    best = rec(0, counts[0], 0, frozenset())
    return None if best >= inf else best


def test_min_rows_matches_brute_force():
    rng = np.random.default_rng(7)
    groups = (1, 2, 10, 25, 47, 62, 123, 166, 191, 221, 225, 229)
    for sg in groups:
        for _ in range(25):
            counts = tuple(int(c) for c in rng.integers(1, 13, size=int(rng.integers(1, 4))))
            k = min_rows(sg, counts)
            assert k == _brute_min_rows(sg, counts), (sg, counts)
            assert (k is not None) == realizable(sg, counts)
    # fixed points are single-use: Pm-3m has two 1-fold points (1a, 1b) and 3-fold ones, free positions of 6+ only
    assert min_rows(221, [1, 1]) == 2 and min_rows(221, [1, 1, 1]) is None
    w1a = next(w for w in space_group_wyckoff(221) if w.letter == "a")
    assert min_rows(221, [1], used_fixed=[w1a]) == 1 and min_rows(221, [1, 1], used_fixed=[w1a]) is None
    # 48 atoms in Fm-3m: Na on 24e (x,0,0), Cl on 24d - two rows where P1 needs 48
    assert min_rows(225, [24, 24]) == 2 and min_rows(1, [24, 24]) == 48


def test_best_space_group_cost_is_the_minimum():
    budget = TABLE.budget(ConstraintConfig())
    for counts in [(24, 24), (4, 8, 24), (1, 2, 3), (5, 7, 12), (8, 16, 32), (2, 2, 2, 6)]:
        costs = [c for sg in range(1, 231) if (c := budget.cost(sg, counts)) is not None]
        assert budget.best(counts)[0] == min(costs), counts
        assert all(budget.lower(counts)[sg] <= c for sg in range(1, 231) if (c := budget.cost(sg, counts)) is not None)


def test_token_bounds_hold_for_worst_cases():
    """Rows: every Wyckoff position of every group, label indices of 1-3 digits, two-letter elements: exactly
    ``row_tokens`` (so <= 36 < the old bound 40). Header: the longest header of every group (cell lengths 100.0000,
    free angles 150.0000, volume 1000000.0000, 8 elements with 3-digit counts) is the bound up to Z's digits, and
    stays under the old bound 210 with its formula line."""
    rng = np.random.default_rng(0)
    most = 0
    for sg in range(1, 231):
        for w in space_group_wyckoff(sg):
            plan = coordinate_plan(sg, w.letter)
            written = {i: round(float(rng.random()), 4) for i, step in enumerate(plan) if step[0] == "free"}
            xyz = " ".join(format_number(v) for v in wyckoff_coords(sg, w.letter, written))
            for r in (0, 9, 10, 99, 100, 199):
                row = f"Cl Cl{r} {w.multiplicity} {w.letter} {xyz} 1\n"
                assert len(_ids(row)) == row_tokens(r, w.multiplicity), row
                most = max(most, row_tokens(r, w.multiplicity))
        assert rows_tokens(3, 98, sg) >= row_tokens(98, 1) + row_tokens(99, 1) + row_tokens(100, 1)
    assert most == 36
    budget = TABLE.budget(ConstraintConfig())
    counts = (101, 102, 103, 104, 105, 106, 107, 109)  # coprime: the reduced formula keeps every digit, Z = 1
    elements = ["Na", "Mg", "Al", "Si", "P", "S", "Cl", "K"]
    formula = "".join(f"{e}{c}" for e, c in zip(elements, counts))
    for sg in range(1, 231):
        cell = []
        for i, rule in enumerate(crystal_system_rules(sg)):
            cell.append("100.0000" if i < 3 and rule in ("free", "=a") else "150.0000" if rule == "free" else format_number(float(rule)))
        tags = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
        red = format_formula(Composition(formula), reduced=True)
        header = (
            f"_symmetry_space_group_name_H-M {SPACE_GROUP_SYMBOLS[sg - 1]}\n_symmetry_Int_Tables_number {sg}\n"
            + "".join(f"{t} {v}\n" for t, v in zip(tags, cell))
            + f"_cell_volume {format_number(1e6)}\n_cell_formula_units_Z 1\n_chemical_formula_structural {red}\n"
            + "loop_\n_atom_site_type_symbol\n_atom_site_label\n_atom_site_symmetry_multiplicity\n_atom_site_Wyckoff_symbol\n"
            + "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n"
        )
        n = len(_ids(header))
        bound = int(budget.header[sg]) + _counts_tokens(counts)
        assert n <= bound <= n + 2, (sg, n, bound)  # Z = 1 is bounded by the digits of the atom count, 3
        assert len(_ids(f"data_{formula}\n")) + bound <= 210
    # the count-dependent bound covers pymatgen's special reduced formulas (O -> O2, LiO -> LiO2, HO -> H2O2)
    for comp in ["O1", "O5", "Li1O1", "Li2O2", "H1O1", "Na3Cl1", "Fe12O18", "Cl1", "N2"]:
        c = Composition(comp)
        red, z = c.get_reduced_composition_and_factor()
        z_int = int(round(z)) if abs(z - round(z)) < 1e-6 and round(z) >= 1 else 1
        key = tuple(sorted(int(v) for v in c.values()))
        assert len(_ids(format_formula(red, reduced=True))) + len(_ids(str(z_int))) <= _counts_tokens(key), comp


def _budget_walks(prompt: str, max_tokens: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cfg = ConstraintConfig(max_tokens=max_tokens)
    for _ in range(n):
        text, m = _walk(prompt, rng, cfg)
        assert not m.stats.dead_end, (m.stats, text)
        assert len(_ids(text)) + 1 == m.n_tokens <= max_tokens, (m.n_tokens, text)  # + EOS
        _consistent(text)
        if prompt:
            assert text_to_structure(text).composition == Composition(prompt[5:].split("\n")[0])
            p = parse_canonical(text)
            counts = tuple(sorted(int(v) for v in Composition(p.formula).values()))
            assert len(p.sites) >= min_rows(p.sg_number, counts)


def _tight(prompt: str, slack: int) -> int:
    """The fewest tokens a prompt's formula can be finished in, plus ``slack``."""
    counts = tuple(sorted(int(v) for v in Composition(prompt[5:].split("\n")[0]).values()))
    return len(_ids(prompt)) + TABLE.budget(ConstraintConfig()).best(counts)[0] + slack


def test_large_cells_start_and_finish_within_budget():
    """48 atoms start at max_tokens=1024 (one row per atom, P1, would need ~1,700), and every random walk ends within
    max_tokens - also at a budget a few tokens above the cheapest group's worst case, and de novo at 600."""
    m = CIFConstraint(TABLE, ConstraintConfig(max_tokens=1024))
    m.feed_prompt(_ids("data_Na24Cl24\n"))
    with pytest.raises(ConstraintError, match="atom-site rows.*raise max_new_tokens"):
        CIFConstraint(TABLE, ConstraintConfig(max_tokens=150)).feed_prompt(_ids("data_Na24Cl24\n"))
    for k, (prompt, budget) in enumerate(
        [("data_Na24Cl24\n", 1024), ("data_Na24Cl24\n", _tight("data_Na24Cl24\n", 3)), ("data_K8Pt4Cl24\n", 600), ("", 600)]
    ):
        _budget_walks(prompt, budget, 6, k)


@pytest.mark.slow
def test_budget_random_walks_240():
    cases = [
        ("data_Na24Cl24\n", 1024),
        ("data_Na24Cl24\n", _tight("data_Na24Cl24\n", 0)),
        ("data_K8Pt4Cl24\n", 600),
        ("data_Li8Mn16O32\n", _tight("data_Li8Mn16O32\n", 10)),
        ("data_Li4Fe4P4O16\n", _tight("data_Li4Fe4P4O16\n", 5)),
        ("", 600),
        ("", 400),
        ("", 1024),
    ]
    for k, (prompt, budget) in enumerate(cases):
        _budget_walks(prompt, budget, 30, 100 + k)


def _closest_ratio(text: str) -> float:
    """Smallest distance / expected bond length over all pairs of atoms (periodic images included)."""
    s = text_to_structure(text)
    d = s.distance_matrix
    syms = [site.specie.symbol for site in s]
    return min(d[i, j] / expected_bond_length(syms[i], syms[j]) for i in range(len(s)) for j in range(i + 1, len(s)))


def test_bond_guard_keeps_crystallm_bond_ratio():
    """In a small P1 cell, knowing-nothing walks without the bond guard put pairs closer than CrystaLLM's bond rule
    allows (0.68 x expected); with ``min_bond_ratio`` 0.7 every walk that needed no fallback keeps >= 0.7."""
    prompt = (
        "data_Na4Cl4\n_symmetry_space_group_name_H-M P1\n_symmetry_Int_Tables_number 1\n_cell_length_a 6.2000\n"
        "_cell_length_b 6.2000\n_cell_length_c 6.2000\n_cell_angle_alpha 90.0000\n_cell_angle_beta 90.0000\n_cell_angle_gamma 90.0000\n"
    )
    rng = np.random.default_rng(3)
    off = [_walk(prompt, rng, ConstraintConfig(max_tokens=1400, min_bond_ratio=0.0)) for _ in range(12)]
    assert min(_closest_ratio(t) for t, _ in off) < 0.68
    assert all(m.stats.bond_fallbacks == 0 for _, m in off)  # the guard with the ratio off is the old 0.5 A guard
    on = [_walk(prompt, rng) for _ in range(12)]
    clean = [t for t, m in on if m.stats.bond_fallbacks == 0 and m.stats.soft_failures == 0]
    assert len(clean) >= 6
    for t in clean:
        _consistent(t)
        assert _closest_ratio(t) >= 0.7 - 1e-3, t
    assert ConstraintConfig().min_bond_ratio == 0.7
