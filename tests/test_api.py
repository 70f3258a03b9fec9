"""The Python API (cifllm.generate / cifllm.evaluate), its README example, and the sampling defaults every saved model
carries in generation_config.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str, lang: str) -> str:
    """The fenced ``lang`` block that follows ``<!-- marker -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"README.md has no ```{lang} block after <!-- {marker} -->"
    return m.group(1)


def test_import_cifllm_stays_cheap():
    """The API is reachable from the package but loads on first use: `import cifllm` pulls in neither torch nor the API."""
    code = "import sys, cifllm; print('torch' in sys.modules, 'cifllm.api' in sys.modules, callable(cifllm.generate), 'cifllm.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True", "True"]


class ScriptedEngine:
    """An engine that continues every prompt with fixed texts (no model): rock-salt NaCl, then text that cannot parse."""

    name = "scripted"

    def __init__(self, full_texts):
        self.full_texts = full_texts

    def generate(self, prompts, params, counts=None, progress=None):
        from cifllm.sampling.engines import Generation

        for i, p in enumerate(prompts):
            for k in range((counts or [params.num_samples] * len(prompts))[i]):
                full = self.full_texts[k % len(self.full_texts)]
                text = full[len(p.text):] if full.startswith(p.text) else full
                yield Generation(i, k, text, len(text), True, params.seed, 0.0, 0)


def test_generate_returns_checked_samples_with_structures():
    from pymatgen.core import Lattice, Structure

    import cifllm
    from cifllm.cif import structure_to_text

    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]  # built directly: from_spacegroup is slow
    rock_salt = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, fcc + [[(x + 0.5) % 1, y, z] for x, y, z in fcc])
    nacl = structure_to_text(rock_salt)  # canonical text
    engine = ScriptedEngine([nacl, "data_Na4Cl4\n_cell_length_a oops\n"])
    samples = cifllm.generate(composition="NaCl", z=4, n=3, engine=engine, constrained=False, seed=0)
    assert [s.index for s in samples] == [0, 1, 2] and all(s.engine == "scripted" for s in samples)
    ok, bad = samples[0], samples[1]
    assert ok.prompt == "data_Na4Cl4\n" and ok.text == nacl and ok.cif_text == nacl
    assert ok.structure is not None and ok.structure.composition.reduced_formula == "NaCl" and ok.parse_error == ""
    assert ok.valid is True and ok.checks["structural"]["ok"] is True
    assert ok.prompt_adherence is True
    assert bad.structure is None and bad.parse_error and bad.valid is False and bad.prompt_adherence is False
    assert bad.reason.startswith("parse: ") and bad.checks["parse"]["ok"] is False
    assert samples[2].text == nacl
    m = cifllm.evaluate(samples)
    assert m["n_samples"] == 3 and m["counts"]["parse"] == 2 and m["counts"]["valid"] == 2
    assert m["counts"]["unique"] == 1  # the two NaCl samples are one structure
    assert m["counts"]["composition_prompted"] == 3 and m["rates"]["prompt_adherence"] == pytest.approx(2 / 3)
    assert m["rates"]["novel"] is None  # no reference: not measured, never 0
    m2 = cifllm.evaluate([s.cif_text for s in samples])  # plain CIF texts: no prompts to adhere to
    assert m2["counts"]["valid"] == 2 and m2["counts"]["composition_prompted"] == 0


def test_generate_on_a_model(toy_model):
    import cifllm
    from cifllm.sampling.engines import HFEngine

    samples = cifllm.generate(composition="NaCl", space_group="Fm-3m", n=3, model=toy_model, constrained=False, seed=0, max_new_tokens=30)
    for s in samples:
        assert s.prompt.startswith("data_Na4Cl4\n_symmetry_space_group_name_H-M Fm-3m\n")  # Z chosen for Fm-3m and s.text.startswith(s.prompt)
        assert s.structure is None and s.parse_error and s.valid is False and s.prompt_adherence is False  # random weights
        assert 0 < s.n_tokens <= 30 and s.to_record()["cif_text"] == s.cif_text
    engine = HFEngine(toy_model, threads=1)  # a loaded engine, reused; same seed, same samples
    again = cifllm.generate(composition="NaCl", space_group="Fm-3m", n=3, engine=engine, constrained=False, seed=0, max_new_tokens=30)
    assert [s.text for s in again] == [s.text for s in samples]
    denovo = cifllm.generate(n=2, engine=engine, constrained=False, seed=1, max_new_tokens=30, check=False)
    assert [s.prompt for s in denovo] == ["", ""] and all(s.valid is None and s.reason == "not checked" for s in denovo)
    assert all(s.prompt_adherence is None for s in denovo)


def test_generate_and_evaluate_refuse_bad_input(toy_model, tmp_path):
    import cifllm
    from cifllm.core.models import ModelNotFoundError
    from cifllm.sampling import PromptError

    with pytest.raises(PromptError, match="unknown element"):
        cifllm.generate(composition="Xx2O", model=toy_model)
    with pytest.raises(PromptError, match="need a composition"):
        cifllm.generate(space_group=225, model=toy_model)
    with pytest.raises(ValueError, match="n must be"):
        cifllm.generate(composition="NaCl", n=0, model=toy_model)
    with pytest.raises(PromptError, match="adapter"):
        cifllm.generate(composition="NaCl", model=toy_model, conditions={"band_gap": 1.0})
    with pytest.raises(ModelNotFoundError):
        cifllm.generate(composition="NaCl", model=tmp_path / "nothing-here")
    with pytest.raises(TypeError, match="sample 0"):
        cifllm.evaluate([3.5])


