"""Llama-family model presets for CIF language models.

Every preset is a plain ``transformers.LlamaConfig`` (the architecture vLLM serves natively, LoRA included): RMSNorm,
SwiGLU MLP, rotary positions, tied input/output embeddings, head dimension 64. The vocabulary comes from the CIF
tokenizer (499 tokens, padded to a multiple of 64 so matrix shapes stay friendly; the padding rows are never produced
by the tokenizer), and BOS/EOS/PAD ids are written into the config.

This module knows nothing about DeepSpeed or accelerate: parallelism is chosen at launch time (configs in ``train/``).
Building the model with :func:`build_model` under an active DeepSpeed ZeRO-3 config (set up by the Trainer's
``TrainingArguments``) partitions it at construction, because it goes through ``AutoModelForCausalLM.from_config``.

Sizes (parameters with the 512-row padded vocabulary, embeddings counted once):

=========  ======  ======  =====  =========  ============  ===========
preset     layers  hidden  heads  kv heads   intermediate  parameters
=========  ======  ======  =====  =========  ============  ===========
tiny       2       64      1      1          192           ~0.14 M
mini       6       256     4      4          704           ~4.95 M
mini-wide  4       384     6      6          1024          ~7.28 M (recipe study)
mini-deep  8       256     4      4          704           ~6.56 M (recipe study)
small      8       512     8      8          1376          ~25.6 M
base       12      768     12     12         2688          ~103.0 M
large      16      2048    32     8          8192          ~0.97 B
=========  ======  ======  =====  =========  ============  ===========
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cifllm.core.errors import CifllmError
from cifllm.core.sampling import SAMPLING

__all__ = [
    "PRESETS",
    "SAMPLING_DEFAULTS",
    "ModelPreset",
    "UnknownPresetError",
    "build_model",
    "count_parameters",
    "flops_per_token",
    "get_preset",
    "make_config",
    "max_positions_for",
    "preset_num_parameters",
    "sampling_generation_config",
]

#: What a saved model's ``generation_config.json`` makes plain ``model.generate`` do: sample (never greedy) with the
#: temperature / top-k / top-p of :data:`cifllm.core.sampling.SAMPLING` (the one source of sampling defaults, which
#: documents the values), until ``<|eos|>`` or a whole context of new tokens (``max_new_tokens`` =
#: ``max_position_embeddings``, not transformers' default of 20 tokens in all). Read-only; derived, never edited here.
SAMPLING_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"do_sample": SAMPLING.do_sample, "temperature": SAMPLING.temperature, "top_k": SAMPLING.top_k, "top_p": SAMPLING.top_p}
)


@dataclass(frozen=True)
class ModelPreset:
    """Architecture of a named preset (sizes in units of hidden features / heads / layers)."""

    name: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    description: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("tiny", 2, 64, 1, 1, 192, "tests and CPU smoke runs (<1M parameters)"),
        ModelPreset("mini", 6, 256, 4, 4, 704, "the shipped default model: trains on 2 CPU cores in ~2 h (~4.9M parameters)"),
        ModelPreset("mini-wide", 4, 384, 6, 6, 1024, "recipe-study shape: 4 layers x 384 (~7.3M parameters)"),
        ModelPreset("mini-deep", 8, 256, 4, 4, 704, "recipe-study shape: 8 layers x 256 (~6.5M parameters)"),
        ModelPreset("small", 8, 512, 8, 8, 1376, "CrystaLLM-small scale (~25M parameters)"),
        ModelPreset("base", 12, 768, 12, 12, 2688, "~100M parameters"),
        ModelPreset("large", 16, 2048, 32, 8, 8192, "~1B parameters (grouped-query attention, 8 KV heads)"),
    )
}

for _p in PRESETS.values():  # the vLLM attention backends want head dim 64 or 128
    assert _p.hidden_size % _p.num_attention_heads == 0 and _p.head_dim in (64, 128), _p
    assert _p.num_attention_heads % _p.num_key_value_heads == 0, _p


class UnknownPresetError(CifllmError, ValueError):
    """A model preset name that does not exist."""


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; raises :class:`UnknownPresetError` listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}") from None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def max_positions_for(max_tokens: int, multiple: int = 64) -> int:
    """Smallest multiple of ``multiple`` that holds the longest CIF (``max_tokens``, without BOS/EOS) plus BOS+EOS."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    return _round_up(max_tokens + 2, multiple)


