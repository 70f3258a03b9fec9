"""The Python API (cifllm.generate / cifllm.evaluate), its README example, and the sampling defaults every saved model
carries in generation_config.json."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
import time
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


def _rock_salt_text(a: float) -> str:
    from pymatgen.core import Lattice, Structure

    from cifllm.cif import structure_to_text

    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    return structure_to_text(Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, fcc + [[(x + 0.5) % 1, y, z] for x, y, z in fcc]))


def test_cli_names_both_verdicts_each_with_its_own_reason(toy_model, monkeypatch, capsys):
    """Rock salt stretched to a = 8 A (Na-Cl 4.0 A, 1.41x the expected bond) is CDVAE-valid but fails CrystaLLM's
    bond-length rule: the output names both verdicts and gives the reason next to the one that failed, instead of
    `valid=True ... bond_length_unreasonable` side by side. With --no-check nothing is measured: no verdict at all."""
    from cifllm.cli import main
    from cifllm.sampling import generation

    stretched = _rock_salt_text(8.0)
    monkeypatch.setattr(generation, "make_engine", lambda name, model, **kw: _Located(ScriptedEngine([stretched, "data_Na4Cl4\n_cell_length_a oops\n"]), model))
    assert main(["generate", "--composition", "NaCl", "--z", "4", "-n", "2", "--model", str(toy_model)]) == 0
    cap = capsys.readouterr()
    headers = [ln for ln in cap.out.splitlines() if ln.startswith("# sample ")]
    assert headers[0].startswith("# sample 1: CDVAE-valid yes; CrystaLLM-consistent no (crystallm_bond_length: ")
    assert headers[0].endswith("; composition kept yes")
    assert headers[1].startswith("# sample 2: CDVAE-valid no (parse: ") and "CrystaLLM-consistent no (parse: " in headers[1]
    assert "valid=" not in cap.out and cap.out.count("data_Na4Cl4\n") == 2 and "\n\n# sample 2" in cap.out
    assert "1 CDVAE-valid, 0 CrystaLLM-consistent, 1/2 keep the prompt's composition" in cap.err
    assert main(["generate", "--composition", "NaCl", "--z", "4", "-n", "2", "--model", str(toy_model), "--no-check"]) == 0
    cap = capsys.readouterr()
    assert [ln for ln in cap.out.splitlines() if ln.startswith("# sample ")] == ["# sample 1: not checked", "# sample 2: not checked"]
    assert "valid" not in cap.err


def test_unchecked_samples_are_not_measured_never_false():
    """check=False: valid / consistent / prompt_adherence are None (not measured) for every kind of prompt."""
    import cifllm

    for kw in ({"composition": "NaCl", "z": 4}, {}):
        samples = cifllm.generate(**kw, n=2, engine=ScriptedEngine(["data_Na4Cl4\n_cell_length_a oops\n"]), constrained=False, check=False)
        assert [(s.valid, s.consistent, s.prompt_adherence, s.reason) for s in samples] == [(None, None, None, "not checked")] * 2
        assert all(s.verdicts() == "not checked" and s.constrained is False for s in samples)


def test_verdict_reason_skipped_checks_name_the_check_that_stopped_them():
    from cifllm.api import verdict_reason

    checks = {"parse": {"ok": True}, "cell": {"ok": False, "reason": "cell_flat", "detail": "volume / abc 0.01"}, "structural": {"ok": None, "reason": "skipped_cell"},
              "formula": {"ok": True}, "space_group": {"ok": None, "reason": "skipped_cell"}}
    assert verdict_reason(checks, "valid") == "cell: cell_flat (volume / abc 0.01)"
    assert verdict_reason(checks, "consistent") == "cell: cell_flat (volume / abc 0.01)"
    assert verdict_reason({"crystallm_formula": {"ok": True}, "crystallm_space_group": {"ok": None, "reason": "skipped_parse"}}, "consistent") == "not checked: parse failed"
    assert verdict_reason({"parse": {"ok": True}, "structural": {"ok": True}}, "valid") == ""


class _Located:
    """An engine with a ``model_dir`` (what a loaded engine has), wrapping a scripted one."""

    def __init__(self, inner, model_dir):
        self.inner, self.model_dir, self.name = inner, str(model_dir), inner.name

    def generate(self, *a, **k):
        return self.inner.generate(*a, **k)


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


class RecordingEngine:
    """Stands in for the engine every entry point loads (``make_engine`` of the one generation path): records the
    ``GenerationParams`` it is asked to sample with and writes a short text per sample (no model)."""

    name = "recording"

    def __init__(self, model_dir, calls):
        self.model_dir, self.calls = str(model_dir), calls

    def generate(self, prompts, params, counts=None, progress=None):
        from cifllm.sampling.engines import Generation

        self.calls.append(params)
        for i, _ in enumerate(prompts):
            for k in range((counts or [params.num_samples] * len(prompts))[i]):
                if progress:
                    progress(1)
                yield Generation(i, k, "_cell_length_a oops\n", 3, True, params.seed + k, 0.01, 0)


def test_every_entry_point_samples_with_the_one_set_of_defaults(toy_model, tmp_path, monkeypatch, capsys):
    """The values each entry point *passes to the generation path* when the user sets none: ``cifllm generate``,
    ``cifllm.generate``, ``cifllm sample``, ``cifllm demo`` (bench: tests/test_bench_runner.py) all sample with
    :data:`cifllm.core.sampling.SAMPLING`; so do ``GenerationParams``, every shipped sample YAML and the model's
    ``generation_config`` (written from it)."""
    import yaml

    import cifllm
    from cifllm.api import generate as api_generate
    from cifllm.cli import generate as cli_generate
    from cifllm.cli import main
    from cifllm.core.sampling import SAMPLING
    from cifllm.modeling import SAMPLING_DEFAULTS
    from cifllm.sampling import generation
    from cifllm.sampling.engines import GenerationParams
    from cifllm.utils.resources import resource_path

    calls: list = []
    monkeypatch.setattr(generation, "make_engine", lambda name, model, **kw: RecordingEngine(model, calls))
    want = {k: getattr(SAMPLING, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens")}

    def effective():
        assert len(calls) == 1, calls
        gp = calls.pop()
        return {k: getattr(gp, k) for k in want}

    assert main(["generate", "--composition", "NaCl", "--model", str(toy_model)]) == 0
    assert effective() == want, "cifllm generate"
    out = capsys.readouterr().out
    assert out.count("# sample ") == inspect.signature(api_generate).parameters["n"].default  # -n: the API's default
    cifllm.generate(composition="NaCl", model=toy_model)
    assert effective() == want, "cifllm.generate"
    assert main(["sample", f"model={toy_model}", f"out={tmp_path / 's'}", "composition=NaCl"]) == 0
    assert effective() == want, "cifllm sample"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("NaCl\n")
    assert main(["demo", f"model={toy_model}", f"out={tmp_path / 'demo'}", f"prompt_file={prompts}", "num_samples=1"]) == 0
    assert effective() == want, "cifllm demo"
    capsys.readouterr()
    # defaults a user reads or that other callers build on
    assert {k: getattr(GenerationParams(), k) for k in want} == want
    parser = argparse.ArgumentParser()
    cli_generate.add_arguments(parser)
    ns = parser.parse_args([])
    assert (ns.temperature, ns.top_k, ns.top_p, ns.max_new_tokens) == tuple(want.values())
    for name in ("sample.yaml", "sample_csp.yaml"):
        shipped = yaml.safe_load(resource_path("configs", "eval", name).read_text())
        assert {k: shipped[k] for k in want if k in shipped} == {k: want[k] for k in want if k in shipped}, name
    assert dict(SAMPLING_DEFAULTS) == {"do_sample": SAMPLING.do_sample, "temperature": SAMPLING.temperature, "top_k": SAMPLING.top_k, "top_p": SAMPLING.top_p}
    with pytest.raises(TypeError):
        SAMPLING_DEFAULTS["temperature"] = 1.0  # read-only: one source, not a second one to edit


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
