"""The LoRA adapter's Hub card (cifllm.training.adapters): read from its record, the base named portably, and the
shipped benchmark adapters carry it instead of peft's empty template."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from cifllm.core.models import DEFAULT_MODEL_DIR
from cifllm.core.records import read_adapter_record
from cifllm.training.adapters import base_model_name, render_adapter_card

ADAPTERS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench" / "adapters"


def test_base_model_name_is_portable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert base_model_name("default", DEFAULT_MODEL_DIR) == "default"
    assert base_model_name(str(DEFAULT_MODEL_DIR), DEFAULT_MODEL_DIR) == "default"  # however it was named
    assert base_model_name("org/cifllm-mini", tmp_path / "hf-cache" / "snapshot") == "org/cifllm-mini"
    (tmp_path / "runs" / "base").mkdir(parents=True)
    assert base_model_name(str(tmp_path / "runs" / "base"), tmp_path / "runs" / "base") == "runs/base"
    assert base_model_name("runs/base", Path("runs/base")) == "runs/base"  # an existing folder is not a Hub id
    assert base_model_name("/elsewhere/runs/mini/model", Path("/elsewhere/runs/mini/model")) == "mini/model"


def test_adapter_card_from_the_record():
    rec = read_adapter_record(ADAPTERS / "tc_top")
    card = ModelCard(render_adapter_card(rec, "default", "the top decile of measured Tc held out"))
    assert card.data.library_name == "peft" and card.data.base_model is None  # "default" is not a Hub id
    assert "cifllm-task:tc_top" in card.data.tags
    text = card.text
    assert "More Information Needed" not in text and "the cifllm default model" in text
    assert f"{rec['eval_loss_base']:.4f} -> {rec['eval_loss']:.4f}" in text and "| `tc` | `_property_tc_K` | K |" in text
    assert f"{rec['trainable_parameters']:,} of {rec['base_parameters']:,}" in text and "rank 16, alpha 32" in text
    assert "cifllm sample model=default lora=<this folder>" in text
    on_hub = ModelCard(render_adapter_card(rec, "org/cifllm-mini"))
    assert on_hub.data.base_model == "org/cifllm-mini"


def test_shipped_adapters_carry_their_card():
    folders = sorted(p for p in ADAPTERS.iterdir() if (p / "cifllm_adapter.json").is_file())
    assert folders
    for d in folders:
        text = (d / "README.md").read_text()
        assert "More Information Needed" not in text and f"# cifllm LoRA adapter: `{d.name}`" in text, d
        assert "/work/" not in text and "base_model:" not in text, d  # no local path, no non-Hub base_model
