"""Stability stage (cifllm.evaluation.stability): CHGNet relaxation, hull, S.U.N. metrics, cache, bad input.

The CHGNet tests skip cleanly when the ``mlip`` extra is not installed. Reference set for the Na-Cl hull, built in
process (no data): Na bcc (a = 4.23 A), solid Cl2 (Cmca, a/b/c = 6.24/4.48/8.26 A, Cl 8f (0, 0.1017, 0.3826); CHGNet
has no dispersion, so this molecular crystal expands ~35% on relaxation, but it is a sound elemental reference),
and two NaCl polymorphs that are not the ground state (CsCl type, zinc blende). Rock salt NaCl is then the sample.
"""

from __future__ import annotations

import json
import warnings

import pytest

from cifllm.evaluation.stability import (
    HullReference,
    StabilitySettings,
    hull_energy,
    site_rmsd,
    summarize_stability,
    wilson_interval,
)

warnings.filterwarnings("ignore")


def _na_cl_structures():
    from pymatgen.core import Lattice, Structure

    return {
        "Na": Structure.from_spacegroup("Im-3m", Lattice.cubic(4.23), ["Na"], [[0, 0, 0]]),
        "Cl2": Structure.from_spacegroup(64, Lattice.orthorhombic(6.24, 4.48, 8.26), ["Cl"], [[0, 0.1017, 0.3826]]),
        "NaCl_CsCl": Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "NaCl_zb": Structure.from_spacegroup("F-43m", Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "NaCl_rocksalt": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }


def _texts():
    from cifllm.cif import structure_to_text

    return {k: structure_to_text(s) for k, s in _na_cl_structures().items()}


def _reference(names=("Na", "Cl2", "NaCl_CsCl", "NaCl_zb")) -> HullReference:
    from pymatgen.core import Composition

    from cifllm.cif import format_formula

    t = _texts()
    s = _na_cl_structures()
    return HullReference.from_records(list(names), [t[n] for n in names], [format_formula(Composition(s[n].composition), reduced=True) for n in names])


# ---------------------------------------------------------------- no potential needed


def test_wilson_interval():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)


def test_hull_energy_and_missing_elemental_reference():
    entries = [({"Na": 1.0}, -1.3), ({"Cl": 1.0}, -1.9), ({"Na": 1.0, "Cl": 1.0}, -3.5)]
    on = hull_energy(["Cl", "Na"], {"Na": 1, "Cl": 1}, -3.6, entries)
    assert on["e_above_hull"] == pytest.approx(-0.1, abs=1e-6) and on["hull_reason"] is None
    above = hull_energy(["Cl", "Na"], {"Na": 1, "Cl": 1}, -3.45, entries)
    assert above["e_above_hull"] == pytest.approx(0.05, abs=1e-6)
    miss = hull_energy(["Cl", "Na"], {"Na": 1, "Cl": 1}, -3.6, entries[1:])
    assert miss["e_above_hull"] is None and miss["hull_reason"] == "no_elemental_reference" and "Na" in miss["hull_detail"]


def test_reference_subsystems_and_site_rmsd():
    ref = _reference()
    assert set(ref.systems) == {"Na", "Cl", "Cl-Na"}
    assert ref.subsystems(["Na", "Cl", "O"]) == ["Cl", "Na", "Cl-Na"]
    s = _na_cl_structures()["NaCl_rocksalt"]
    moved = s.copy()
    moved.translate_sites([0], [0.1 / 5.64, 0, 0])  # one of 8 sites moves 0.1 A
    assert site_rmsd(s, s) == 0.0
    shifted = s.copy()
    shifted.translate_sites(list(range(len(s))), [0.3, 0.2, 0.1])  # rigid translation is not a displacement
    assert site_rmsd(s, shifted) == pytest.approx(0.0, abs=1e-9)
    assert site_rmsd(s, moved) == pytest.approx((0.01 * 7 / 64) ** 0.5, rel=1e-3)  # mean translation removed


