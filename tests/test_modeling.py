"""Model presets: sizes, head dimensions, special-token ids, positions; a forward pass of the tiny preset."""

from __future__ import annotations

import pytest

from cifllm.modeling import (
    PRESETS,
    UnknownPresetError,
    build_model,
    count_parameters,
    flops_per_token,
    get_preset,
    make_config,
    max_positions_for,
    preset_num_parameters,
)


@pytest.fixture(scope="module")
def tok():
    from cifllm.tokenization import as_pretrained

    return as_pretrained()


def _cfg(tok, preset: str = "tiny", mpe: int = 256, **kw):
    return make_config(
        preset, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=mpe, **kw,
    )


def test_preset_sizes_and_head_dims():
    assert set(PRESETS) == {"tiny", "mini", "mini-wide", "mini-deep", "small", "base", "large"}
    n = {name: preset_num_parameters(name) for name in PRESETS}
    assert n["tiny"] < 1_000_000
    assert 4.5e6 < n["mini"] < 5.5e6
    assert 22e6 < n["small"] < 28e6
    assert 90e6 < n["base"] < 115e6
    assert 0.9e9 < n["large"] < 1.2e9
    assert PRESETS["small"].num_hidden_layers == 8 and PRESETS["small"].hidden_size == 512
    assert PRESETS["tiny"].num_hidden_layers == 2 and PRESETS["tiny"].hidden_size == 64
    for p in PRESETS.values():
        assert p.head_dim in (64, 128)


def test_unknown_preset_is_a_clear_error(tok):
    with pytest.raises(UnknownPresetError, match="unknown model preset 'huge'.*tiny, mini, mini-wide, mini-deep, small, base, large"):
        get_preset("huge")
    with pytest.raises(UnknownPresetError):
        _cfg(tok, "huge")


def test_config_has_tokenizer_ids_and_padded_vocab(tok):
    cfg = _cfg(tok, "small", mpe=1024)
    assert len(tok) == 499
    assert cfg.vocab_size == 512 and cfg.vocab_size % 64 == 0
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert cfg.max_position_embeddings == 1024
    assert cfg.head_dim == 64 and cfg.model_type == "llama" and cfg.architectures == ["LlamaForCausalLM"]
    with pytest.raises(ValueError, match="bos_token_id"):
        make_config("tiny", vocab_size=10, bos_token_id=11, eos_token_id=2, pad_token_id=0, max_position_embeddings=64)


def test_max_positions_cover_bos_eos():
    assert max_positions_for(62) == 64
    assert max_positions_for(63) == 128  # 63 + BOS + EOS = 65 > 64
    assert max_positions_for(1000) == 1024
    with pytest.raises(ValueError):
        max_positions_for(0)


def test_tiny_model_counts_and_forward(tok):
    import torch

    cfg = _cfg(tok)
    model = build_model(cfg, seed=0)
    assert count_parameters(model) == preset_num_parameters("tiny") < 1_000_000
    assert model.generation_config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([[tok.bos_token_id, 5, 6, 7, tok.eos_token_id]])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, 5, 512)
    assert torch.isfinite(out.loss)
    # same seed -> same weights
    again = build_model(cfg, seed=0)
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)
    assert flops_per_token(cfg, 256) > 6 * (count_parameters(model) - 512 * 64)
