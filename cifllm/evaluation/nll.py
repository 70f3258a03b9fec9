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

__all__ = ["HYPOTHETICAL_SOURCES", "conditional_nll", "load_scoring_model", "token_nll", "corpus_groups", "nll_by_group", "nll_per_token"]

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


def _token_nll(model, tok, seqs: list[list[int]], starts: list[int], batch_size: int) -> list[tuple[float, int]]:
    """Per sequence: (sum of -log p over the tokens at positions >= its start, number of those tokens), in nats.
    Sequences are batched by length with right padding."""
    import torch

    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[j, : len(seqs[i])] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (batch, width-1)
            for j, i in enumerate(idx):
                a, e = max(1, starts[i]), len(seqs[i])  # target positions a..e-1 (position 0 is BOS)
                out[i] = (float(lp[j, a - 1 : e - 1].sum()), e - a)
    return out


def load_scoring_model(model_dir: str | Path, adapter: str | Path | None = None, threads: int = 0):
    """``(model, tokenizer)`` for teacher-forced scoring (fp32, eval mode, the adapter merged), loaded once per
    process for each (folder, adapter, threads)."""
    key = (str(Path(model_dir).resolve()), str(Path(adapter).resolve()) if adapter else None, threads)
    if key not in _LOADED:
        _LOADED.clear()  # one scoring model at a time: a long run that ranks for several models does not pile them up
        _LOADED[key] = _load(model_dir, adapter, threads)
    return _LOADED[key]


_LOADED: dict[tuple, tuple] = {}

#: public name of the per-sequence scorer: ``token_nll(model, tok, seqs, starts, batch_size)`` -> [(nats, tokens)]
token_nll = _token_nll


def _score(model, tok, texts: list[str], batch_size: int) -> dict[str, float]:
    if not texts:
        raise ValueError("no texts to score")
    mpe = int(model.config.max_position_embeddings)
    enc = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    seqs = [[tok.bos_token_id, *e.ids, tok.eos_token_id] for e in enc]
    keep = [s for s in seqs if len(s) <= mpe]
    per = _token_nll(model, tok, keep, [1] * len(keep), batch_size)
    total, n_tok = sum(t for t, _ in per), sum(n for _, n in per)
    if n_tok == 0:
        raise ValueError(f"every text is longer than the model's context ({mpe} tokens)")
    nll = total / n_tok
    return {"nll": nll, "perplexity": math.exp(nll), "n_tokens": n_tok, "n_texts": len(keep), "n_skipped": len(seqs) - len(keep)}


def conditional_nll(
    model_dir: str | Path, prefixes: list[str], texts: list[str], adapter: str | Path | None = None, batch_size: int = 16, threads: int = 0
) -> list[tuple[float, int] | None]:
    """Per pair: (nats summed over the tokens of ``texts[i]`` and EOS, that token count) after BOS + ``prefixes[i]``
    (e.g. property lines): how likely the model (+ adapter) finds a CIF given what its prompt asked. None where
    BOS + prefix + text + EOS exceeds the model's context. Raises ValueError when a prefix does not end on a token
    boundary of prefix + text (its tokens would not be the ones the model reads)."""
    if len(prefixes) != len(texts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(texts)} texts")
    model, tok = _load(model_dir, adapter, threads)
    mpe = int(model.config.max_position_embeddings)
    pre = tok.backend_tokenizer.encode_batch(prefixes, add_special_tokens=False)
    full = tok.backend_tokenizer.encode_batch([p + t for p, t in zip(prefixes, texts, strict=True)], add_special_tokens=False)
    seqs, starts, where = [], [], []
    for i, (p, f) in enumerate(zip(pre, full, strict=True)):
        if f.ids[: len(p.ids)] != p.ids:
            raise ValueError(f"prefix {prefixes[i]!r} does not end on a token boundary of its text")
        s = [tok.bos_token_id, *f.ids, tok.eos_token_id]
        if len(s) <= mpe:
            seqs.append(s)
            starts.append(1 + len(p.ids))
            where.append(i)
    res: list[tuple[float, int] | None] = [None] * len(texts)
    for i, r in zip(where, _token_nll(model, tok, seqs, starts, batch_size), strict=True):
        res[i] = r
    return res


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