def test_settings_refuse_unknown_model():
    with pytest.raises(ValueError, match="shipped in the chgnet wheel"):
        StabilitySettings(model="/tmp/some.pth")
    with pytest.raises(ValueError, match="shipped in the sevenn wheel"):
        StabilitySettings(potential="sevennet", model="0.3.0")
    with pytest.raises(ValueError, match="potential must be one of"):
        StabilitySettings(potential="mace")
    with pytest.raises(ValueError, match="hull must be"):
        StabilitySettings(hull="oqmd")
    assert StabilitySettings().model == "0.3.0" and StabilitySettings(potential="sevennet").model == "7net-0"  # backend defaults
    assert json.loads(StabilitySettings(fmax=0.05).relax_key())["fmax"] == 0.05


def test_summary_sun_null_without_novelty():
    recs = [{"e_above_hull": -0.01, "stable": True, "metastable": True, "reason": None}, {"e_above_hull": None, "stable": None, "reason": "not_valid"}]
    verd = [{"valid": True, "unique": True, "novel": None}, {"valid": False}]
    m = summarize_stability(recs, verd, StabilitySettings())
    assert m["rates"]["stable"]["count"] == 1 and m["rates"]["stable"]["n"] == 2
    assert m["rates"]["sun"]["count"] is None and m["rates"]["sun"]["rate"] is None  # novelty not measured: null, not 0
    assert m["rates_among_measured"]["stable"]["rate"] == 1.0
    assert m["reasons"] == {"not_valid": 1}