def test_evaluate_a_sample_run_folder(toy_model, tmp_path):
    import cifllm
    from cifllm.sampling.run import SampleConfig, sample

    run = sample(SampleConfig(model=str(toy_model), out=str(tmp_path / "s"), composition="KBr", num_samples=2, max_new_tokens=40, threads=1, constrained=False), progress=False, log=lambda m: None)
    m = cifllm.evaluate(run)
    assert m["n_samples"] == 2 and (run / "eval" / "metrics.json").is_file()
    assert json.loads((run / "eval" / "metrics.json").read_text())["counts"] == m["counts"]


def test_readme_python_api_example_runs():
    """The README's Python API block, executed as written (default model, n=2)."""
    code = readme_block("python-api-example", "python")
    t0 = time.perf_counter()
    ns: dict = {}
    exec(compile(code, "README.md#python-api-example", "exec"), ns)
    assert len(ns["samples"]) == 2 and len(ns["denovo"]) == 2
    assert ns["metrics"]["n_samples"] == 4 and ns["metrics"]["counts"]["composition_prompted"] == 2
    assert time.perf_counter() - t0 < 60


# ------------------------------------------------------------------------------------------ generation_config.json


def test_sampling_defaults_are_the_sample_stage_defaults():
    import inspect

    import yaml

    import cifllm
    from cifllm.bench.runner import BenchConfig
    from cifllm.demo import DemoConfig
    from cifllm.hub.generate import generate_cifs
    from cifllm.modeling import SAMPLING_DEFAULTS
    from cifllm.sampling.engines import GenerationParams
    from cifllm.sampling.run import SampleConfig
    from cifllm.utils.resources import resource_path

    gp = GenerationParams()
    sc = {f.name: f.default for f in fields(SampleConfig)}
    for key in ("temperature", "top_k", "top_p"):
        assert SAMPLING_DEFAULTS[key] == getattr(gp, key) == sc[key], key
    for key in ("temperature", "top_k"):  # every caller: bench, demo, cifllm generate, the Python API, shipped YAMLs
        assert getattr(BenchConfig(), key) == getattr(DemoConfig(), key) == SAMPLING_DEFAULTS[key], key
        for fn in (generate_cifs, cifllm.generate):
            assert inspect.signature(fn).parameters[key].default == SAMPLING_DEFAULTS[key], (fn, key)
        for name in ("sample.yaml", "sample_csp.yaml"):
            assert yaml.safe_load(resource_path("configs", "eval", name).read_text())[key] == SAMPLING_DEFAULTS[key], (name, key)
    assert SAMPLING_DEFAULTS["do_sample"] is True and gp.temperature > 0


def test_saved_models_sample_whole_cifs_with_plain_generate(toy_model, tmp_path):
    """Plain `model.generate` on a saved toy model samples (different sequences from one prompt, never greedy) and is
    not cut at transformers' default of 20 tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from cifllm.tokenization import as_pretrained

    gc = json.loads((toy_model / "generation_config.json").read_text())
    assert gc["do_sample"] is True and gc["max_new_tokens"] == 256 and gc["eos_token_id"] == 2 and gc["pad_token_id"] == 0
    model = AutoModelForCausalLM.from_pretrained(toy_model).eval()
    ids = as_pretrained()("data_Na4Cl4\n", return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(ids, num_return_sequences=4, attention_mask=torch.ones_like(ids))
    rows = {tuple(r.tolist()) for r in out}
    assert len(rows) > 1  # sampled, not greedy
    assert max(len(r) for r in rows) - ids.shape[1] > 20
    greedy = model.generate(ids, do_sample=False, max_new_tokens=8)  # explicit arguments still win
    assert greedy.shape[1] == ids.shape[1] + 8


def test_pretrain_built_and_exported_models_carry_the_sampling_config(toy_model, tmp_path):
    from transformers import AutoConfig, GenerationConfig

    from cifllm.hub.export import export_model
    from cifllm.modeling import SAMPLING_DEFAULTS, build_model, make_config, sampling_generation_config

    model = build_model(make_config("tiny", vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=128), seed=0)
    model.save_pretrained(tmp_path / "m")  # what pretraining's trainer.save_model writes
    g = GenerationConfig.from_pretrained(tmp_path / "m")
    assert g.do_sample and g.max_new_tokens == 128 and g.bos_token_id == 1
    assert (g.temperature, g.top_k) == (SAMPLING_DEFAULTS["temperature"], SAMPLING_DEFAULTS["top_k"])
    # an old model folder (greedy, 20 tokens) gets the sampling config when exported
    (toy_model / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    try:
        export_model(toy_model, tmp_path / "exp", dtype="float32")
    finally:
        sampling_generation_config(AutoConfig.from_pretrained(toy_model)).save_pretrained(toy_model)
    g2 = GenerationConfig.from_pretrained(tmp_path / "exp")
    assert g2.do_sample and g2.max_new_tokens == 256
    # the shipped default model
    shipped = ROOT / "cifllm" / "resources" / "default-model"
    if (shipped / "config.json").is_file():
        want = sampling_generation_config(AutoConfig.from_pretrained(shipped)).to_diff_dict()
        have = json.loads((shipped / "generation_config.json").read_text())
        assert {k: v for k, v in have.items() if k != "transformers_version"} == {k: v for k, v in want.items() if k != "transformers_version"}