def make_config(
    preset: str | ModelPreset,
    *,
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    max_position_embeddings: int,
    pad_vocab_to_multiple_of: int = 64,
    rope_theta: float = 10000.0,
    tie_word_embeddings: bool = True,
    initializer_range: float = 0.02,
    **overrides: Any,
):
    """``LlamaConfig`` of a preset for a tokenizer of ``vocab_size`` tokens (rows padded up to a multiple of
    ``pad_vocab_to_multiple_of``). ``overrides`` are passed to ``LlamaConfig`` last (e.g. ``num_hidden_layers=4``)."""
    from transformers import LlamaConfig

    p = preset if isinstance(preset, ModelPreset) else get_preset(preset)
    for name, tid in (("bos", bos_token_id), ("eos", eos_token_id), ("pad", pad_token_id)):
        if not 0 <= tid < vocab_size:
            raise ValueError(f"{name}_token_id {tid} outside the vocabulary of {vocab_size} tokens")
    if max_position_embeddings <= 0:
        raise ValueError(f"max_position_embeddings must be positive, got {max_position_embeddings}")
    kwargs: dict[str, Any] = dict(
        vocab_size=_round_up(vocab_size, pad_vocab_to_multiple_of),
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        head_dim=p.head_dim,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        rms_norm_eps=1e-5,
        use_cache=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
    )
    kwargs.update(overrides)
    cfg = LlamaConfig(**kwargs)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def preset_num_parameters(preset: str | ModelPreset, vocab_size: int = 512, tie_word_embeddings: bool = True) -> int:
    """Parameter count of a preset computed from its shapes (no model is built)."""
    p = preset if isinstance(preset, ModelPreset) else get_preset(preset)
    h, i, hd = p.hidden_size, p.intermediate_size, p.head_dim
    attn = h * p.num_attention_heads * hd * 2 + h * p.num_key_value_heads * hd * 2  # q, o + k, v
    mlp = 3 * h * i
    norms = 2 * h
    emb = vocab_size * h * (1 if tie_word_embeddings else 2)
    return p.num_hidden_layers * (attn + mlp + norms) + emb + h


def count_parameters(model) -> int:
    """Number of distinct parameters of a torch module (tied weights counted once; ZeRO-3 partitioned ones at full
    size via ``ds_numel``)."""
    seen: set[int] = set()
    n = 0
    for prm in model.parameters():
        if id(prm) in seen:
            continue
        seen.add(id(prm))
        n += int(getattr(prm, "ds_numel", prm.numel()))
    return n


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): ``6 N`` for the non-embedding matmuls plus attention
    ``12 L h s`` (Chinchilla/PaLM convention; ``seq_len`` in tokens)."""
    h = config.hidden_size
    n_layers = config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads
    per_layer = h * config.num_attention_heads * hd * 2 + h * kv * hd * 2 + 3 * h * config.intermediate_size
    n_matmul = n_layers * per_layer + config.vocab_size * h  # output projection counts even when tied
    return 6.0 * n_matmul + 12.0 * n_layers * h * seq_len


def build_model(config, seed: int | None = None, attn_implementation: str = "sdpa"):
    """A freshly initialised ``LlamaForCausalLM`` for ``config`` (weights drawn after ``set_seed(seed)`` if given).

    Goes through ``AutoModelForCausalLM.from_config`` so an active DeepSpeed ZeRO-3 config partitions it at
    construction; the model itself stays a plain Hugging Face model.
    """
    from transformers import AutoModelForCausalLM, set_seed

    if seed is not None:
        set_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    model.generation_config = sampling_generation_config(config)
    return model


def sampling_generation_config(config):
    """The ``GenerationConfig`` every saved cifllm model carries (see :data:`SAMPLING_DEFAULTS`): BOS/EOS/PAD ids from
    ``config`` and ``max_new_tokens`` = its ``max_position_embeddings`` (the longest CIF it was trained on fits)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_new_tokens=int(config.max_position_embeddings), **SAMPLING_DEFAULTS,
    )
