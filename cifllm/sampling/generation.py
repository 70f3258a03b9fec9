"""One generation path for every caller (``sample`` stage, ``cifllm generate``, ``bench``, conditioning response, demo).

:func:`generate` loads an engine (``hf`` or ``vllm``, :func:`~cifllm.sampling.engines.make_engine`) unless one is
given, decides whether the constraint engine runs, and yields :class:`~cifllm.sampling.engines.Generation` records.

``constrained``: ``True`` / ``False`` force it on / off; ``None`` ("auto") turns it on for models that write cif-v2
text and off, with a one-line note, for cif-v1 models (which the constraint engine cannot constrain) and for a
given vLLM engine built without ``constrained=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from cifllm.core.models import resolve_model
from cifllm.sampling.engines import Engine, EngineError, Generation, GenerationParams, make_engine, model_text_format
from cifllm.sampling.prompts import Prompt

__all__ = ["EngineName", "generate", "load_engine", "note", "resolve_constrained"]

EngineName = Literal["hf", "vllm"]


def note(msg: str) -> None:
    """Default ``log``: one line on stderr (stdout may carry CIFs)."""
    print(msg, file=sys.stderr)


def resolve_constrained(constrained: bool | None, model_dir: str | Path, engine: Engine | None = None, log: Callable[[str], None] = note) -> bool:
    """Whether to run the constraint engine: ``constrained`` if set, else True for a cif-v2 model (and an engine that
    can run it), False otherwise with a one-line note through ``log``."""
    if constrained is not None:
        return bool(constrained)
    fmt = model_text_format(model_dir)
    if fmt != "cif-v2":
        log(f"note: {model_dir} writes {fmt} text; the constraint engine needs cif-v2, so sampling is unconstrained")
        return False
    if engine is not None and getattr(engine, "name", "") == "vllm" and not getattr(engine, "constrained", False):
        log("note: the given vLLM engine was built without constrained=True, so sampling is unconstrained")
        return False
    return True


def load_engine(
    model: str | Path, engine_name: EngineName = "hf", constrained: bool | None = None, log: Callable[[str], None] = note, **engine_kwargs: Any
) -> tuple[Engine, bool]:
    """Build engine ``engine_name`` for ``model`` (``engine_kwargs`` go to its constructor; ones it does not take are
    dropped) and resolve ``constrained`` (see :func:`resolve_constrained`). Returns ``(engine, constrained)``; raises
    :class:`~cifllm.sampling.engines.EngineError` before loading for ``constrained=True`` on a model not in cif-v2."""
    if not model:
        raise ValueError("model is required (a save_pretrained folder)")
    model = resolve_model(model)  # 'default', a folder or a Hub id: the one resolver of every stage
    on = resolve_constrained(constrained, model, log=log)
    fmt = model_text_format(model)
    if on and fmt != "cif-v2":  # refuse before loading any weights (the engines refuse it too, after loading)
        raise EngineError(f"{model}: the model writes {fmt} text, which the constraint engine cannot constrain (it needs cif-v2); sample it with constrained=false")
    return make_engine(engine_name, model, constrained=on, **engine_kwargs), on


def generate(
    prompts: Sequence[Prompt],
    params: GenerationParams,
    engine: Engine | None = None,
    *,
    model: str | Path | None = None,
    engine_name: EngineName = "hf",
    constrained: bool | None = None,
    counts: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = note,
    **engine_kwargs: Any,
) -> Iterator[Generation]:
    """Sample ``counts[i]`` (default ``params.num_samples``) continuations of every prompt ``i``.

    ``engine``: an engine already loaded (then ``model``, ``engine_name`` and ``engine_kwargs`` are unused); else one
    is built from ``model`` with ``engine_name`` and ``engine_kwargs`` (device, dtype, threads, lora,
    gpu_memory_utilization, seed, ...). ``constrained`` decides ``params.constrained`` (``None`` = auto, see the
    module docstring). The engine is loaded and the decision made when this is called; samples are yielded as the
    engine produces them. Raises :class:`~cifllm.sampling.engines.EngineError` (during iteration) for a constrained
    run on a cif-v1 model or a prompt the grammar cannot continue.
    """
    if engine is None:
        if model is None:
            raise ValueError("generate: give an engine or a model")
        engine, on = load_engine(model, engine_name, constrained, log=log, **engine_kwargs)
    else:
        model_dir = getattr(engine, "model_dir", None)
        if model_dir is None:
            if constrained:
                raise EngineError(f"engine {getattr(engine, 'name', engine)!r} has no model_dir: cannot check it for constrained sampling")
            on = False
        else:
            on = resolve_constrained(constrained, model_dir, engine, log=log)
    return engine.generate(prompts, replace(params, constrained=on), counts=counts, progress=progress)
