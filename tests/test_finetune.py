"""LoRA fine-tuning and property conditioning: format, adapter records, base-model checks, the toy conditioning test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifllm.conditioning import (
    ConditioningError,
    expand_conditions,
    expand_values,
    format_property_lines,
    parse_property_lines,
    property_values,
    split_conditioning,
)

# -- the conditioning format ------------------------------------------------------------------------------------------


def test_property_lines_fixed_order_precision_and_parse():
    lines = format_property_lines({"band_gap": 3.14159, "tc": 92.456})
    assert lines == ["_property_tc_K 92.5", "_property_band_gap_eV 3.14"]  # PROPERTIES order, fixed decimals
    assert format_property_lines({"n_atoms": 8}) == ["_property_n_atoms 8"]
    assert format_property_lines({"formation_energy": -0.0001}) == ["_property_formation_energy_eV_atom 0.000"]
    text = "\n".join(lines) + "\ndata_Na4Cl4\n_cell_length_a 5.0\n"
    assert parse_property_lines(text) == {"tc": 92.5, "band_gap": 3.14}
    props, rest = split_conditioning(text)
    assert props == {"tc": 92.5, "band_gap": 3.14} and rest.startswith("data_Na4Cl4")
    with pytest.raises(ConditioningError, match="malformed property line"):
        parse_property_lines("_property_tc_K hot\ndata_X\n")
    with pytest.raises(ConditioningError, match="unknown property 'colour'"):
        format_property_lines({"colour": 1.0})
    with pytest.raises(ConditioningError, match="not a finite number"):
        format_property_lines({"tc": float("nan")})


def test_property_tags_are_single_tokens():
    from cifllm.conditioning import PROPERTIES
    from cifllm.tokenization import as_pretrained

    tok = as_pretrained()
    for p in PROPERTIES.values():
        ids = tok(p.tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, p.tag


def test_values_lists_and_grids():
    assert expand_values(5) == [5.0]
    assert expand_values([1, 2.5]) == [1.0, 2.5]
    assert expand_values("80:160:5") == [80.0, 100.0, 120.0, 140.0, 160.0]
    assert expand_values({"min": 0, "max": 1, "n": 3}) == [0.0, 0.5, 1.0]
    assert expand_values("1,2,3") == [1.0, 2.0, 3.0]
    for bad, msg in [("hot", "expected a number"), ("5:1:3", "max 1.0 < min 5.0"), ({"min": 0}, "min, max and n"), ([], "empty"), (True, "not a number")]:
        with pytest.raises(ConditioningError, match=msg):
            expand_values(bad)
    combos = expand_conditions({"band_gap": [1, 2], "tc": "10:30:3"})
    assert len(combos) == 6 and list(combos[0]) == ["tc", "band_gap"]  # keys in training order


def test_prompts_with_property_conditions_and_strip():
    from cifllm.sampling.prompts import build_prompt, strip_conditions

    p = build_prompt(composition="NaCl", z=4, conditions={"tc": 120})
    assert p.text == "_property_tc_K 120.0\ndata_Na4Cl4\n"
    assert build_prompt(conditions={"band_gap": 3}).text == "_property_band_gap_eV 3.00\n"
    assert strip_conditions(p.text + "_cell_length_a 5.6\n") == "data_Na4Cl4\n_cell_length_a 5.6\n"


def test_property_values_from_rows():
    text = "data_Na4Cl4\n"
    row = {"text": text, "value": 12.0, "year": 2001, "properties": json.dumps({"band_gap": 5.1})}
    assert property_values(row, ("tc", "band_gap", "year"), task_property="tc") == {"tc": 12.0, "band_gap": 5.1, "year": 2001.0}
    assert property_values({"text": text, "value": None}, ("tc",), "tc") == {}


# -- fine-tuning on a toy task ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tiny_corpus, tmp_path_factory):
    """A split of the fixture corpus conditioned on n_atoms, a tiny base model (200 steps) and its LoRA (200 steps)."""
    from dataclasses import replace

    from cifllm.bench.splits import build_split
    from cifllm.bench.tasks import load_task
    from cifllm.training.config import PretrainConfig, TrainArgs
    from cifllm.training.finetune import FINETUNE_TRAIN, FinetuneConfig, finetune
    from cifllm.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("finetune")
    task_file = root / "toy.yaml"
    task_file.write_text(
        "name: toy\ncase: 0\ndescription: fixture crystals, conditioned on atoms per cell\nrule: random_formula\n"
        "test_fraction: 0.1\nval_fraction: 0.15\nconditioning: [n_atoms]\n"
    )
    build_split(load_task(task_file), tiny_corpus, root / "tasks", workers=0)
    base = pretrain(
        PretrainConfig(
            corpus=str(tiny_corpus), out=str(root / "base"), preset="tiny",
            train=TrainArgs(max_steps=200, batch_size=16, lr=3e-3, warmup_steps=5, eval_steps=0, save_steps=1000, logging_steps=50, progress=False, precision="fp32"),
        )
    )
    cfg = FinetuneConfig(
        task=str(task_file), base=str(base), splits=str(root / "tasks"), out=str(root / "ft"), merge=True,
        train=replace(FINETUNE_TRAIN, max_steps=200, batch_size=16, lr=5e-3, warmup_steps=5, eval_steps=100, save_steps=100, progress=False, precision="fp32"),
    )
    adapter = finetune(cfg)
    return {"root": root, "task": task_file, "base": base, "adapter": adapter, "cfg": cfg}


def test_adapter_folder_and_record(toy):
    from cifllm.training.adapters import model_fingerprint, read_adapter_record

    a = toy["adapter"]
    for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "cifllm_adapter.json"):
        assert (a / f).is_file(), f
    rec = read_adapter_record(a)
    assert rec["base_fingerprint"] == model_fingerprint(toy["base"])
    st = rec["conditioning"]["n_atoms"]
    assert st["unit"] == "atoms" and 1 <= st["min"] <= st["max"] <= 12 and st["n"] > 20
    assert rec["eval_loss"] < rec["eval_loss_base"]  # the adapter learned the conditioned text
    assert rec["lora"]["r"] == 16 and "down_proj" in rec["lora"]["target_modules"]
    assert 0 < rec["adapter_mb"] < 1 and rec["trainable_parameters"] < rec["base_parameters"]
    assert json.loads((toy["root"] / "ft" / "metrics.json").read_text())["global_step"] == 200
    # the adapter's card: written from the record (not peft's template), the base named without this machine's path
    card = (a / "README.md").read_text()
    assert "More Information Needed" not in card and "# cifllm LoRA adapter: `toy`" in card
    assert "fixture crystals, conditioned on atoms per cell" in card and "`n_atoms`" in card
    assert f"{rec['eval_loss_base']:.4f} -> {rec['eval_loss']:.4f}" in card and rec["base_fingerprint"] in card
    named = json.loads((a / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not Path(named).is_absolute() and str(toy["root"]) not in card


def test_merged_model_equals_base_plus_adapter(toy):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cifllm.tokenization import as_pretrained

    ids = as_pretrained()("_property_n_atoms 8\ndata_Na4Cl4\n", return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(toy["root"] / "ft" / "merged").eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy["base"]), str(toy["adapter"])).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-4)


def test_merge_adapter_folder_serves_base_plus_adapter(toy, tmp_path):
    """merge_adapter (what VLLMEngine serves with merge_lora): a new save_pretrained folder whose logits equal base +
    adapter, with the base folder's tokenizer and records (the text format the constraint engine checks)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cifllm.sampling.engines import EngineError, merge_adapter, model_text_format
    from cifllm.tokenization import as_pretrained, load_tokenizer

    out = merge_adapter(toy["base"], toy["adapter"], tmp_path / "m")
    ids = as_pretrained()("_property_n_atoms 8\ndata_Na4Cl4\n", return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy["base"]), str(toy["adapter"])).eval()
    base = AutoModelForCausalLM.from_pretrained(toy["base"]).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)
    assert model_text_format(out) == model_text_format(toy["base"])
    assert load_tokenizer(out).get_vocab() == load_tokenizer(toy["base"]).get_vocab()
    with pytest.raises(EngineError, match="exists"):
        merge_adapter(toy["base"], toy["adapter"], out)


