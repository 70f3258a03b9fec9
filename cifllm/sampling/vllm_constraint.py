"""The constraint engine as a vLLM logits processor (vLLM's documented custom logits-processor interface).

vLLM loads :class:`CIFConstraintLogitsProcessor` once per engine (``LLM(logits_processors=[...])``); a request
opts in through ``SamplingParams.extra_args["cifllm_constraint"] = {"prompt": <cif part of the prompt>,
"config": {ConstraintConfig fields}}`` and gets its own :class:`~cifllm.sampling.constraints.CIFConstraint`, fed
with the request's output tokens as they grow. Requests without the key are left alone. The processor changes the
argmax, so vLLM applies it before temperature / top-k / top-p. This is the interface of vLLM's V1 model runner
(``vllm.v1.sample.logits_processor``); :class:`~cifllm.sampling.engines.VLLMEngine` selects that runner when
constrained sampling is on. Imported only inside a vLLM environment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from cifllm.sampling.constraints import CIFConstraint, ConstraintConfig, TokenTable
from cifllm.tokenization import load_tokenizer

__all__ = ["CIFConstraintLogitsProcessor", "EXTRA_ARG"]

EXTRA_ARG = "cifllm_constraint"


class _RequestConstraint:
    """Per-request callable ``(output_ids, logits) -> logits`` holding one machine."""

    def __init__(self, table: TokenTable, prompt: str, config: ConstraintConfig) -> None:
        self.machine = CIFConstraint(table, config)
        self.machine.feed_prompt(table.ids(prompt) if prompt else ())
        self.fed = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        m = self.machine
        while self.fed < len(output_ids):
            if not m.done:
                m.advance(int(output_ids[self.fed]))
            self.fed += 1
        allowed = m.allowed()
        if isinstance(allowed, int | np.integer):
            out = torch.full_like(logits, -float("inf"))
            out[int(allowed)] = 0.0
            return out
        full = np.zeros(logits.shape[-1], dtype=bool)
        full[: len(allowed)] = allowed
        mask = torch.from_numpy(~full).to(logits.device)
        return logits.masked_fill(mask, -float("inf"))


class CIFConstraintLogitsProcessor(AdapterLogitsProcessor):
    """cifllm's constraint engine for the requests that ask for it."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        model_config = vllm_config.model_config
        self.table = TokenTable(load_tokenizer(model_config.tokenizer))

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        spec = (params.extra_args or {}).get(EXTRA_ARG)
        if spec is None:
            return
        if not isinstance(spec, dict) or not isinstance(spec.get("prompt", ""), str):
            raise ValueError(f"{EXTRA_ARG} must be {{'prompt': str, 'config': dict}}")
        ConstraintConfig(**_config_args(spec.get("config") or {}))

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> _RequestConstraint | None:
        spec = (params.extra_args or {}).get(EXTRA_ARG)
        if spec is None:
            return None
        return _RequestConstraint(self.table, spec.get("prompt", ""), ConstraintConfig(**_config_args(spec.get("config") or {})))


def _config_args(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
