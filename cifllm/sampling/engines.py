"""Sampling engines behind one interface: ``hf`` (batched ``transformers`` generate) and ``vllm`` (optional).

Both load the same ``save_pretrained`` folder (model + cifllm tokenizer), tokenize prompts with the cifllm tokenizer
(``<|bos|>`` prepended), stop at ``<|eos|>`` or after ``max_new_tokens``, and yield one :class:`Generation` per sample
as soon as its batch is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cifllm.core.errors import CifllmError
from cifllm.core.records import ADAPTER_CONFIG, ADAPTER_RECORD, AdapterError, check_adapter_base
from cifllm.core.sampling import SAMPLING
from cifllm.sampling.constraints import CIFConstraint, ConstraintConfig, ConstraintError, TokenTable
from cifllm.sampling.hf_constraint import ConstrainedLogitsProcessor, cif_part
from cifllm.sampling.prompts import Prompt
from cifllm.tokenization import load_tokenizer
from cifllm.utils.hardware import bf16_supported

__all__ = [
    "Engine",
    "EngineError",
    "Generation",
    "GenerationParams",
    "HFEngine",
    "VLLMEngine",
    "make_engine",
    "merge_adapter",
    "plan_batches",
]


class EngineError(CifllmError, RuntimeError):
    """An engine that cannot be built or run (missing model folder, vLLM not installed, ...)."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters shared by the engines.

    ``temperature`` 0 means greedy; ``top_k`` 0 and ``top_p`` 1.0 disable those filters; ``max_new_tokens`` counts
    generated tokens (clipped to the model's context); ``batch_size`` is sequences per ``generate`` call (hf) and
    prompts per ``LLM.generate`` call (vllm, which batches continuously itself).
    """

    num_samples: int = 1
    temperature: float = SAMPLING.temperature
    top_k: int = SAMPLING.top_k
    top_p: float = SAMPLING.top_p
    max_new_tokens: int = SAMPLING.max_new_tokens
    seed: int = 0
    batch_size: int = 32
    #: the constraint engine (:mod:`cifllm.sampling.constraints`): only consistent cif-v2 text can be written
    constrained: bool = False
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)
    #: record each sample's log-probability under the model (``Generation.logprob``; for likelihood ranking)
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Generation:
    """One sample: ``text`` is the generated continuation (special tokens removed; the prompt is not included).

    ``n_tokens``: generated tokens before ``<|eos|>``; ``finished``: stopped at ``<|eos|>`` (else ran out of tokens);
    ``time_s``: wall seconds of its batch divided by the sequences in the batch; ``error``: set when the engine could
    not sample for this prompt (e.g. prompt longer than the context), then ``text`` is empty.
    """

    prompt_index: int
    sample_index: int
    text: str
    n_tokens: int
    finished: bool
    seed: int
    time_s: float
    batch: int
    error: str = ""
    #: constraint-engine counters of this sample (guarded_rows, blocked_letters, soft_failures, dead_end); None when
    #: unconstrained or not measured (the vLLM engine runs the machines in its own process)
    constraint: dict[str, Any] | None = None
    #: the generated token ids before ``<|eos|>`` (HF engine; None where the engine does not report them). Reward
    #: fine-tuning scores exactly these tokens: decoded text does not always re-encode to them
    token_ids: tuple[int, ...] | None = None
    #: sum of the model's log-probabilities (nats; raw logits, before temperature, top-k and the constraint mask) of the
    #: generated tokens, EOS included when finished; None unless ``GenerationParams.logprobs``
    logprob: float | None = None


class Engine(Protocol):
    name: str

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, counts: Sequence[int] | None = None, progress: Callable[[int], None] | None = None
    ) -> Iterator[Generation]:
        """Yield ``counts[i]`` (default ``params.num_samples``) generations for every prompt ``i``."""
        ...


def plan_batches(counts: Sequence[int], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Split ``counts[i]`` samples of every prompt ``i`` into ``generate`` calls of at most ``batch_size`` sequences.

    Returns batches of chunks ``(prompt index, first sample index, n)``; all chunks of one batch have the same ``n``
    (``generate`` takes one ``num_return_sequences`` per call), and chunks are at most ``batch_size``.
    """
    chunks_by_n: dict[int, list[tuple[int, int, int]]] = {}
    for i, total in enumerate(counts):
        start = 0
        while start < total:
            n = min(batch_size, total - start)
            chunks_by_n.setdefault(n, []).append((i, start, n))
            start += n
    batches: list[list[tuple[int, int, int]]] = []
    for n, chunks in sorted(chunks_by_n.items(), key=lambda kv: -kv[0]):
        per = max(1, batch_size // n)
        batches.extend(chunks[j : j + per] for j in range(0, len(chunks), per))
    return batches


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("device=cuda but no CUDA GPU is visible")
    return device


def _check_model_dir(model_dir: str | Path) -> Path:
    p = Path(model_dir)
    if not (p / "config.json").is_file():
        raise EngineError(f"{p}: not a saved model folder (no config.json); pass the folder written by save_pretrained")
    return p


def model_text_format(model_dir: str | Path) -> str:
    """The canonical-text format a model folder writes (its tokenizer record's version; ``cif-v1`` if unrecorded)."""
    meta = Path(model_dir) / "cifllm_tokenizer.json"
    with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):  # unreadable record: as unrecorded
        return str(json.loads(meta.read_text()).get("version") or "cif-v1")
    return "cif-v1"


def constraint_config(params: GenerationParams, prompt: Prompt, table: TokenTable) -> ConstraintConfig:
    """``params.constraint`` with the token budget of this prompt: its CIF part plus ``max_new_tokens``."""
    part = cif_part(prompt.text)
    budget = (len(table.ids(part)) if part else 0) + params.max_new_tokens
    cfg = params.constraint
    if cfg.max_tokens and cfg.max_tokens < budget:
        return cfg
    return ConstraintConfig(**{**asdict(cfg), "max_tokens": budget})


def check_constrained(model_dir: str | Path, tokenizer: Any, prompts: Sequence[Prompt], params: GenerationParams) -> TokenTable | None:
    """Before sampling: a constrained run needs a cif-v2 model, and every prompt must be one the grammar can
    continue. Raises :class:`EngineError` with one line naming the model or prompt. Returns the token table."""
    if not params.constrained:
        return None
    fmt = model_text_format(model_dir)
    if fmt != "cif-v2":
        raise EngineError(
            f"{model_dir}: the model writes {fmt} text, which the constraint engine cannot constrain (it needs the Wyckoff "
            "column of cif-v2); sample it with constrained=false, or use a cif-v2 model"
        )

    table = TokenTable(tokenizer)
    for p in prompts:
        try:
            m = CIFConstraint(table, constraint_config(params, p, table))
            part = cif_part(p.text)
            m.feed_prompt(table.ids(part) if part else ())
        except ConstraintError as exc:
            raise EngineError(f"prompt {p.id} ({p.text.strip()[:60]!r}): {exc}") from None
    return table


class HFEngine:
    """``transformers`` ``generate`` in batches: left padding, KV cache, temperature/top-k/top-p, seeded per batch.

    Seeding: batch ``b`` runs after ``torch.manual_seed(seed + b)``, so the same prompts, parameters and batch size
    give the same samples (on the same device and library versions).
    """

    name = "hf"

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer_dir: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        threads: int = 0,
        lora: str | Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM


        path = _check_model_dir(model_dir)
        self.model_dir = path
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = _resolve_device(device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = load_tokenizer(tokenizer_dir or path)
        self.tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        self.adapter_record: dict[str, Any] | None = None
        if lora:
            try:
                from peft import PeftModel
            except ImportError:
                raise EngineError("a LoRA adapter with engine=hf needs peft (pip install 'cifllm[train]')") from None
            self.adapter_record = _check_adapter(lora, path)
            model = PeftModel.from_pretrained(model, str(lora)).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, counts: Sequence[int] | None = None, progress: Callable[[int], None] | None = None
    ) -> Iterator[Generation]:
        import torch

        counts = list(counts) if counts is not None else [params.num_samples] * len(prompts)
        self._table = check_constrained(self.model_dir, self.tokenizer, prompts, params)
        encoded = [self.tokenizer(p.text)["input_ids"] for p in prompts]
        too_long = {i for i, ids in enumerate(encoded) if len(ids) >= self.max_positions}
        for i in sorted(too_long):
            for k in range(counts[i]):
                yield Generation(i, k, "", 0, False, params.seed, 0.0, -1, f"prompt of {len(encoded[i])} tokens fills the context of {self.max_positions}")
            if progress:
                progress(counts[i])
        plan = plan_batches([0 if i in too_long else c for i, c in enumerate(counts)], params.batch_size)
        sampling = params.temperature > 0
        for b, batch in enumerate(plan):
            n = batch[0][2]
            rows = [encoded[i] for i, _, _ in batch]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, ids in enumerate(rows):
                input_ids[r, width - len(ids) :] = torch.tensor(ids)
                attention[r, width - len(ids) :] = 1
            max_new = min(params.max_new_tokens, self.max_positions - width)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new,
                num_return_sequences=n,
                do_sample=sampling,
                use_cache=True,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
            )
            proc = None
            if params.constrained:
                from transformers import LogitsProcessorList


                row_prompts = [prompts[i].text for i, _, _ in batch for _ in range(n)]
                configs = [constraint_config(params, prompts[i], self._table) for i, _, _ in batch for _ in range(n)]
                proc = ConstrainedLogitsProcessor(self._table, row_prompts, configs, params.temperature, params.top_k, params.top_p)
                kwargs["logits_processor"] = LogitsProcessorList([proc])
                # temperature / top-k / top-p are applied by the processor, after the mask
                kwargs.update(temperature=1.0 if sampling else None, top_k=0 if sampling else None, top_p=1.0 if sampling else None)
            elif sampling:
                kwargs.update(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
            else:
                kwargs.update(temperature=None, top_k=None, top_p=None)
            if params.logprobs:
                kwargs.update(output_logits=True, return_dict_in_generate=True)
            seed = params.seed + b
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs)
            dt = time.perf_counter() - t0
            logprobs = None
            if params.logprobs:
                seqs = out.sequences
                # (batch, steps) log p of each generated token under the raw logits
                lp = torch.stack([torch.log_softmax(x.float(), dim=-1) for x in out.logits], dim=1)
                gen = seqs[:, width : width + lp.shape[1]]
                logprobs = lp.gather(2, gen.unsqueeze(-1)).squeeze(-1).tolist()
                out = seqs
            new = out[:, width:].tolist()
            per = dt / max(1, len(new))
            for r, ids in enumerate(new):
                prompt_i, start, _ = batch[r // n]
                if self.eos_id in ids:
                    ids = ids[: ids.index(self.eos_id)]
                    finished = True
                else:
                    finished = False
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                stats = proc.machines[r].stats.to_json() if proc is not None else None
                lp_sum = float(sum(logprobs[r][: len(ids) + int(finished)])) if logprobs is not None else None
                yield Generation(prompt_i, start + r % n, text, len(ids), finished, seed, per, b, constraint=stats, token_ids=tuple(ids), logprob=lp_sum)
            if progress:
                progress(len(new))


#: KV cache of the vLLM CPU build when neither ``kv_cache_gib`` nor ``VLLM_CPU_KVCACHE_SPACE`` is given, GiB. vLLM's own
#: default reserves ``gpu_memory_utilization`` (half) of the machine's RAM; on a machine shared with training that
#: was OOM-killed at 12 GB. 2 GiB holds ~170k tokens of the 5M mini model's cache (6 layers x 2 x 256 x 2 bytes).
CPU_KV_CACHE_GIB = 2.0


def _cpu_kv_cache_default() -> float | None:
    """:data:`CPU_KV_CACHE_GIB` on a machine without CUDA unless ``VLLM_CPU_KVCACHE_SPACE`` is set; else None."""
    import torch

    if torch.cuda.is_available() or os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    return CPU_KV_CACHE_GIB


class VLLMEngine:
    """``vllm.LLM`` + ``SamplingParams`` (n, temperature, top_k, top_p, max_tokens, seed, stop at ``<|eos|>``).

    vLLM is imported here only (optional extra, own virtual environment on CPU). LoRA adapters load through
    ``enable_lora`` + ``LoRARequest``; with ``merge_lora`` (default: on a machine without CUDA, for a single adapter) the
    adapter is instead merged into a temporary copy of the model (:func:`merge_adapter`), which vLLM serves at the base
    model's speed - its CPU LoRA path measured >= 6x slower. ``gpu_memory_utilization`` is the share of GPU memory reserved for weights and
    KV cache; on the CPU build the KV cache is ``kv_cache_gib`` (default :data:`CPU_KV_CACHE_GIB`) instead. Sample ``k`` of prompt ``i`` is sampled with seed
    ``seed + counts[0] + ... + counts[i-1] + k`` (vLLM adds ``k`` itself), so no two samples share a seed. Scripts that build this
    engine must run their work under ``if __name__ == "__main__":`` (vLLM starts worker processes on CUDA). On a machine
    without CUDA the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set): 1.4x the tokens/s.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer_dir: str | Path | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: float | None = None,
        lora: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None = None,
        max_lora_rank: int = 64,
        seed: int = 0,
        max_model_len: int | None = None,
        constrained: bool = False,
        max_num_seqs: int | None = None,
        merge_lora: bool | None = None,
    ) -> None:
        if constrained:
            # the constraint processor uses the V1 model runner's logits-processor interface
            os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError(
                f"engine=vllm needs vLLM ({exc}); install it in its own environment: `make vllm-setup` (CPU build) or "
                "`pip install 'cifllm[vllm]'` on a CUDA machine"
            ) from None

        path = _check_model_dir(model_dir)
        self.model_dir = path
        self.constrained = constrained
        self.tokenizer = load_tokenizer(tokenizer_dir or path)
        self.eos_id = int(self.tokenizer.eos_token_id)
        import torch

        if not torch.cuda.is_available():
            # vLLM's CPU build runs the model in a worker process by default, and the engine-core process busy-waits
            # (sched_yield) on it: on a 2-core machine that spin takes a core from the model (py-spy: 33% of samples).
            # In one process: 2,760 -> 3,840 tokens/s, identical texts (400 constrained samples, BENCHMARKS.md).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if dtype == "auto" and not torch.cuda.is_available() and not bf16_supported():
            dtype = "float32"  # vLLM's CPU build picks bf16 for "auto"; emulated bf16 measured 2.6x slower than fp32
        self.dtype = dtype
        kwargs: dict[str, Any] = dict(
            model=str(path),
            tokenizer=str(tokenizer_dir or path),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        kv = kv_cache_gib if kv_cache_gib is not None else _cpu_kv_cache_default()
        if kv is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv * 2**30)
        if not torch.cuda.is_available():
            # vLLM's CPU build dies ("CPU Generator does not use offset") when it splits the prefill of a seeded request
            # over two steps: it rewinds the request's torch.Generator, which only CUDA generators allow. A step takes
            # 4,096 prompt tokens, so 256 new requests of >= 17 tokens (conditioned CSP prompts) split one. Whole
            # prefills only (a request waits for the next step instead).
            kwargs["enable_chunked_prefill"] = False
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs:
            kwargs["max_num_seqs"] = max_num_seqs  # sequences per decode step; vLLM's CPU default is 256
        if constrained:
            kwargs["logits_processors"] = ["cifllm.sampling.vllm_constraint:CIFConstraintLogitsProcessor"]
        adapters = _adapter_map(lora)
        self.adapter_records = {name: _check_adapter(a, path) for name, a in adapters.items()}
        if merge_lora is None:
            merge_lora = len(adapters) == 1 and not torch.cuda.is_available()
        if merge_lora and len(adapters) != 1:
            raise EngineError(f"merge_lora needs exactly one adapter, got {len(adapters)}")
        #: the temporary merged model folder (merge_lora), removed with the engine
        self._merged: tempfile.TemporaryDirectory[str] | None = None
        self.lora_merged = bool(merge_lora)
        if merge_lora:
            self._merged = tempfile.TemporaryDirectory(prefix="cifllm-merged-")
            merged = merge_adapter(path, next(iter(adapters.values())), Path(self._merged.name) / "model")
            kwargs.update(model=str(merged), tokenizer=str(tokenizer_dir or merged))
            adapters = {}
        if adapters:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=len(adapters))
        self.llm = LLM(**kwargs)
        self.lora_requests: dict[str, Any] = {}
        if adapters:
            from vllm.lora.request import LoRARequest

            for k, (name, a) in enumerate(adapters.items(), 1):
                self.lora_requests[name] = LoRARequest(name, k, str(a))
        #: the adapter used for prompts whose meta has no "adapter" key (the first one given)
        self.lora_request = next(iter(self.lora_requests.values()), None)

    def _request_for(self, prompt: Prompt) -> Any:
        name = prompt.meta.get("adapter") if isinstance(prompt.meta, dict) else None
        if name is None:
            return self.lora_request
        if name not in self.lora_requests:
            raise EngineError(f"prompt {prompt.id} asks for adapter {name!r}; loaded: {sorted(self.lora_requests) or 'none'}")
        return self.lora_requests[name]

    def sampling_params(self, params: GenerationParams, n: int, seed: int, prompt: Prompt | None = None) -> Any:
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if params.constrained:
            if not self.constrained:
                raise EngineError("constrained sampling with vLLM: build the engine with constrained=True")

            cfg = constraint_config(params, prompt, TokenTable(self.tokenizer)) if prompt else params.constraint
            extra["extra_args"] = {"cifllm_constraint": {"prompt": cif_part(prompt.text) if prompt else "", "config": asdict(cfg)}}
        if params.logprobs:
            extra["logprobs"] = 0  # the sampled token's log-probability (vLLM's default: raw logits), summed per sample
        return SamplingParams(
            **extra,
            n=n,
            temperature=params.temperature,
            top_k=params.top_k if params.top_k > 0 else -1,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            stop_token_ids=[self.eos_id],
            skip_special_tokens=True,
        )

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, counts: Sequence[int] | None = None, progress: Callable[[int], None] | None = None
    ) -> Iterator[Generation]:
        counts = list(counts) if counts is not None else [params.num_samples] * len(prompts)
        check_constrained(self.model_dir, self.tokenizer, prompts, params)
        offsets = [sum(counts[:i]) for i in range(len(counts))]
        for b, start in enumerate(range(0, len(prompts), params.batch_size)):
            idx = [i for i in range(start, min(start + params.batch_size, len(prompts))) if counts[i] > 0]  # 0: skip
            if not idx:
                continue
            inputs = [{"prompt_token_ids": self.tokenizer(prompts[i].text)["input_ids"]} for i in idx]
            # vLLM seeds sample k of a request with seed + k: space the prompts' seeds by their sample counts so no
            # two samples of different prompts share a seed
            sps = [self.sampling_params(params, counts[i], params.seed + offsets[i], prompts[i]) for i in idx]
            t0 = time.perf_counter()
            loras = [self._request_for(prompts[i]) for i in idx]
            lora_arg = loras if any(r is not None for r in loras) else None
            outs = self.llm.generate(inputs, sps, lora_request=lora_arg, use_tqdm=False)
            dt = time.perf_counter() - t0
            total = sum(len(o.outputs) for o in outs)
            for i, o in zip(idx, outs, strict=True):
                for k, c in enumerate(o.outputs):
                    ids = list(c.token_ids)
                    finished = c.finish_reason == "stop"
                    if self.eos_id in ids:
                        ids = ids[: ids.index(self.eos_id)]
                        finished = True
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    lp = float(c.cumulative_logprob) if params.logprobs and c.cumulative_logprob is not None else None
                    yield Generation(i, k, text, len(ids), finished, params.seed + offsets[i] + k, dt / max(1, total), b, logprob=lp)
            if progress:
                progress(total)


def _adapter_map(lora: Any) -> dict[str, Path]:
    """Adapters by name: one path (named after its folder's task), a list of paths, or ``{name: path}``."""
    if not lora:
        return {}
    if isinstance(lora, Mapping):
        return {str(k): Path(v) for k, v in lora.items()}
    items = [lora] if isinstance(lora, str | Path) else list(lora)
    out: dict[str, Path] = {}
    for a in items:
        p = Path(a)
        name = p.parent.name if p.name == "adapter" else p.name
        with contextlib.suppress(OSError, ValueError):
            name = json.loads((p / ADAPTER_RECORD).read_text()).get("task") or name
        if name in out:
            name = f"{name}-{len(out)}"
        out[name] = p
    return out


def merge_adapter(model_dir: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Write ``model_dir`` with the LoRA ``adapter`` merged into its weights to the new folder ``out`` (peft
    ``merge_and_unload`` in float32, saved as float32 safetensors; every other file of ``model_dir`` - tokenizer, cifllm
    records - copied unchanged) and return ``out``. The merged model computes what base + adapter computes, up to float
    rounding (the HF engine merges the same way in memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from peft import PeftModel
    except ImportError:
        raise EngineError("merging a LoRA adapter needs peft (pip install 'cifllm[train]'; `make vllm-setup` installs it)") from None
    src, dst = Path(model_dir), Path(out)
    if dst.exists():
        raise EngineError(f"{dst} exists: merge_adapter writes a new folder")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "config.json":
            shutil.copy2(f, dst / f.name)
    model.save_pretrained(str(dst), safe_serialization=True)
    return dst


def _check_adapter(adapter: str | Path, model_dir: Path) -> dict[str, Any]:
    """The adapter's cifllm record after checking it was trained on ``model_dir`` (EngineError otherwise)."""
    if not (Path(adapter) / ADAPTER_CONFIG).is_file():
        raise EngineError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if not (Path(adapter) / ADAPTER_RECORD).is_file():  # a plain peft adapter: loadable, but nothing to verify
        import warnings

        warnings.warn(f"{adapter} has no {ADAPTER_RECORD} (not written by `cifllm finetune`): cannot check that it belongs to {model_dir}", stacklevel=3)
        return {}
    try:
        return check_adapter_base(adapter, model_dir)
    except AdapterError as exc:
        raise EngineError(str(exc)) from None


def make_engine(name: str, model_dir: str | Path, **kwargs: Any) -> Engine:
    """Build engine ``name`` (``hf`` or ``vllm``); ``kwargs`` go to its constructor (unknown ones are dropped)."""
    import inspect

    classes: dict[str, type] = {"hf": HFEngine, "vllm": VLLMEngine}
    if name not in classes:
        raise EngineError(f"unknown engine {name!r}; choose from {sorted(classes)}")
    cls = classes[name]
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(model_dir, **{k: v for k, v in kwargs.items() if k in accepted})
