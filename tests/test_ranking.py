"""Ranking (``cifllm generate --rank``): dedupe, order, the packaged DFT hull, feasible space groups, engine
log-probabilities, and the ranked front-end on scripted candidates and a real potential."""

from __future__ import annotations

import math

import pytest
from pymatgen.core import Lattice, Structure

import cifllm
from cifllm.cif import structure_to_text
from cifllm.evaluation.ranking import RankSettings, dedupe, feasible_space_groups, order, space_group_plan
from cifllm.potentials.dft import DftRow
from cifllm.potentials.hull import DftHull
from cifllm.potentials.hull_table import hull_phases, load_hull_table, write_hull_table
from cifllm.sampling.engines import Generation

FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def rock_salt(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, FCC + [[(x + 0.5) % 1, y, z] for x, y, z in FCC])


def cscl_type(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


class ScriptedEngine:
    """Continues every prompt with fixed full texts (cycled) and fixed log-probabilities (no model)."""

    name = "scripted"

    def __init__(self, full_texts, logprobs=None):
        self.full_texts, self.logprobs = full_texts, logprobs

    def generate(self, prompts, params, counts=None, progress=None):
        for i, p in enumerate(prompts):
            for k in range((counts or [params.num_samples] * len(prompts))[i]):
                full = self.full_texts[k % len(self.full_texts)]
                text = full[len(p.text) :] if full.startswith(p.text) else full
                lp = self.logprobs[k % len(self.logprobs)] * 10 if (self.logprobs and params.logprobs) else None
                yield Generation(i, k, text, 9, True, params.seed, 0.0, 0, logprob=lp)


def test_order_puts_invalid_and_unmeasured_last():
    recs = [
        {"valid": True, "e_above_hull": 0.2, "energy_per_atom": -3.0},
        {"valid": False, "e_above_hull": -1.0, "energy_per_atom": -9.0},  # invalid: last whatever its energy
        {"valid": True, "e_above_hull": None, "energy_per_atom": -5.0},  # no E_hull: after every value
        {"valid": True, "e_above_hull": 0.0, "energy_per_atom": -2.0},
        {"valid": True, "e_above_hull": 0.0, "energy_per_atom": -2.5},  # tie on E_hull: lower energy first
    ]
    assert order(recs, "energy") == [4, 3, 0, 2, 1]
    lik = [{"valid": True, "mean_logprob": -0.5}, {"valid": True, "mean_logprob": None}, {"valid": True, "mean_logprob": -0.1}, {"valid": False, "mean_logprob": 0.0}]
    assert order(lik, "likelihood") == [2, 0, 1, 3]
    assert order(lik, "none") == [0, 1, 2, 3]


def test_rank_settings_validate_and_size_the_pool():
    assert RankSettings().n_candidates(3) == 3
    assert RankSettings(by="energy").n_candidates(3) == 64
    assert RankSettings(by="likelihood", candidates=10).n_candidates(20) == 20
    for bad in (dict(by="best"), dict(candidates=0), dict(space_groups=-1), dict(relax=True)):
        with pytest.raises(ValueError):
            RankSettings(**bad)


def test_dedupe_maps_duplicates_to_their_first_copy():
    a, b, c = rock_salt(5.64), rock_salt(5.70), cscl_type(3.3)  # b: the same structure, 1% larger (scaled matcher)
    assert dedupe([a, None, c, b, c]) == [0, 1, 2, 0, 2]


def test_feasible_space_groups_and_their_z():
    f = feasible_space_groups("NaCl")
    assert f[225] == 4 and f[221] == 1 and f[1] == 1
    assert 227 not in f or f[227] >= 8  # Fd-3m: the smallest multiplicity of its conventional cell is 8
    # every group listed can realize NaCl at its Z, and no Z needs more than 60 atoms
    assert all(2 * z <= 60 for z in f.values())


def _rows(system):
    return [DftRow(i, i, "test", "train", tuple(sorted(c.items())), ef, None, "") for i, c, ef in system]


def test_packaged_hull_pruning_is_exact(tmp_path):
    """Only phases on their own system's hull are kept, and a candidate's E_hull is the same on the pruned hull."""
    rows = _rows([
        ("AB", {"Na": 1, "Cl": 1}, -2.0),
        ("AB2", {"Na": 1, "Cl": 2}, -1.0),  # above the Na-Cl hull (NaCl + Cl at -2/3 * ... ): pruned
        ("A2B", {"Na": 2, "Cl": 1}, -1.5),  # on the hull (-1.5 < -4/3)
        ("AC", {"Na": 1, "O": 1}, -1.2),
        ("ABC", {"Na": 1, "Cl": 1, "O": 1}, -1.0),  # above NaCl + NaO mixtures? (-2*2 - 1.2*2)/3 ... kept only if below
    ])
    kept = {e.id for e in hull_phases(rows)}
    assert "AB" in kept and "A2B" in kept and "AC" in kept and "AB2" not in kept
    full, pruned = DftHull.from_rows(rows), DftHull([e for e in DftHull.from_rows(rows).entries if e.id in kept])
    for comp, ef in [({"Na": 1, "Cl": 3}, -0.4), ({"Na": 2, "Cl": 1, "O": 1}, -1.6), ({"Na": 1, "Cl": 1}, -1.9)]:
        assert pruned.e_above_hull(comp, ef)["e_above_hull"] == pytest.approx(full.e_above_hull(comp, ef)["e_above_hull"], abs=1e-9)
    path = tmp_path / "hull.csv.gz"
    assert write_hull_table(hull_phases(rows), path) == len(kept)
    again = load_hull_table(path)
    assert sorted(e.id for e in again.entries) == sorted(kept)
    assert again.e_above_hull({"Na": 1, "Cl": 1}, -2.0)["e_above_hull"] == pytest.approx(0.0, abs=1e-9)


def test_default_hull_is_built_from_the_data_once_then_cached(tmp_path, monkeypatch):
    """No table: built from the DFT rows of the data folder, cached, and read from the cache afterwards; with neither a
    table nor data, a one-line error saying what to set."""
    from cifllm.potentials import hull_table

    monkeypatch.setenv("CIFLLM_HULL", str(tmp_path / "cache" / "hull.csv.gz"))
    calls = []
    rows = _rows([("NaCl", {"Na": 1, "Cl": 1}, -2.1), ("NaCl3", {"Na": 1, "Cl": 3}, -0.2)])
    monkeypatch.setattr(hull_table, "dft_rows", lambda data_dir=None: calls.append(data_dir) or rows)
    hull = hull_table.load_default_hull()
    assert [e.id for e in hull.entries] == ["NaCl"] and (tmp_path / "cache" / "hull.csv.gz").is_file()  # NaCl3 is above the hull
    assert [e.id for e in hull_table.load_default_hull().entries] == ["NaCl"] and len(calls) == 1
    monkeypatch.setenv("CIFLLM_HULL", str(tmp_path / "missing.csv.gz"))

    def no_data(data_dir=None):
        raise FileNotFoundError("no data folder")

    monkeypatch.setattr(hull_table, "dft_rows", no_data)
    with pytest.raises(hull_table.HullUnavailableError, match="CIFLLM_DATA_DIR"):
        hull_table.load_default_hull()


def test_hf_logprob_is_the_teacher_forced_log_probability(toy_model):
    """The engine's per-sample log-probability (raw logits) equals the model's teacher-forced log-probability of the
    same tokens: the likelihood ranking reads the model, not the sampler's temperature or top-k."""
    from cifllm.evaluation.nll import load_scoring_model, token_nll
    from cifllm.sampling.engines import GenerationParams, HFEngine
    from cifllm.sampling.prompts import build_prompt

    engine = HFEngine(toy_model, threads=1)
    prompt = build_prompt(composition="NaCl", z=4)
    params = GenerationParams(num_samples=3, temperature=1.3, top_k=5, max_new_tokens=24, seed=1, logprobs=True)
    gens = list(engine.generate([prompt], params))
    model, tok = load_scoring_model(toy_model)
    p_ids = tok(prompt.text)["input_ids"]
    decoded = [list(g.token_ids) for g in gens]  # the sampled ids (random text does not re-tokenize to them)
    assert len(decoded) == 3
    for g, new in zip(gens, decoded, strict=True):
        assert g.logprob is not None and g.logprob < 0
        seq = p_ids + new + ([tok.eos_token_id] if g.finished else [])
        total, k = token_nll(model, tok, [seq], [len(p_ids)], 4)[0]
        assert k == g.n_tokens + int(g.finished)
        assert -total == pytest.approx(g.logprob, rel=1e-3, abs=1e-3)
    assert all(g.logprob is None for g in engine.generate([prompt], GenerationParams(num_samples=1, max_new_tokens=8)))


def test_space_group_plan_splits_the_candidates_over_the_likeliest_groups(toy_model):
    plan = space_group_plan(toy_model, "NaCl", k=3, n=8)
    assert len(plan) == 3 and sum(p["count"] for p in plan) == 8 and [p["count"] for p in plan] == [3, 3, 2]
    assert plan[0]["logprob"] >= plan[1]["logprob"] >= plan[2]["logprob"]
    feas = feasible_space_groups("NaCl")
    for p in plan:
        assert feas[p["space_group"]] == p["z"] and f"_symmetry_Int_Tables_number {p['space_group']}\n" in p["prompt"]


def test_generate_ranks_by_likelihood_and_dedupes():
    texts = [structure_to_text(rock_salt(5.64)), structure_to_text(cscl_type(3.2)), structure_to_text(rock_salt(5.66))]
    engine = ScriptedEngine(texts, logprobs=[-0.9, -0.2, -0.5])
    out = cifllm.generate(n=2, engine=engine, constrained=False, rank="likelihood", candidates=6)  # de novo: texts as scripted
    assert [s.rank for s in out] == [1, 2]
    assert out[0].structure.composition.num_atoms == 2  # CsCl type: the likeliest
    assert out[0].score["mean_logprob"] == pytest.approx(-0.2 * 10 / 10)
    assert out[1].score["n_copies"] == 4  # both rock-salt texts, twice each: one structure
    assert out[1].score["mean_logprob"] == pytest.approx(-0.5)  # the best-scoring copy represents the group
    assert "rank 1: mean log p -0.2000" in out[0].score_line()


def test_generate_ranks_by_energy_on_the_dft_hull():
    """Real CHGNet on the shipped hull: rock salt at its DFT lattice constant represents its strained copy and beats the CsCl type;
    every E_hull is measured and the formation energy is close to DFT's (-2.1 eV/atom)."""
    pytest.importorskip("chgnet")
    texts = [structure_to_text(rock_salt(6.6)), structure_to_text(cscl_type(3.3)), structure_to_text(rock_salt(5.69))]
    out = cifllm.generate(n=3, engine=ScriptedEngine(texts), constrained=False, rank="energy", candidates=3)
    assert [s.rank for s in out] == [1, 2]  # the strained rock salt is a (volume-scaled) copy of the good one
    best = out[0]
    assert best.structure.lattice.a == pytest.approx(5.69, abs=0.01) and best.score["n_copies"] == 2  # the better copy kept
    assert out[1].structure.composition.num_atoms == 2
    eh = [s.score["e_above_hull"] for s in out]
    assert all(x is not None and math.isfinite(x) for x in eh) and eh == sorted(eh)
    assert best.score["formation_energy_per_atom"] == pytest.approx(-2.1, abs=0.15) and best.score["e_above_hull"] < 0.1
    assert "E_hull" in best.score_line() and "eV/atom" in best.score_line()


def test_generate_refuses_inconsistent_ranking_options(toy_model):
    with pytest.raises(ValueError, match="checks"):
        cifllm.generate(composition="NaCl", model=toy_model, rank="energy", check=False)
    with pytest.raises(ValueError, match="templates"):
        cifllm.generate(composition="NaCl", model=toy_model, pool="hybrid")
    with pytest.raises(cifllm.sampling.PromptError):
        cifllm.generate(composition="NaCl", space_group=225, model=toy_model, space_groups=2)


def test_hybrid_pool_adds_template_candidates():
    templates = [structure_to_text(Structure(Lattice.cubic(6.6), ["K"] * 4 + ["Br"] * 4, FCC + [[(x + 0.5) % 1, y, z] for x, y, z in FCC]))]
    engine = ScriptedEngine([structure_to_text(cscl_type(3.2))], logprobs=[-0.3])
    out = cifllm.generate(composition="NaCl", n=2, engine=engine, constrained=False, rank="likelihood", candidates=2, pool="hybrid", templates=templates)
    assert sorted(s.source for s in out) == ["model", "template"]
    tmpl = next(s for s in out if s.source == "template")
    assert tmpl.structure.composition.reduced_formula == "NaCl" and tmpl.valid


def test_sun_of_samples_counts_against_all_samples():
    """S.U.N. over every de novo sample: an invalid or not-novel sample counts against the rate; stable = E_hull <= 0."""
    pytest.importorskip("chgnet")
    from cifllm.bench.sun import sun_of_samples
    from cifllm.potentials import get_potential
    from cifllm.potentials.hull import HullScorer

    good, strained = structure_to_text(rock_salt(5.69)), structure_to_text(rock_salt(7.5))
    recs = [
        {"kind": "denovo", "text": good, "valid": True, "unique": True, "novel": True},
        {"kind": "denovo", "text": good, "valid": True, "unique": True, "novel": False},  # known: not S.U.N.
        {"kind": "denovo", "text": strained, "valid": True, "unique": True, "novel": True},  # far above the hull
        {"kind": "denovo", "text": "garbage", "valid": False, "unique": False, "novel": None},
        {"kind": "csp", "text": good, "valid": True, "unique": True, "novel": True},  # not de novo: ignored
    ]
    hull = DftHull.from_rows(_rows([("NaCl", {"Na": 1, "Cl": 1}, -2.05)]))  # CHGNet's rock salt sits within ~0.05 of it
    cache: dict = {}
    r = sun_of_samples(recs, HullScorer(get_potential("chgnet"), hull), n=10, cache=cache)
    assert r["n"] == 4 and r["n_valid"] == 3 and r["n_unique_novel"] == 2 and r["n_scored_here"] == 2  # the copy is cached
    assert r["coverage"]["count"] == 3
    assert r["msun"]["count"] == 1 and r["msun"]["n"] == 4  # only the novel good rock salt
    assert r["e_hull_histogram"][">= 2.0"] + r["e_hull_histogram"]["[1.0, 2.0)"] + r["e_hull_histogram"]["[0.5, 1.0)"] >= 1
    again = sun_of_samples(recs, HullScorer(get_potential("chgnet"), hull), n=10, cache=cache)
    assert again["n_scored_here"] == 0 and again["msun"] == r["msun"]
