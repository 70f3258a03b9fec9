"""Negative log-likelihood per token of texts under a model (optionally with a LoRA adapter).

The smooth downstream error of the scaling-law sweep: lower is better, in nats per predicted token (every token
after BOS, EOS included; padding excluded).
"""

from __future__ import annotations

import math
from pathlib import Path

from cifllm.core.records import check_adapter_base
from cifllm.data.corpus import load_corpus
from cifllm.tokenization import load_tokenizer

__all__ = ["HYPOTHETICAL_SOURCES", "corpus_groups", "nll_by_group", "nll_per_token"]

#: corpus sources of hypothetical (never synthesized) structures: perovskite and carbon enumerations
HYPOTHETICAL_SOURCES: tuple[str, ...] = ("perov_5", "jarvis_atomgen_perov5", "carbon_24", "jarvis_atomgen_carbon24")


def _load(model_dir: str | Path, adapter: str | Path | None, threads: int):
    import torch
    from transformers import AutoModelForCausalLM


    if threads > 0:
        torch.set_num_threads(threads)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel


        check_adapter_base(adapter, model_dir)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model, tok


def _score(model, tok, texts: list[str], batch_size: int) -> dict[str, float]:
    import torch

    if not texts:
        raise ValueError("no texts to score")
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


def nll_per_token(model_dir: str | Path, texts: list[str], adapter: str | Path | None = None, batch_size: int = 16, threads: int = 0) -> dict[str, float]:
    """``{"nll": nats/token, "n_tokens", "n_texts", "perplexity"}`` over ``texts`` (BOS + text + EOS each).
    Texts longer than the model's context are skipped and counted in ``n_skipped``."""
    if not texts:
        raise ValueError("no texts to score")
    model, tok = _load(model_dir, adapter, threads)
    return _score(model, tok, texts, batch_size)


def nll_by_group(
    model_dir: str | Path, groups: dict[str, list[str]], adapter: str | Path | None = None, batch_size: int = 16, threads: int = 0
) -> dict[str, dict[str, float]]:
    """:func:`nll_per_token` for several named groups of texts, loading the model once; empty groups are skipped."""
    model, tok = _load(model_dir, adapter, threads)
    return {name: _score(model, tok, texts, batch_size) for name, texts in groups.items() if texts}


def corpus_groups(
    corpus: str | Path, split: str = "val", max_per_group: int = 256, hypothetical: tuple[str, ...] = HYPOTHETICAL_SOURCES, seed: int = 0
) -> dict[str, list[str]]:
    """Texts of one split of a corpus, grouped: ``all``, one group per source, and ``real`` (CIFs with at least one
    source not in ``hypothetical``). Each group is a seeded random sample of at most ``max_per_group`` CIFs."""
    import random


    ds = load_corpus(corpus).select_columns(["text", "split", "sources"])
    rows = [(t, s) for t, sp, s in zip(ds["text"], ds["split"], ds["sources"]) if sp == split]
    if not rows:
        raise ValueError(f"{corpus}: no CIFs in split {split!r}")
    groups: dict[str, list[str]] = {"all": [t for t, _ in rows], "real": [t for t, s in rows if any(x not in hypothetical for x in s)]}
    for t, srcs in rows:
        for x in srcs:
            groups.setdefault(f"source:{x}", []).append(t)
    rng = random.Random(seed)
    return {k: (rng.sample(v, max_per_group) if len(v) > max_per_group else v) for k, v in groups.items()}
