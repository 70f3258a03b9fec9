"""Random-weight Llama models saved like a trained one: for tests, benchmarks and the vLLM smoke test.

These models write garbage (every sample fails the checks), but exercise the whole sampling path, and their
throughput is that of a trained model of the same shape.
"""

from __future__ import annotations

from pathlib import Path

from cifllm.modeling import sampling_generation_config
from cifllm.tokenization import as_pretrained, save_tokenizer

__all__ = ["TOY_SHAPES", "save_random_llama"]

#: name -> (layers, hidden size, attention heads, MLP size). ``tiny`` is ~0.1M parameters, ``small`` ~6M.
TOY_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "test": (2, 64, 4, 128),
    "tiny": (2, 128, 4, 256),
    "small": (6, 288, 6, 768),
}


def save_random_llama(out_dir: str | Path, shape: str = "test", max_positions: int = 1024, seed: int = 0) -> Path:
    """Save a randomly initialised ``LlamaForCausalLM`` of ``shape`` plus the cifllm tokenizer into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM


    layers, hidden, heads, mlp = TOY_SHAPES[shape]
    tok = as_pretrained()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = sampling_generation_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    save_tokenizer(out, model_max_length=max_positions)
    return out
