"""Prompts, batch planning, the HF engine (tiny random / scripted Llama) and the sample stage."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Composition

from cifllm.cif import structure_to_text
from cifllm.conditioning import BUILTIN
from cifllm.core.config import load_config
from cifllm.sampling import (
    GenerationParams,
    Prompt,
    PromptError,
    SampleConfig,
    build_prompt,
    plan_batches,
    read_prompt_file,
    sample,
    strip_conditions,
)
from cifllm.sampling.engines import Generation, HFEngine
from cifllm.tokenization import build_tokenizer

# ---------------------------------------------------------------- prompts



def test_composition_prompts_use_the_canonical_formula():
    assert build_prompt(composition="NaCl", z=4).text == "data_Na4Cl4\n"
    assert build_prompt(composition="Na4Cl4").text == "data_Na4Cl4\n"
    assert build_prompt(composition=Composition("ClNa") * 4).text == "data_Na4Cl4\n"
    assert build_prompt(composition="O3TiSr").text == "data_Sr1Ti1O3\n"
    p = build_prompt(composition="NaCl", z=4, space_group="Fm-3m")
    assert p.kind == "composition_sg"
    assert p.text == "data_Na4Cl4\n_symmetry_space_group_name_H-M Fm-3m\n_symmetry_Int_Tables_number 225\n"
    assert build_prompt(composition="NaCl", z=4, space_group=225).text == p.text
    assert p.meta["reduced_formula"] == "NaCl" and p.meta["sg_number"] == 225
    assert build_prompt().text == "" and build_prompt().kind == "de_novo"
    assert build_prompt(prefix="data_Na4Cl4\n_symmetry").kind == "prefix"


def test_prompts_are_token_prefixes_of_the_canonical_text(structures):
    """The prompt must tokenize exactly like the start of the training text, or the model sees a new sequence."""
    tok = build_tokenizer()
    for s in structures:
        text = structure_to_text(s)
        full = tok.encode(text).ids
        sg = s.get_space_group_info(symprec=0.1)[1]
        for p in (build_prompt(composition=s.composition), build_prompt(composition=s.composition, space_group=sg)):
            assert text.startswith(p.text)
            ids = tok.encode(p.text).ids
            assert full[: len(ids)] == ids, p.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"composition": "Xx2O"}, "unknown element"),
        ({"composition": "NaCl)"}, "malformed|invalid"),
        ({"composition": "na cl"}, "malformed"),
        ({"composition": "Na-Cl"}, "malformed"),
        ({"composition": "Na0Cl"}, "zero count"),
        ({"composition": "D2O"}, "unknown element"),
        ({"composition": ""}, "empty"),
        ({"composition": "NaCl", "z": 0}, "Z must be"),
        ({"composition": "Na1000000Cl"}, "atoms >"),
        ({"composition": "NaCl", "space_group": 231}, "not in 1..230"),
        ({"composition": "NaCl", "space_group": "Fm3m"}, "unknown space-group symbol"),
        ({"space_group": 225}, "need a composition"),
        ({"prefix": "data_", "composition": "NaCl"}, "excludes"),
        ({"prefix": "<|eos|>"}, "special tokens"),
        ({"prefix": "data_Na\u00e9"}, "ASCII"),
        ({"conditions": {"colour": 1.0}}, "unknown condition"),
    ],
)
def test_bad_prompts_are_rejected_with_a_message(kwargs, match):
    with pytest.raises(PromptError, match=match):
        build_prompt(**kwargs)


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\nNa4Cl4\n\nSrTiO3 Pm-3m\n*\n")
    got = read_prompt_file(txt)
    assert [p.kind for p, _ in got] == ["composition", "composition_sg", "de_novo"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"composition": "NaCl", "z": 4, "n": 3, "id": "a", "meta": {"target_id": "t1"}}\n{}\n{"prefix": "data_Mg"}\n')
    got = read_prompt_file(jl)
    assert got[0][0].text == "data_Na4Cl4\n" and got[0][1] == 3 and got[0][0].id == "a"
    assert got[0][0].meta["target_id"] == "t1"
    assert got[1][0].kind == "de_novo" and got[1][1] is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"composition": "NaCl"}\n{"composition": "Qq2"}\n')
    with pytest.raises(PromptError, match=r"bad.jsonl:2: unknown element"):
        read_prompt_file(bad)
    bad.write_text('{"formula": "NaCl", "temperature": 3}\n')
    with pytest.raises(PromptError, match="unknown key"):
        read_prompt_file(bad)
    bad.write_text("{not json\n")
    with pytest.raises(PromptError, match="invalid JSON"):
        read_prompt_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(PromptError, match="no prompts"):
        read_prompt_file(empty)


def test_property_conditions_need_no_registry(tmp_path):
    """Property lines are pure functions of an explicit property set: nothing to register, strip always works."""
    assert strip_conditions("_property_band_gap_eV 1\ndata_X\n") == "data_X\n"  # fresh process state, no setup
    p = build_prompt(composition="NaCl", z=4, conditions={"band_gap": 5, "tc": 9})
    assert p.text == "_property_tc_K 9.0\n_property_band_gap_eV 5.00\ndata_Na4Cl4\n"  # the property set's order
    assert p.meta["conditions"] == {"band_gap": 5, "tc": 9}
    assert build_prompt(conditions={"band_gap": 1}).text == "_property_band_gap_eV 1.00\n"
    assert strip_conditions(p.text + "_symmetry_space_group_name_H-M Fm-3m\n") == "data_Na4Cl4\n_symmetry_space_group_name_H-M Fm-3m\n"
    f = tmp_path / "c.jsonl"
    f.write_text('{"composition": "NaCl", "band_gap": 2.5}\n')
    assert read_prompt_file(f)[0][0].text == "_property_band_gap_eV 2.50\ndata_Na1Cl1\n"
    with pytest.raises(PromptError, match="band_gap"):
        build_prompt(conditions={"band_gap": "high"})
    # a user property exists only in the set that maps it
    mine = BUILTIN.with_user("hardness", unit="GPa", decimals=1)
    assert build_prompt(conditions={"hardness": 7.25}, properties=mine).text == "_property_reserved_0 7.2\n"
    with pytest.raises(PromptError, match="unknown condition"):
        build_prompt(conditions={"hardness": 7})
    f.write_text('{"hardness": 3}\n')
    assert read_prompt_file(f, mine)[0][0].text == "_property_reserved_0 3.0\n"
    with pytest.raises(PromptError, match="unknown key"):
        read_prompt_file(f)


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("counts, bs", [([5, 5, 5], 4), ([1] * 10, 3), ([20, 1, 7], 8), ([3], 100), ([0, 2], 2)])
def test_plan_batches_covers_every_sample_once(counts, bs):
    plan = plan_batches(counts, bs)
    seen = {}
    for batch in plan:
        ns = {n for _, _, n in batch}
        assert len(ns) == 1  # one num_return_sequences per generate call
        assert sum(n for _, _, n in batch) <= bs
        for i, start, n in batch:
            for k in range(start, start + n):
                assert (i, k) not in seen
                seen[(i, k)] = True
    assert sorted(seen) == sorted((i, k) for i, c in enumerate(counts) for k in range(c))


def test_generation_params_validate():
    with pytest.raises(ValueError):
        GenerationParams(top_p=0)
    with pytest.raises(ValueError):
        GenerationParams(num_samples=0)
    with pytest.raises(ValueError):
        GenerationParams(temperature=-1)


# ---------------------------------------------------------------- HF engine


@pytest.fixture(scope="module")
def engine(toy_model) -> HFEngine:
    return HFEngine(toy_model, device="cpu", threads=1)


def _texts(gens: list[Generation]) -> list[str]:
    return [g.text for g in sorted(gens, key=lambda g: (g.prompt_index, g.sample_index))]


def test_hf_engine_counts_seeds_and_lengths(engine):
    prompts = [build_prompt(composition="NaCl", z=4), build_prompt(), build_prompt(composition="SrTiO3", space_group=221)]
    params = GenerationParams(num_samples=3, max_new_tokens=12, seed=7, batch_size=4)
    gens = list(engine.generate(prompts, params))
    assert sorted((g.prompt_index, g.sample_index) for g in gens) == [(i, k) for i in range(3) for k in range(3)]
    assert all(g.n_tokens <= 12 and not g.error for g in gens)
    assert all((g.n_tokens == 12) or g.finished for g in gens)
    again = list(engine.generate(prompts, params))
    assert _texts(gens) == _texts(again)  # seeded
    other = list(engine.generate(prompts, GenerationParams(num_samples=3, max_new_tokens=12, seed=8, batch_size=4)))
    assert _texts(gens) != _texts(other)
    counts = list(engine.generate(prompts, params, counts=[1, 0, 2]))
    assert sorted((g.prompt_index, g.sample_index) for g in counts) == [(0, 0), (2, 0), (2, 1)]


def test_hf_left_padding_batched_equals_one_by_one(engine):
    """Greedy decoding: batched (left padded, different prompt lengths) gives the same text as batch size 1."""
    prompts = [build_prompt(), build_prompt(composition="NaCl", z=4), build_prompt(composition="SrTiO3", space_group=221)]
    greedy = dict(num_samples=1, temperature=0.0, max_new_tokens=16)
    batched = _texts(list(engine.generate(prompts, GenerationParams(**greedy, batch_size=8))))
    single = _texts(list(engine.generate(prompts, GenerationParams(**greedy, batch_size=1))))
    assert batched == single
    assert len(set(batched)) > 1


def test_hf_prompt_longer_than_context_gets_an_error(engine):
    long = build_prompt(prefix="data_" + "Na" * 400)
    gens = list(engine.generate([long, build_prompt()], GenerationParams(max_new_tokens=4)))
    errs = [g for g in gens if g.prompt_index == 0]
    assert len(errs) == 1 and "context" in errs[0].error
    assert any(g.prompt_index == 1 and not g.error for g in gens)


def _script_model(engine: HFEngine, continuation: str) -> None:
    """Make the model write ``continuation`` then <|eos|>, whatever the prompt (forces the logits)."""
    tok = engine.tokenizer
    script = tok(continuation, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    state = {"step": 0}

    def hook(module, args, output):
        k = min(state["step"], len(script) - 1)
        output[:, -1, :] = -1e4
        output[:, -1, script[k]] = 1e4
        state["step"] += 1
        return output

    engine.model.lm_head.register_forward_hook(hook)
    orig = engine.model.generate

    def generate(*a, **kw):
        state["step"] = 0
        return orig(*a, **kw)

    engine.model.generate = generate


def test_sample_stage_writes_jsonl_and_cifs(toy_model, structures, tmp_path):
    from pymatgen.io.cif import CifParser

    nacl_text = structure_to_text(next(s for s in structures if s.composition.reduced_formula == "NaCl"))
    eng = HFEngine(toy_model, device="cpu", threads=1)
    prompt = "data_Na4Cl4\n"
    _script_model(eng, nacl_text[len(prompt) :])
    cfg = SampleConfig(model=str(toy_model), out=str(tmp_path / "run"), composition="NaCl", z=4, num_samples=3, batch_size=2, max_new_tokens=400, seed=1, constrained=False)
    out = sample(cfg, engine=eng, progress=False, log=lambda s: None)
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 3
    for r in recs:
        assert r["text"] == nacl_text and r["cif_text"] == nacl_text
        assert r["finished"] and r["parse_ok"] and r["parse_error"] == ""
        assert r["engine"] == "hf" and r["prompt"] == prompt and r["prompt_meta"]["formula"] == "Na4Cl4"
        s = CifParser(str(out / r["cif_file"])).parse_structures(primitive=False)[0]
        assert s.composition.reduced_formula == "NaCl" and len(s) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 3 and summary["n_parsed"] == 3
    assert (out / "config.yaml").is_file() and (out / "prompts.jsonl").is_file()


def test_unparsable_samples_are_kept_with_the_error(toy_model, tmp_path):
    cfg = SampleConfig(model=str(toy_model), out=str(tmp_path / "run"), num_samples=4, batch_size=4, max_new_tokens=20, device="cpu", threads=1)
    out = sample(cfg, progress=False, log=lambda s: None)
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    assert all(not r["parse_ok"] and r["parse_error"] and r["cif_file"] is None for r in recs)
    assert not list((out / "cifs").iterdir())


def test_sample_cli_rejects_bad_prompt_before_loading(tmp_path, capsys):
    from cifllm.cli import main

    rc = main(["sample", "model=/nonexistent", f"out={tmp_path / 'r'}", "composition=Xq2O"])
    assert rc == 2
    assert "unknown element" in capsys.readouterr().err
    rc = main(["sample", f"out={tmp_path / 'r'}", "composition=NaCl", "temprature=1"])
    assert rc == 2 and "unknown key" in capsys.readouterr().err


def test_prompt_json_roundtrip():
    p = build_prompt(composition="NaCl", z=2, meta={"target_id": "x"})
    d = p.to_json()
    assert Prompt(d["text"], d["kind"], d["id"], d["meta"]) == p


def test_cli_sample_then_evaluate_with_a_test_model(toy_model, tiny_corpus, tmp_path):
    from cifllm.cli import main

    run = tmp_path / "run"
    assert main(["sample", "--no-progress", f"model={toy_model}", f"out={run}", "composition=SrTiO3", "space_group=Pm-3m", "num_samples=3", "batch_size=3", "max_new_tokens=24", "device=cpu", "threads=1", "constrained=false"]) == 0
    recs = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["prompt_kind"] == "composition_sg" for r in recs)
    assert main(["evaluate", "--no-progress", f"samples={run}", f"reference={tiny_corpus}", "workers=0"]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["n_samples"] == 3 and sum(m["first_failure"].values()) == 3
    assert (run / "eval" / "report.html").is_file()


def test_space_group_without_z_picks_the_smallest_realizable_cell():
    """NaCl in Fm-3m cannot be one formula unit (its Wyckoff multiplicities are 4, 8, 24, ...): Z = 4 is chosen and
    recorded; an explicit z is kept as given; SrTiO3 in Pm-3m stays at Z = 1."""
    from cifllm.sampling.prompts import build_prompt

    p = build_prompt(composition="NaCl", space_group="Fm-3m")
    assert p.text.startswith("data_Na4Cl4\n") and p.meta["z_auto"] == 4 and p.meta["reduced_formula"] == "NaCl"
    assert build_prompt(composition="NaCl", z=1, space_group=225).text.startswith("data_Na1Cl1\n")
    q = build_prompt(composition="SrTiO3", space_group="Pm-3m")
    assert q.text.startswith("data_Sr1Ti1O3\n") and "z_auto" not in q.meta


def test_constraint_settings_reach_the_engine():
    """``constraint.*`` keys of ``cifllm sample`` become the generation's ConstraintConfig (the geometry guard's A/B)."""
    cfg = load_config(SampleConfig, overrides=["model=m", "constraint.min_bond_ratio=0", "constraint.min_distance=0.6"])
    c = cfg.generation_params().constraint
    assert (c.min_bond_ratio, c.min_distance) == (0.0, 0.6)
    assert load_config(SampleConfig, overrides=["model=m"]).generation_params().constraint.min_bond_ratio == 0.7
