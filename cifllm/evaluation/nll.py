"""Negative log-likelihood per token of texts under a model (optionally with a LoRA adapter).

The smooth downstream error of the scaling-law sweep: lower is better, in nats per predicted token (every token
after BOS, EOS included; padding excluded).
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["nll_per_token"]


def nll_per_token(model_dir: str | Path, texts: list[str], adapter: str | Path | None = None, batch_size: int = 16, threads: int = 0) -> dict[str, float]:
    """``{"nll": nats/token, "n_tokens", "n_texts", "perplexity"}`` over ``texts`` (BOS + text + EOS each).
    Texts longer than the model's context are skipped and counted in ``n_skipped``."""
    import torch
    from transformers import AutoModelForCausalLM

    from cifllm.tokenization import load_tokenizer

    if not texts:
        raise ValueError("no texts to score")
    if threads > 0:
        torch.set_num_threads(threads)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        from cifllm.training.adapters import check_adapter_base

        check_adapter_base(adapter, model_dir)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    mpe = int(model.config.max_position_embeddings)
    enc = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    seqs = [[tok.bos_token_id, *e.ids, tok.eos_token_id] for e in enc]
    keep = [s for s in seqs if len(s) <= mpe]
    order = sorted(range(len(keep)), key=lambda i: len(keep[i]))
    total, n_tok = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [keep[i] for i in order[start : start + batch_size]]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, s in enumerate(batch):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:]
            m = mask[:, 1:].bool()
            lp = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
            total += float(lp[m.reshape(-1)].sum())
            n_tok += int(m.sum())
    if n_tok == 0:
        raise ValueError(f"every text is longer than the model's context ({mpe} tokens)")
    nll = total / n_tok
    return {"nll": nll, "perplexity": math.exp(nll), "n_tokens": n_tok, "n_texts": len(keep), "n_skipped": len(seqs) - len(keep)}
