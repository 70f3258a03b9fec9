"""One test per finding of the hostile-input trial (issue "Bounded, honest input handling"): hangs, crashes, silent
corruptions and tracebacks. Each failed on the code before the fix (see BENCHMARKS.md, fuzz section)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from cifllm.cif import structure_to_text
from cifllm.cli import main
from cifllm.data.filters import FilterSettings, Reject, count_atom_site_rows, process_record
from cifllm.data.readers import RawRecord
from cifllm.evaluation.checks import check_sample

REPO = Path(__file__).resolve().parents[1]


def _smmn6sn6() -> Structure:
    """SmMn6Sn6 (HfFe6Ge6 type, P6/mmm), 13 atoms."""
    return Structure.from_spacegroup(
        "P6/mmm", Lattice.hexagonal(5.53, 9.02), ["Sm", "Mn", "Sn", "Sn", "Sn"], [[0, 0, 0], [0.5, 0, 0.246], [1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.5], [0, 0, 0.338]]
    )


def _record(cif: str, rid: str = "r") -> RawRecord:
    return RawRecord("fuzz", "fuzz.csv", 0, rid, cif=cif)


def _set_cell_angles(text: str, angles: tuple[str, str, str]) -> str:
    out = []
    for line in text.splitlines():
        for tag, value in zip(("alpha", "beta", "gamma"), angles, strict=True):
            if line.startswith(f"_cell_angle_{tag} "):
                line = f"_cell_angle_{tag} {value}"
        out.append(line)
    return "\n".join(out) + "\n"


def _site_rows(text: str) -> list[int]:
    """Indices of the atom-site rows of a canonical text (whatever its loop columns)."""
    lines = text.splitlines()
    start = lines.index("loop_") + 1
    while lines[start].startswith("_"):
        start += 1
    return list(range(start, len(lines)))


def _set_occupancies(text: str, value: str, only_first: bool = False) -> str:
    lines = text.splitlines()
    for k in _site_rows(text)[: 1 if only_first else None]:
        parts = lines[k].split()
        lines[k] = " ".join([*parts[:-1], value])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- hangs


def test_prescan_drops_a_huge_cif_before_pymatgen_parses_it():
    """8,000 atom rows, well under the 2 MB limit: pymatgen needs ~18 s to parse it (and 50,000 rows > 10 min)."""
    rows = "\n".join(f"  Fe  Fe{i}  1  {(i % 20) / 20:.5f}  {((i // 20) % 20) / 20:.5f}  {(i // 400) / 20:.5f}  1" for i in range(8000))
    head = str(CifWriter(Structure(Lattice.cubic(60.0), ["Fe"], [[0, 0, 0]]))).split("  Fe  Fe0")[0]
    text = head + rows + "\n"
    assert len(text) < 2_000_000
    assert count_atom_site_rows(text) == (8000, 8000)
    t0 = time.perf_counter()
    r = process_record(_record(text), FilterSettings())
    assert time.perf_counter() - t0 < 3.0
    assert isinstance(r, Reject) and r.reason == "too_many_atoms" and "pre-scan" in r.detail


@pytest.mark.parametrize("workers", [1, 2])
def test_prep_has_a_per_record_time_limit(tmp_path, monkeypatch, workers, structures):
    """A record stuck in parsing ends as ``timeout`` within the limit; timeouts are not cached, so a resumed run
    retries them."""
    import cifllm.data.filters as filters
    from cifllm.data.prep import _canonicalize

    real = filters.read_cif_text

    def slow(text, where="<string>"):
        if "hang" in where:
            time.sleep(60)
        return real(text, where)

    monkeypatch.setattr(filters, "read_cif_text", slow)
    cif = str(CifWriter(structures[0]))
    recs = [_record(cif, "ok1"), _record(cif + "\n", "hang"), _record(cif + "\n\n", "ok2")]
    t0 = time.perf_counter()
    res, _ = _canonicalize(recs, FilterSettings(), workers, tmp_path, False, time_limit_s=1.0)
    assert time.perf_counter() - t0 < 30
    assert [getattr(r, "reason", "ok") for r in res] == ["ok", "timeout", "ok"]
    cache = (next((tmp_path / ".prep_cache").glob("*.jsonl"))).read_text()
    assert cache.count("\n") == 2 and "timeout" not in cache


def test_near_flat_cell_fails_before_the_neighbour_search():
    """Angles 120/120/119.99 (volume ~0) passed the cell check and ran CrystalNN for minutes."""
    from cifllm.utils.limits import map_with_time_limit

    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    text = _set_cell_angles(structure_to_text(rutile, mode="p1"), ("120.0000", "120.0000", "119.9900"))
    t0 = time.perf_counter()
    [(_, v)] = list(map_with_time_limit(lambda t: check_sample(t), [text], 10.0, on_failure=lambda *a: None))
    assert v is not None, "check_sample ran past 10 s"
    assert time.perf_counter() - t0 < 10
    assert v.checks["cell"].reason == "flat_cell"
    assert v.checks["bond_length"].reason == "skipped_cell"
    assert not v.valid


# ---------------------------------------------------------------- crashes


@pytest.mark.parametrize("occ, only_first", [("1e-30", True), ("1e-30", False), ("0.0001", False), ("0.00001", False)])
def test_tiny_occupancies_give_a_verdict_not_an_exception(structures, occ, only_first):
    text = _set_occupancies(structure_to_text(structures[0]), occ, only_first)
    v = check_sample(text)
    assert v.reason and not v.valid_all
    assert all(c.reason != "check_crashed" for c in v.checks.values()), {k: c.detail for k, c in v.checks.items()}


def _samples(tmp_path: Path, records: list[dict]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_evaluate_names_a_string_prompt_meta(tmp_path, capsys, structures):
    text = structure_to_text(structures[0])
    run = _samples(tmp_path, [{"sample_id": "a", "cif_text": text}, {"sample_id": "b", "cif_text": text, "prompt_meta": "target"}])
    assert main(["evaluate", "--no-progress", f"samples={run}", "workers=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "record 2" in err and "'b'" in err and "prompt_meta" in err and "samples.jsonl" in err


def test_evaluate_rejects_a_non_integer_n_tokens_before_any_check(tmp_path, capsys, monkeypatch, structures):
    import cifllm.evaluation.run as run_mod

    calls = []
    real = run_mod.check_sample
    monkeypatch.setattr(run_mod, "check_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    text = structure_to_text(structures[0])
    run = _samples(tmp_path, [{"sample_id": "a", "cif_text": text, "n_tokens": 12}, {"sample_id": "b", "cif_text": text, "n_tokens": "many"}])
    assert main(["evaluate", "--no-progress", f"samples={run}", "workers=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "n_tokens" in err and "record 2" in err and "\n" not in err
    assert calls == [], "checks ran before the bad record was reported"
    assert not (run / "eval").exists()


# ---------------------------------------------------------------- silent corruption


def _p1_cif() -> str:
    return str(CifWriter(_smmn6sn6()))


def _row_lines(cif: str, element: str) -> list[int]:
    return [k for k, ln in enumerate(cif.splitlines()) if ln.split()[:1] == [element] and len(ln.split()) == 7]


def test_nan_occupancy_that_drops_an_atom_is_caught():
    lines = _p1_cif().splitlines()
    k = _row_lines(_p1_cif(), "Mn")[0]
    lines[k] = " ".join([*lines[k].split()[:-1], "nan"])
    r = process_record(_record("\n".join(lines) + "\n"), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_disagrees", r
    assert "Mn5" in r.detail


def test_truncated_cif_is_not_a_smaller_structure():
    lines = _p1_cif().splitlines()
    r = process_record(_record("\n".join(lines[:-3]) + "\n"), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_disagrees", r


def test_duplicated_loop_tag_is_caught():
    """A tag line duplicated over another one (here: the occupancy column) turned SmMn6Sn6 into SmMn6."""
    cif = _p1_cif()
    bad = cif.replace(" _atom_site_occupancy\n", " _atom_site_type_symbol\n")
    assert bad != cif
    r = process_record(_record(bad), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_disagrees", r
    assert isinstance(process_record(_record(bad), FilterSettings(check_formula=False)), type(process_record(_record(cif), FilterSettings())))


def test_formula_check_accepts_good_files_and_drops_unlocated_hydrogen():
    cif = _p1_cif()
    assert not isinstance(process_record(_record(cif), FilterSettings()), Reject)
    with_h = cif.replace("'Sm1 Mn6 Sn6'", "'Sm1 Mn6 Sn6 H2'")
    r = process_record(_record(with_h), FilterSettings())  # H stated, not located: the hydrogen rule (issue 31)
    assert isinstance(r, Reject) and r.reason == "hydrogen_missing", r
    per_unit = cif.replace("'Sm1 Mn6 Sn6'", "'Sm Mn6 Sn6'")
    assert not isinstance(process_record(_record(per_unit), FilterSettings()), Reject)
    moiety = cif.replace("_chemical_formula_sum   'Sm1 Mn6 Sn6'", "_chemical_formula_moiety   'Sm2 Mn12 Sn11'")
    r = process_record(_record(moiety), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "formula_disagrees"
    unknown = cif.replace("'Sm1 Mn6 Sn6'", "?")
    assert not isinstance(process_record(_record(unknown), FilterSettings()), Reject)


def test_canonical_text_that_loses_atoms_is_caught(monkeypatch, structures):
    """The corpus must not take a canonical text whose sites re-expand to another composition or atom count, even
    with verify_round_trip off (as the long-axis orbit tolerance did to SiC-87R)."""
    import cifllm.data.filters as filters

    real = filters.structure_to_text
    cif = str(CifWriter(_smmn6sn6()))
    assert not isinstance(process_record(_record(cif), FilterSettings()), Reject)

    monkeypatch.setattr(filters, "structure_to_text", lambda s, **kw: "\n".join(real(s, **kw).splitlines()[:-1]) + "\n")
    r = process_record(_record(cif), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "canonical_composition_changed", r

    def longer_cell(s, **kw):  # same rows, twice the cell: the sites re-expand to half the atoms the cell should hold
        t = real(s, **kw)
        c = next(ln for ln in t.splitlines() if ln.startswith("_cell_length_c "))
        return t.replace(c, f"_cell_length_c {2 * float(c.split()[1]):.4f}")

    monkeypatch.setattr(filters, "structure_to_text", longer_cell)
    r = process_record(_record(cif), FilterSettings())
    assert isinstance(r, Reject) and r.reason == "canonical_composition_changed" and "volume implies" in r.detail, r


# ---------------------------------------------------------------- tracebacks


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "bad_key=1"], "bad_key"),
        (["data", "max_atoms=many"], "max_atoms"),
        (["bench", "--task", "no_such_task"], "no_such_task"),
        (["split", "--task", "no_such_task"], "no_such_task"),
        (["split", "--task", "id_random", "--corpus", "{tmp}/no_corpus"], "no_corpus"),
        (["data", "data_dir={tmp}/no_data", "datasets=[mp_20]"], "no_data"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(argv, needle, tmp_path, capsys):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"cifllm {argv[0]}: error: ") and needle in err


def test_cli_debug_shows_the_traceback(capsys):
    assert main(["--debug", "data", "bad_key=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "cifllm data: error: " in err


def test_corrupt_safetensors_names_the_file(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(REPO / "cifllm" / "resources" / "default-model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc = main(["generate", "--model", str(model), "--composition", "NaCl", "-n", "1", "--max-new-tokens", "4", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    errors = [ln for ln in err.splitlines() if "error:" in ln]  # notes (e.g. "sampling is unconstrained") may precede
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    assert str(weights) in errors[0]