def test_toy_conditioning_moves_generated_n_atoms(toy):
    """Asked for more atoms per cell, the fine-tuned model writes cells with more atoms (no oracle needed)."""
    from cifllm.evaluation.conditioning import conditioning_response

    r = conditioning_response(toy["base"], toy["adapter"], "n_atoms", [2, 12], n_per_value=24, max_new_tokens=40, seed=0, constrained=False)
    low, high = r["asked"]["2"], r["asked"]["12"]
    assert low["n_measured"] >= 8 and high["n_measured"] >= 8
    assert high["mean"] > low["mean"]
    assert r["spearman"] > 0


def test_conditional_nll_sees_the_property_line(toy):
    """Teacher forcing: the toy adapter (conditioned on n_atoms) finds its training CIFs more likely after their own
    n_atoms line than after another CIF's; with empty prefixes the sums equal nll_per_token."""
    import random

    from cifllm.bench.splits import load_split
    from cifllm.evaluation.nll import conditional_nll, nll_per_token

    rows = load_split(toy["root"] / "tasks" / "toy", "train")[:40]
    texts = [r["text"] for r in rows]
    vals = [property_values(r, ("n_atoms",))["n_atoms"] for r in rows]
    shuffled = vals[:]
    random.Random(0).shuffle(shuffled)
    line = lambda v: "".join(x + "\n" for x in format_property_lines({"n_atoms": v}))  # noqa: E731
    true = conditional_nll(toy["base"], [line(v) for v in vals], texts, adapter=toy["adapter"])
    other = conditional_nll(toy["base"], [line(v) for v in shuffled], texts, adapter=toy["adapter"])
    moved = [(a[0] - b[0]) / a[1] for a, b, v, w in zip(other, true, shuffled, vals, strict=True) if v != w]
    assert len(moved) >= 20 and sum(moved) / len(moved) > 0.01  # nats per CIF token
    plain = conditional_nll(toy["base"], [""] * len(texts), texts)
    ref = nll_per_token(toy["base"], texts)
    assert sum(t for t, _ in plain) / sum(n for _, n in plain) == pytest.approx(ref["nll"], rel=1e-5)
    assert sum(n for _, n in plain) == ref["n_tokens"]
    with pytest.raises(ValueError, match="2 prefixes for 1 texts"):
        conditional_nll(toy["base"], ["", ""], texts[:1])