# ---------------------------------------------------------------- CHGNet


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache folder for the hull tests: reference energies relaxed once are reused across runs (as in use)."""
    return tmp_path_factory.mktemp("stability-cache")


@pytest.fixture(scope="module")
def chgnet_settings():
    pytest.importorskip("chgnet")
    from cifllm.evaluation.stability import _calculator

    s = StabilitySettings(workers=0, time_limit_s=120)
    _calculator(s)  # load once, outside any per-test time limit
    return s


def test_rocksalt_lands_on_hull_and_cache_makes_rerun_free(chgnet_settings, shared_cache):
    from cifllm.evaluation.stability import run_stability

    t = _texts()
    texts = [t["NaCl_rocksalt"], t["NaCl_CsCl"]]
    verd = [{"valid": True}, {"valid": True}]
    cache = shared_cache / "a"
    recs, stats = run_stability(texts, ["rs", "cs"], verd, _reference(), chgnet_settings, cache)
    rs, cs = recs
    assert rs["ok"] and rs["converged"] and rs["hull_reason"] is None
    # rock salt is the NaCl ground state: below (or on) the hull of the other polymorphs and the elements
    assert rs["e_above_hull"] <= 0.005 and rs["stable"] is True
    assert rs["e_above_hull"] > -0.2  # but not absurdly far below the CsCl-type polymorph
    assert cs["e_above_hull"] >= -1e-6 and cs["stable"] is (cs["e_above_hull"] <= 0.0)  # a reference itself: on or above
    assert rs["hull_n_references"] == 4 and set(rs["hull_decomposition"]) == {"NaCl"}
    assert stats["relaxed_samples"] == 2 and stats["relaxed_references"] == 4 and stats["cache_hits"] == 0
    assert rs["relaxed_cif"].startswith("# generated using pymatgen")
    assert (cache / "relax.jsonl").is_file() and len(list((cache / "hull").rglob("*.json"))) == 3
    # rerun: nothing is relaxed again, same answers
    recs2, stats2 = run_stability(texts, ["rs", "cs"], verd, _reference(), chgnet_settings, cache)
    assert stats2["relaxed_samples"] == 0 and stats2["relaxed_references"] == 0 and stats2["cache_hits"] == 2
    assert [r["e_above_hull"] for r in recs2] == [r["e_above_hull"] for r in recs]
    assert stats2["relax_s"] < 0.5
    # a different sample id is a different cache key
    _, stats3 = run_stability(texts[:1], ["other"], verd[:1], _reference(), chgnet_settings, cache)
    assert stats3["relaxed_samples"] == 1 and stats3["relaxed_references"] == 0


def test_dft_hull_needs_no_reference_relaxation(chgnet_settings, shared_cache):
    """hull=dft: the sample is relaxed, its formation energy comes from CHGNet's shipped elemental references and it
    sits on a DFT hull of hand-made phases (Na, Cl at 0; NaCl at -2.0 eV/atom); no reference is relaxed and no sample
    lacks an elemental reference."""
    from cifllm.evaluation.stability import run_stability
    from cifllm.potentials.hull import DftHull, HullEntry

    hull = DftHull([HullEntry("nacl", (("Cl", 1.0), ("Na", 1.0)), -2.0)])
    t = _texts()
    verd = [{"valid": True}, {"valid": True}]
    recs, stats = run_stability([t["NaCl_rocksalt"], t["Na"]], ["rs", "na"], verd, None, chgnet_settings, shared_cache / "dft", dft_hull=hull)
    rs, na = recs
    assert stats["relaxed_samples"] == 2 and stats["relaxed_references"] == 0
    assert rs["hull_reason"] is None and rs["hull_n_references"] == 1
    assert rs["e_above_hull"] == pytest.approx(rs["formation_energy_per_atom"] + 2.0, abs=1e-5)
    assert -2.4 < rs["formation_energy_per_atom"] < -1.8  # MP: -2.08 eV/atom
    assert abs(na["e_above_hull"]) < 0.05 and na["hull_decomposition"] == ["Na"]  # bcc Na: its own reference phase


def test_perturbed_copy_relaxes_back(chgnet_settings):
    from cifllm.evaluation.stability import relax_structure

    ideal = _na_cl_structures()["NaCl_rocksalt"]
    ref = relax_structure(ideal, chgnet_settings)

    p = ideal.copy()
    p.apply_strain(0.05)
    p.perturb(0.15, min_distance=0.1, seed=0)  # its own generator: seed it (numpy's global seed does not reach it)
    r = relax_structure(p, chgnet_settings)
    assert r["ok"] and r["converged"] and r["n_atoms"] == 8  # distorted: no primitive reduction
    assert r["energy_per_atom"] < r["energy_initial_per_atom"] - 0.01  # energy falls
    assert r["energy_per_atom"] == pytest.approx(ref["energy_per_atom"], abs=0.005)  # back to rock salt's energy
    from pymatgen.core import Structure

    relaxed = Structure.from_str(r["relaxed_cif"], fmt="cif")
    before = site_rmsd(ideal, p)
    after = site_rmsd(ideal, _same_order(relaxed, p))
    assert r["rmsd_A"] > 0.05 and after < before / 3  # RMSD to the ideal sites shrinks
    # still the same structure, although the relaxed cell reduces to the 2-atom primitive cell and the distorted
    # one does not (seed 0: the case that needs the supercell match)
    assert r["rms_matcher"] is not None


def _same_order(relaxed, perturbed):
    """CifWriter keeps site order; map defensively by species + nearest fractional position anyway."""
    assert [str(s.specie) for s in relaxed] == [str(s.specie) for s in perturbed]
    return relaxed


def test_bad_structures_get_a_reason(chgnet_settings):
    from pymatgen.core import Lattice, Structure

    from cifllm.evaluation.stability import RelaxTask, _relax_many, relax_structure

    collapsed = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    r = relax_structure(collapsed, StabilitySettings(workers=0, max_steps=40))  # atoms 0.15 A apart stay collapsed
    assert not r["ok"] and r["reason"] == "exploding_energy" and r["detail"]
    isolated = Structure(Lattice.cubic(30.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert relax_structure(isolated, chgnet_settings)["reason"] == "isolated_atom"
    heavy = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    r = relax_structure(heavy, chgnet_settings)
    assert r["reason"] == "unsupported_element" and r["energy_per_atom"] is None
    assert RelaxTask(chgnet_settings)("data_garbage\nnot a cif")["reason"] == "parse_error"
    few = StabilitySettings(workers=0, max_steps=2, fmax=0.001)
    assert relax_structure(_na_cl_structures()["Cl2"], few)["reason"] == "not_converged"
    slow = StabilitySettings(workers=0, time_limit_s=0.3)
    (rec,) = _relax_many([_texts()["Cl2"]], slow)
    assert rec["reason"] == "timeout" and rec["energy_per_atom"] is None


def test_evaluate_stability_end_to_end(chgnet_settings, shared_cache, tmp_path):
    from pymatgen.core import Composition

    from cifllm.cif import format_formula
    from cifllm.data.corpus import CorpusRow, write_corpus
    from cifllm.evaluation.run import EvalConfig, evaluate
    from cifllm.tokenization import build_tokenizer

    tok = build_tokenizer()
    t, s = _texts(), _na_cl_structures()
    rows = []
    for i, name in enumerate(["Na", "Cl2", "NaCl_CsCl"]):
        comp = s[name].composition
        rows.append(
            CorpusRow(
                text=t[name], reduced_formula=format_formula(Composition(comp), reduced=True), elements=[e.symbol for e in comp.elements],
                n_sites=len(s[name]), sg_number=s[name].get_space_group_info(symprec=0.1)[1], n_tokens=len(tok.encode(t[name], add_special_tokens=False).ids),
                sources=["test"], source_ids=[f"test:{i}"], properties={}, year=None, provenance=[], split="train",
            )
        )
    corpus = write_corpus(rows, tmp_path / "corpus")
    kbr = t["NaCl_rocksalt"].replace("Na", "K").replace("Cl", "Br")  # valid, but no K or Br reference
    samples = [("rs", t["NaCl_rocksalt"]), ("cs", t["NaCl_CsCl"]), ("junk", "data_Na\nnonsense"), ("kbr", kbr)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps({"sample_id": i, "cif_text": x}) + "\n" for i, x in samples))
    cfg = EvalConfig(samples=str(run), reference=str(corpus), workers=0, stability=True, stability_workers=0, stability_cache=str(shared_cache / "e2e"))
    # the reference energies of the first test's cache (same texts, same potential and settings) are reused
    if (shared_cache / "a" / "hull").is_dir():
        import shutil

        shutil.copytree(shared_cache / "a" / "hull", shared_cache / "e2e" / "hull")
    out = evaluate(cfg, progress=False, log=lambda m: None)
    st = json.loads((out / "metrics.json").read_text())["stability"]
    recs = {r["sample_id"]: r for r in map(json.loads, (out / "stability.jsonl").read_text().splitlines())}
    assert set(recs) == {"rs", "cs", "junk", "kbr"}
    assert recs["rs"]["stable"] is True
    assert recs["cs"]["e_above_hull"] >= -1e-6  # a copy of a reference
    assert recs["junk"]["reason"] == "not_valid" and recs["junk"]["e_above_hull"] is None
    assert recs["kbr"]["hull_reason"] == "no_elemental_reference" and recs["kbr"]["energy_per_atom"] is not None
    assert st["n_samples"] == 4 and st["n_e_hull"] == 2
    assert st["reasons"] == {"not_valid": 1, "no_elemental_reference": 1}
    # rock salt is novel (not in the reference) and stable: S.U.N.; the CsCl copy is not novel
    assert st["rates"]["sun"]["count"] == 1 and st["rates"]["sun"]["ci95"][0] < 0.25 < st["rates"]["sun"]["ci95"][1]
    assert (out / "plots" / "e_above_hull.png").is_file() and (out / "plots" / "rmsd.png").is_file()
    assert "Samples without a stability verdict" in (out / "report.md").read_text()
    # rerun into another folder with the same cache: free
    cfg2 = EvalConfig(samples=str(run), reference=str(corpus), workers=0, stability=True, stability_workers=0, stability_cache=str(shared_cache / "e2e"), out=str(tmp_path / "e2"))
    st2 = json.loads((evaluate(cfg2, progress=False, log=lambda m: None) / "metrics.json").read_text())["stability"]
    assert st2["run"]["relaxed_samples"] == 0 and st2["run"]["relaxed_references"] == 0 and st2["run"]["cache_hits"] == 3


def test_bench_md_stability_table(tmp_path):
    from cifllm.bench.runner import render_bench_md

    rate = {"count": 1, "n": 4, "rate": 0.25, "ci95": [0.05, 0.7]}
    st = {"n_samples": 4, "n_e_hull": 2, "rates": {k: rate for k in ("stable", "metastable", "sun", "msun")}, "e_above_hull": {"median": 0.031}}
    row = {"generator": "template", "csp": {}, "denovo": {"valid": 1.0, "stability": st}, "rediscovery": {"rate": 0.0}}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "metrics.json").write_text(json.dumps({"task": {"name": "t", "case": 0}, "rows": [row]}))
    md = render_bench_md(tmp_path)
    assert "| t | template | 4 | 2 | 25.0% | 25.0% | 25.0% | 25.0% | 0.031 |" in md  # core.report.pct


@pytest.mark.slow
def test_bench_template_row_with_stability(tmp_path, tiny_corpus):
    """``cifllm bench stability=true``: the template baseline's de novo samples get a stability block (CHGNet)."""
    pytest.importorskip("chgnet")
    import yaml

    from cifllm.bench.runner import BenchConfig, run_bench
    from cifllm.bench.splits import build_split
    from cifllm.bench.tasks import TaskSpec
    from cifllm.config import config_to_dict

    task = TaskSpec(name="rnd", case=0, description="d", rule="random_formula", sources=("prototypes",), test_fraction=0.2, metrics=("denovo",))
    (tmp_path / "rnd.yaml").write_text(yaml.safe_dump(config_to_dict(task)))
    build_split(task, tiny_corpus, tmp_path / "splits", workers=1)
    cfg = BenchConfig(task=str(tmp_path / "rnd.yaml"), splits=str(tmp_path / "splits"), corpus=str(tiny_corpus), out=str(tmp_path / "results"), n_prompts=1, n_samples=1, n_denovo=4, workers=0, stability=True)
    res = run_bench(cfg, log=lambda *_: None)
    st = res["rows"][0]["denovo"]["stability"]
    assert st["n_samples"] == 4 and sum(st["reasons"].values()) + st["n_e_hull"] == 4
    assert "Stability of de novo samples" in (tmp_path / "results" / "BENCH.md").read_text()


def test_stage_configs_choose_the_potential_and_the_hull():
    """`cifllm evaluate stability_hull=dft stability_potential=...` and the bench's keys reach StabilitySettings."""
    from cifllm.bench.runner import BenchConfig
    from cifllm.core.config import load_config
    from cifllm.evaluation.run import EvalConfig
    from cifllm.evaluation.stability import StabilitySettings

    cfg = load_config(EvalConfig, None, ["samples=x", "stability_hull=dft", "stability_potential=chgnet"])
    st = StabilitySettings.from_config(cfg, workers=0)
    assert st.hull == "dft" and st.potential == "chgnet"
    assert StabilitySettings.from_config(load_config(EvalConfig, None, ["samples=x"]), workers=0).hull == "reference"
    bench = load_config(BenchConfig, None, ["task=id_random", "stability_hull=dft"])
    assert StabilitySettings.from_config(bench, workers=0).hull == "dft"
