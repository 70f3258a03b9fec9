"""The constraint engine as a ``transformers`` ``LogitsProcessor`` (HF engine).

One :class:`~cifllm.sampling.constraints.CIFConstraint` per generated row. At every step the processor feeds each
row's newest token to its machine, masks the logits to the allowed ids (a forced id keeps only itself), and then
applies temperature, top-k and top-p itself - *after* the mask, so top-k never keeps only forbidden tokens. The
engine therefore calls ``generate`` with temperature 1, top-k 0 and top-p 1 (no built-in warpers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from cifllm.sampling.constraints import CIFConstraint, ConstraintConfig, TokenTable

__all__ = ["ConstrainedLogitsProcessor", "cif_part"]


def cif_part(prompt_text: str) -> str:
    """The part of a prompt the constraint machine reads: from ``data_`` on (property-condition lines come before
    it and are not CIF); empty for a de novo prompt."""
    k = prompt_text.find("data_")
    return prompt_text[k:] if k >= 0 else ""


class ConstrainedLogitsProcessor(LogitsProcessor):
    """Mask + temperature/top-k/top-p for a batch whose row ``r`` continues prompt ``row_prompts[r]``."""

    def __init__(
        self,
        table: TokenTable,
        row_prompts: Sequence[str],
        configs: Sequence[ConstraintConfig] | ConstraintConfig | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> None:
        self.table = table
        self.machines: list[CIFConstraint] = []
        if configs is None or isinstance(configs, ConstraintConfig):
            configs = [configs or ConstraintConfig()] * len(row_prompts)
        for text, config in zip(row_prompts, configs, strict=True):
            m = CIFConstraint(table, config)
            m.feed_prompt(table.ids(cif_part(text)) if cif_part(text) else ())
            self.machines.append(m)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self._started = False

    def _mask_row(self, scores: torch.Tensor, r: int, allowed: int | np.ndarray) -> None:
        row = scores[r]
        if isinstance(allowed, int | np.integer):
            keep = row[int(allowed)].clone()
            row.fill_(-float("inf"))
            row[int(allowed)] = keep if torch.isfinite(keep) else 0.0
            return
        full = np.zeros(row.shape[0], dtype=bool)
        full[: len(allowed)] = allowed
        m = torch.from_numpy(~full).to(row.device)
        row.masked_fill_(m, -float("inf"))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started:
            last = input_ids[:, -1].tolist()
            for m, tok in zip(self.machines, last):
                if not m.done:
                    m.advance(int(tok))
        self._started = True
        scores = scores.clone()
        for r, m in enumerate(self.machines):
            self._mask_row(scores, r, m.allowed())
        if self.temperature > 0 and self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k > 0:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if self.top_p < 1.0:
            sorted_scores, idx = torch.sort(scores, descending=True, dim=-1)
            probs = torch.softmax(sorted_scores, dim=-1)
            cum = probs.cumsum(dim=-1)
            remove = cum - probs > self.top_p  # keep the smallest prefix reaching top_p (always the first token)
            remove = remove.scatter(1, idx, remove)
            scores = scores.masked_fill(remove, -float("inf"))
        return scores
