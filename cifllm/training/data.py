"""Training data: the corpus tokenized as ``BOS + tokens + EOS`` per CIF, then packed or length-grouped.

Two ways to batch variable-length CIFs (``PretrainConfig.data_mode``; ``grouped`` is the default because it measured
faster on CPU: packed blocks pay for attention over the whole block, ``benchmarks/results/train_cpu.md``):

``packed``
    Whole CIFs are bin-packed (best fit, longest first) into fixed blocks of ``block_size`` tokens; the tail of a block
    is padding (``labels = -100``). ``position_ids`` restart at 0 for every CIF and no attention mask is passed, so
    ``transformers`` builds a block-diagonal causal mask: each CIF attends only to itself, exactly as at sampling
    time, and no CIF is ever cut. Blocks are a fixed list (same seed -> same blocks), so the Trainer's seeded sampler
    gives the same order after a resume.
``grouped``
    One CIF per row; a seeded sampler groups rows of similar length into the same batch (mega-batches of
    ``50 x batch_size`` sorted by length, then the batches shuffled), batches are padded on the right with an
    attention mask.

In both modes the label of a BOS token is ignored (the ``EOS -> next BOS`` transition is not a target).
Token counts are int32 numpy arrays; nothing here depends on the number of processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "IGNORE_INDEX",
    "TokenizedDocs",
    "PackedBlocks",
    "Documents",
    "PadCollator",
    "GroupedSampler",
    "tokenize_texts",
    "pack_documents",
]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedDocs:
    """Token ids of many documents, concatenated (``tokens``) with ``offsets`` (``n + 1`` entries)."""

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


def source_repeats(ids: list[str], sources: list[list[str]], weights: dict[str, float], seed: int = 0) -> np.ndarray:
    """How many times each training record enters the training set under per-source ``weights`` (int array).

    A record takes the largest weight of its sources (1.0 for a source not named). Weight ``w`` gives ``floor(w)``
    copies plus one more with probability ``w - floor(w)``, decided by a hash of (seed, record id): the same subset
    on every run, resume and process. ``weights={}`` gives all ones.
    """
    out = np.ones(len(ids), dtype=np.int64)
    if not weights:
        return out
    for i, (rid, srcs) in enumerate(zip(ids, sources)):
        w = max((float(weights.get(s, 1.0)) for s in srcs), default=1.0)
        base = int(np.floor(w))
        frac = w - base
        extra = 0
        if frac > 0:
            h = hashlib.blake2b(f"{seed}:{rid}".encode(), digest_size=8).digest()
            extra = int(int.from_bytes(h, "little") / 2**64 < frac)
        out[i] = base + extra
    return out


def tokenize_texts(
    texts: list[str],
    tokenizer,
    expected_lengths: list[int] | None = None,
    chunk: int = 4096,
) -> TokenizedDocs:
    """Encode texts as ``BOS + ids + EOS`` with the fast tokenizer's backend (batched, in Rust).

    ``expected_lengths`` (the corpus' ``n_tokens`` column, without BOS/EOS) is checked row by row: a mismatch means
    the corpus and the tokenizer disagree and raises ``ValueError``.
    """
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("the tokenizer has no BOS/EOS token")
    pieces: list[np.ndarray] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        encs = backend.encode_batch(texts[start : start + chunk], add_special_tokens=False)
        for j, enc in enumerate(encs):
            ids = enc.ids
            i = start + j
            if expected_lengths is not None and len(ids) != expected_lengths[i]:
                raise ValueError(
                    f"corpus row {i}: n_tokens={expected_lengths[i]} but the tokenizer gives {len(ids)} tokens; "
                    "the corpus was built with another tokenizer (rebuild it with `cifllm data`)"
                )
            arr = np.empty(len(ids) + 2, dtype=np.int32)
            arr[0] = bos
            arr[1:-1] = ids
            arr[-1] = eos
            pieces.append(arr)
            lengths[i] = len(arr)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return TokenizedDocs(tokens=tokens, offsets=offsets)


def pack_documents(lengths: np.ndarray, block_size: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Best-fit-decreasing bin packing of whole documents into blocks of ``block_size`` tokens.

    Returns ``(blocks, dropped)``: ``blocks`` is a list of arrays of document indices (block order shuffled with
    ``seed``), ``dropped`` the indices of documents longer than ``block_size``. Deterministic for given inputs.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    too_long = lengths > block_size
    dropped = np.flatnonzero(too_long)
    keep = np.flatnonzero(~too_long)
    # longest first; ties in random (seeded) order so equal-length documents do not keep corpus order
    order = keep[np.lexsort((rng.random(len(keep)), -lengths[keep]))]
    counts = np.zeros(block_size + 1, dtype=np.int64)  # number of open blocks with exactly s free tokens
    by_space: list[list[int]] = [[] for _ in range(block_size + 1)]
    members: list[list[int]] = []
    for d in order.tolist():
        need = int(lengths[d])
        fits = np.flatnonzero(counts[need:])
        if len(fits):
            space = need + int(fits[0])
            b = by_space[space].pop()
            counts[space] -= 1
        else:
            b, space = len(members), block_size
            members.append([])
        members[b].append(d)
        left = space - need
        if left > 0:
            by_space[left].append(b)
            counts[left] += 1
    blocks = [np.asarray(m, dtype=np.int64) for m in members]
    perm = rng.permutation(len(blocks))
    return [blocks[i] for i in perm], dropped


class PackedBlocks(Dataset):
    """Fixed-length blocks of whole documents: ``input_ids``, ``position_ids`` (restarting per document) and
    ``labels`` (``-100`` on padding and BOS), each a ``LongTensor`` of ``block_size``."""

    def __init__(self, docs: TokenizedDocs, blocks: list[np.ndarray], block_size: int, pad_id: int, bos_id: int):
        self.docs, self.blocks, self.block_size = docs, blocks, block_size
        self.pad_id, self.bos_id = pad_id, bos_id

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = np.full(self.block_size, self.pad_id, dtype=np.int64)
        pos = np.empty(self.block_size, dtype=np.int64)
        at = 0
        for d in self.blocks[i]:
            doc = self.docs.doc(int(d))
            n = len(doc)
            ids[at : at + n] = doc
            pos[at : at + n] = np.arange(n)
            at += n
        pos[at:] = np.arange(self.block_size - at)  # padding: one more segment, never a target
        labels = ids.copy()
        labels[at:] = IGNORE_INDEX
        labels[labels == self.bos_id] = IGNORE_INDEX
        return {
            "input_ids": torch.from_numpy(ids),
            "position_ids": torch.from_numpy(pos),
            "labels": torch.from_numpy(labels),
        }

    def stats(self) -> dict[str, Any]:
        """Blocks, documents and padding fraction (units: blocks, documents, tokens)."""
        real = int(sum(int(self.docs.lengths[b].sum()) for b in self.blocks))
        total = len(self.blocks) * self.block_size
        return {
            "n_blocks": len(self.blocks),
            "n_documents": int(sum(len(b) for b in self.blocks)),
            "n_tokens": real,
            "padding_fraction": round(1.0 - real / total, 4) if total else 0.0,
        }


class Documents(Dataset):
    """One document per row: ``{"input_ids": LongTensor}`` (for ``grouped`` mode)."""

    def __init__(self, docs: TokenizedDocs, indices: np.ndarray | None = None):
        self.docs = docs
        self.indices = np.arange(len(docs)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.docs.doc(int(self.indices[i])).astype(np.int64))}

    @property
    def lengths(self) -> np.ndarray:
        return self.docs.lengths[self.indices]

    def stats(self) -> dict[str, Any]:
        return {"n_documents": len(self.indices), "n_tokens": int(self.lengths.sum())}


class PadCollator:
    """Right-pads a list of ``{"input_ids"}`` to the longest row (rounded up to ``multiple``): ``input_ids``,
    ``attention_mask``, ``labels`` (``-100`` on padding and BOS)."""

    def __init__(self, pad_id: int, bos_id: int, multiple: int = 8):
        self.pad_id, self.bos_id, self.multiple = pad_id, bos_id, multiple

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = r["input_ids"]
            mask[i, :n] = 1
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels = labels.masked_fill(ids == self.bos_id, IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class GroupedSampler(Sampler[int]):
    """Length-grouped random order, reproducible from ``(seed, epoch)``: a seeded permutation is cut into mega-batches
    of ``mega_factor x batch_size`` rows, each sorted by length and cut into batches of ``batch_size`` rows of similar
    length; the batches are then shuffled, except that the one holding the longest row goes first (out-of-memory
    shows at step 1). Rows are yielded batch after batch, so consecutive ``batch_size`` rows form one batch."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, mega_factor: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.mega_factor = batch_size, seed, mega_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.lengths))
        mega = self.batch_size * self.mega_factor
        batches: list[np.ndarray] = []
        for i in range(0, len(perm), mega):
            g = perm[i : i + mega]
            g = g[np.argsort(-self.lengths[g], kind="stable")]
            batches += [g[j : j + self.batch_size] for j in range(0, len(g), self.batch_size)]
        if not batches:
            return
        order = rng.permutation(len(batches))
        longest = int(np.argmax([self.lengths[batches[k][0]] for k in order]))
        order[0], order[longest] = order[longest], order[0]
        for k in order:
            yield from batches[k].tolist()
