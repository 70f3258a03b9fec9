"""``CifTrainer``: the Hugging Face ``Trainer`` with a reproducible length-grouped sampler and tokens/s logging."""

from __future__ import annotations

import time

import numpy as np
from transformers import Trainer

from cifllm.training.data import GroupedSampler

__all__ = ["CifTrainer"]


class CifTrainer(Trainer):
    """``Trainer`` plus:

    * ``grouped_lengths``: use :class:`GroupedSampler` (seeded by ``args.seed`` and the epoch, so a resumed run sees
      the same batches) instead of the random sampler;
    * every training log gets ``tokens_per_s`` (non-padding tokens over all processes per second of wall time since
      the previous log) and ``elapsed_s`` (seconds since this process started training).
    """

    def __init__(self, *args, grouped_lengths: np.ndarray | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.grouped_lengths = grouped_lengths
        self._clock: tuple[float, int] | None = None
        self._t0: float | None = None

    def _get_train_sampler(self, train_dataset=None):
        if self.grouped_lengths is not None:
            return GroupedSampler(self.grouped_lengths, self.args.per_device_train_batch_size, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.time()
            tokens = int(self.state.num_input_tokens_seen)
            if self._clock is None:
                begin = start_time if start_time is not None else now
                self._clock = (begin, int(getattr(self, "_initial_num_input_tokens_seen", 0) or 0))
                self._t0 = begin
            t_prev, tok_prev = self._clock
            if now > t_prev:
                logs["tokens_per_s"] = round((tokens - tok_prev) / (now - t_prev), 1)
            logs["tokens_seen"] = tokens
            logs["elapsed_s"] = round(now - (self._t0 or now), 2)
            self._clock = (now, tokens)
        super().log(logs, start_time)