def test_property_line_use_report(toy):
    """benchmarks/bench_property_use.py's library function on the toy task: the adapter reads its n_atoms line (own
    value likelier than another CIF's, interval above 0); every group reports the three lines."""
    from cifllm.bench.property_use import property_line_use

    r = property_line_use(toy["base"], toy["adapter"], toy["task"], toy["root"] / "tasks", max_texts=30, log=lambda m: None, in_range_split="train")
    assert r["property"] == "n_atoms" and set(r["groups"]) == {"train", "test"}
    val = r["groups"]["train"]
    assert set(val["nll_per_token"]) == {"true", "shuffled", "none"} and val["n_texts"] == 30
    assert val["diff_shuffled_minus_true"]["ci95"][0] > 0
    assert set(r["groups"]["test"]["nll_per_token"]) == {"true", "train_median", "none"}


def test_adapter_is_refused_on_another_base(toy, tmp_path):
    from cifllm.sampling.engines import EngineError, HFEngine
    from cifllm.sampling.toy import save_random_llama

    other = save_random_llama(tmp_path / "other", shape="test")
    with pytest.raises(EngineError, match="was trained on base model"):
        HFEngine(other, lora=toy["adapter"])
    HFEngine(toy["base"], lora=toy["adapter"])  # its own base loads


def test_fingerprint_survives_bf16_export(toy, tmp_path):
    from cifllm.hub.export import export_model
    from cifllm.sampling.engines import HFEngine
    from cifllm.training.adapters import model_fingerprint

    dst = tmp_path / "bf16"
    export_model(toy["base"], dst, dtype="bfloat16")
    assert model_fingerprint(dst) == model_fingerprint(toy["base"])
    HFEngine(dst, lora=toy["adapter"])  # the adapter loads on the bf16 copy of its base


