"""One generation path: ``constrained`` auto / on / off, engine choice, counters in ``samples.jsonl``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cifllm.sampling.engines import EngineError, GenerationParams, HFEngine
from cifllm.sampling.generation import generate, resolve_constrained
from cifllm.sampling.prompts import build_prompt


@pytest.fixture(scope="module")
def v1_model(toy_model, tmp_path_factory) -> Path:
    """The same weights, recorded as a cif-v1 model (like the shipped default model)."""
    dst = tmp_path_factory.mktemp("toy1") / "model"
    shutil.copytree(toy_model, dst)
    meta = json.loads((dst / "cifllm_tokenizer.json").read_text())
    (dst / "cifllm_tokenizer.json").write_text(json.dumps({**meta, "version": "cif-v1"}))
    return dst


def test_resolve_constrained_auto_follows_the_model_format(v1_model, toy_model):
    notes: list[str] = []
    assert resolve_constrained(None, toy_model, log=notes.append) is True and not notes
    assert resolve_constrained(None, v1_model, log=notes.append) is False
    assert len(notes) == 1 and "cif-v1" in notes[0]
    assert resolve_constrained(False, toy_model, log=notes.append) is False
    assert resolve_constrained(True, v1_model, log=notes.append) is True  # forced: the engine refuses it later
    assert len(notes) == 1


def test_generate_auto_constrains_v2_and_not_v1(v1_model, toy_model):
    prompts = [build_prompt(composition="NaCl"), build_prompt()]  # a constrained run needs the budget of a whole CIF
    params = GenerationParams(num_samples=2, max_new_tokens=300, seed=3, batch_size=4)
    kw = dict(engine_name="hf", device="cpu", threads=1)
    on = list(generate(prompts, params, model=toy_model, log=lambda _: None, **kw))
    assert len(on) == 4 and all(isinstance(g.constraint, dict) for g in on)
    notes: list[str] = []
    off = list(generate(prompts, params, model=v1_model, log=notes.append, **kw))
    assert len(off) == 4 and all(g.constraint is None for g in off) and len(notes) == 1
    with pytest.raises(EngineError, match="cif-v1"):
        list(generate(prompts, params, model=v1_model, constrained=True, **kw))
    eng = HFEngine(toy_model, device="cpu", threads=1)  # a loaded engine: same decision, same samples
    again = list(generate(prompts, params, eng, log=lambda _: None))
    assert [g.text for g in again] == [g.text for g in on]
    plain = list(generate(prompts, params, eng, constrained=False))
    assert all(g.constraint is None for g in plain)
    with pytest.raises(ValueError, match="engine or a model"):
        generate(prompts, params)


def test_sample_stage_records_constraint_counters(v1_model, toy_model, tmp_path):
    from cifllm.sampling.run import SAMPLE_FIELDS, SampleConfig, sample

    base = dict(composition="NaCl", num_samples=2, batch_size=2, max_new_tokens=300, device="cpu", threads=1)
    out = sample(SampleConfig(model=str(toy_model), out=str(tmp_path / "v2"), **base), progress=False, log=lambda _: None)
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(set(r) == set(SAMPLE_FIELDS) for r in recs)
    assert all(isinstance(r["constraint"], dict) for r in recs)
    assert json.loads((out / "summary.json").read_text())["constrained"] is True
    notes: list[str] = []
    out = sample(SampleConfig(model=str(v1_model), out=str(tmp_path / "v1"), **base), progress=False, log=notes.append)
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["constraint"] is None for r in recs) and any("cif-v1" in n for n in notes)
    assert json.loads((out / "summary.json").read_text())["constrained"] is False


def test_cli_constrained_flags(v1_model, capsys):
    from cifllm.cli import main

    args = ["generate", "--model", str(v1_model), "--composition", "Na4Cl4", "-n", "1", "--max-new-tokens", "6", "--device", "cpu", "--no-check"]
    assert main([*args, "--constrained"]) == 2
    err = capsys.readouterr().err
    assert "cif-v1" in err and "Loading" not in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--no-constrained", "--engine", "hf"]) == 0
    assert capsys.readouterr().out.count("# sample 1:") == 1
    assert main(["sample", f"model={v1_model}", "composition=Na4Cl4", "constrained=maybe"]) == 2
    assert "constrained" in capsys.readouterr().err
