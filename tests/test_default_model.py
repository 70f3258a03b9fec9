"""The shipped default model (cifllm/resources/default-model): loads the Hugging Face way, offline, with its
tokenizer and records; its card is generated from those records; it writes a parsable CIF for a simple prompt."""

from __future__ import annotations

import json

import pytest

from cifllm.hub.resolve import DEFAULT_MODEL_DIR


def test_default_model_is_shipped_and_loads_with_auto_classes():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), "the default model must be committed (make default-model)"
    assert not list(DEFAULT_MODEL_DIR.glob("*.bin")) and not list(DEFAULT_MODEL_DIR.glob("*.pt"))
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 30 * 2**20
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, trust_remote_code=False)
    assert model.config.architectures == ["LlamaForCausalLM"] and model.dtype == torch.bfloat16
    assert tok.bos_token == "<|bos|>" and tok.eos_token == "<|eos|>" and tok.pad_token == "<|pad|>"
    from cifllm.tokenization import tokenizer_fingerprint

    assert tokenizer_fingerprint(tok.backend_tokenizer) == tokenizer_fingerprint()
    run = json.loads((DEFAULT_MODEL_DIR / "cifllm_run.json").read_text())
    assert run["preset"] == "mini" and run["eval_loss"] is not None


def test_default_model_card_is_generated_from_records():
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    run = json.loads((DEFAULT_MODEL_DIR / "cifllm_run.json").read_text())
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert f"{run['global_step']:,}" in card and f"{run['eval_loss']:.4f}" in card


@pytest.mark.parametrize("composition", ["Na4Cl4"])
def test_default_model_writes_a_cif(composition):
    import cifllm

    out = cifllm.generate(composition=composition, n=4, seed=0, max_new_tokens=400)
    assert len(out) == 4 and all(s.text.startswith(f"data_{composition}\n") for s in out)
    assert any(s.valid for s in out), [s.reason for s in out]


def test_generate_cli_constrains_the_default_model_and_reports_adherence(capsys):
    """`cifllm generate --composition NaCl` on the shipped (cif-v2) default model: the constraint engine is on by
    default, every sample keeps the composition, and the output says so per sample and in a summary line."""
    from cifllm.cli import main

    assert main(["generate", "--composition", "NaCl", "-n", "2", "--max-new-tokens", "400", "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("composition kept yes") == 2
    assert "constraint engine on" in cap.err and "2/2 keep the prompt's composition" in cap.err