def test_conditions_checked_against_the_adapter(toy, tmp_path):
    from cifllm.sampling.prompts import PromptError
    from cifllm.sampling.run import SampleConfig, collect_prompts
    from cifllm.training.adapters import AdapterError

    cfg = SampleConfig(model=str(toy["base"]), lora=str(toy["adapter"]), conditions="n_atoms=4,40", composition="NaCl")
    prompts, counts = collect_prompts(cfg)
    assert [p.text.split("\n")[0] for p in prompts] == ["_property_n_atoms 4", "_property_n_atoms 40"]
    assert "extrapolation" not in prompts[0].meta
    assert "above the training maximum" in prompts[1].meta["extrapolation"]["n_atoms"]
    with pytest.raises(AdapterError, match="not trained on property \\['tc'\\]"):
        collect_prompts(SampleConfig(model=str(toy["base"]), lora=str(toy["adapter"]), conditions="tc=90"))
    with pytest.raises(PromptError, match="name=value"):
        collect_prompts(SampleConfig(model=str(toy["base"]), conditions="tc"))


def test_resume_and_existing_run(toy):
    import dataclasses

    from cifllm.config import ConfigError
    from cifllm.training.finetune import finetune

    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(toy["cfg"])
    with pytest.raises(ConfigError, match="differ from the saved run config"):
        finetune(dataclasses.replace(toy["cfg"], lora_r=8), resume=True)


def test_finetune_cli_bad_input(toy, tmp_path, capsys):
    from cifllm.cli import main

    assert main(["finetune", "--task", "no_such_task", "--base", str(toy["base"]), "--out", str(tmp_path / "x")]) == 2
    assert "no task file" in capsys.readouterr().err
    assert main(["finetune", "--task", str(toy["task"]), "--base", str(toy["base"]), "conditioning=[colour]"]) == 2
    assert "unknown conditioning property" in capsys.readouterr().err
    assert main(["finetune", "--task", str(toy["task"]), "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2


def test_base_corpus_excludes_every_task(toy, tiny_corpus, tmp_path):
    from cifllm.bench.splits import build_split, task_pretrain_corpus
    from cifllm.bench.tasks import load_task
    from cifllm.data.corpus import load_corpus

    t2 = tmp_path / "toy2.yaml"
    t2.write_text("name: toy2\ncase: 0\ndescription: second toy\nrule: random_formula\ntest_fraction: 0.2\nseed: 7\n")
    build_split(load_task(t2), tiny_corpus, tmp_path / "tasks", workers=0)
    dirs = [toy["root"] / "tasks" / "toy", tmp_path / "tasks" / "toy2"]
    excl = set().union(*(set((d / "pretrain_exclude.txt").read_text().split()) for d in dirs))
    out = task_pretrain_corpus(tiny_corpus, dirs, tmp_path / "base")
    ids = set(load_corpus(out)["id"])
    assert ids and not ids & excl and len(ids) == len(load_corpus(tiny_corpus)) - len(excl)
    man = json.loads((Path(out) / "manifest.json").read_text())
    assert set(man["tasks"]) == {"toy", "toy2"} and man["excluded_rows"] == len(excl)


def test_generate_with_adapter_and_property(toy, capsys):
    from cifllm.cli import main

    args = ["generate", "--composition", "NaCl", "--z", "4", "--model", str(toy["base"]), "--adapter", str(toy["adapter"]), "-n", "2", "--max-new-tokens", "24", "--no-constrained", "--no-check"]
    assert main([*args, "--property", "n_atoms=8"]) == 0
    out = capsys.readouterr().out
    assert out.count("# sample") == 2 and "_property_" not in out and "data_Na4Cl4" in out
    assert main([*args, "--property", "tc=90"]) == 2
    assert "not trained on property" in capsys.readouterr().err
    assert main([*args[:-1], "--property", "n_atoms=hot"]) == 2
