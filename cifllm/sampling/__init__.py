"""Sampling: prompts, engines (``hf`` batched generate, optional ``vllm``), and the ``sample`` stage."""

from cifllm.sampling.engines import Engine, EngineError, Generation, GenerationParams, make_engine, plan_batches
from cifllm.sampling.generation import generate, load_engine, resolve_constrained
from cifllm.sampling.prompts import (
    Prompt,
    PromptError,
    build_prompt,
    parse_composition,
    parse_space_group,
    prompts_from_structures,
    read_prompt_file,
    strip_conditions,
)
from cifllm.sampling.run import SampleConfig, collect_prompts, read_samples, sample

__all__ = [
    "Engine",
    "EngineError",
    "Generation",
    "GenerationParams",
    "Prompt",
    "PromptError",
    "SampleConfig",
    "build_prompt",
    "collect_prompts",
    "generate",
    "load_engine",
    "make_engine",
    "parse_composition",
    "parse_space_group",
    "plan_batches",
    "prompts_from_structures",
    "read_prompt_file",
    "read_samples",
    "resolve_constrained",
    "sample",
    "strip_conditions",
]
