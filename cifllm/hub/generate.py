"""Generate CIFs for a composition (or de novo) from the default model, a model folder or a Hub id, and check them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifllm.conditioning import load_properties
from cifllm.core.models import resolve_model
from cifllm.core.records import check_conditions, read_adapter_record
from cifllm.evaluation.checks import failure_summary
from cifllm.evaluation.run import evaluate_texts, prompt_adherence
from cifllm.modeling import SAMPLING_DEFAULTS
from cifllm.sampling.engines import GenerationParams
from cifllm.sampling.generation import generate, note, resolve_constrained
from cifllm.sampling.prompts import PromptError, build_prompt, strip_conditions

__all__ = ["GeneratedCIF", "generate_cifs"]


@dataclass(frozen=True)
class GeneratedCIF:
    """One sample: ``text`` is prompt + continuation with conditioning lines removed (what the checks read).

    ``valid``: CDVAE/DiffCSP validity (parse, cell, structural, compositional); ``consistent``: CrystaLLM
    self-consistency; ``reason``: the first failing check's reason and detail ("ok" when all pass);
    ``prompt_adherence``: the structure has the prompt's reduced composition (None for de novo or unchecked);
    ``constrained``: whether the constraint engine wrote it.
    """

    index: int
    prompt: str
    text: str
    valid: bool
    consistent: bool
    reason: str
    finished: bool
    n_tokens: int
    prompt_adherence: bool | None = None
    constrained: bool | None = None


def generate_cifs(
    composition: str | None = None,
    space_group: str | int | None = None,
    model: str | Path | None = None,
    n: int = 3,
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int = SAMPLING_DEFAULTS["top_k"],
    top_p: float = SAMPLING_DEFAULTS["top_p"],
    seed: int = 0,
    max_new_tokens: int = 1024,
    de_novo: bool = False,
    z: int | None = None,
    device: str = "auto",
    check: bool = True,
    time_limit_s: float = 30.0,
    engine: Any = None,
    adapter: str | Path | None = None,
    conditions: dict[str, float] | None = None,
    constrained: bool | None = None,
    engine_name: str = "hf",
    log: Callable[[str], None] | None = None,
) -> list[GeneratedCIF]:
    """Sample ``n`` CIFs (:func:`cifllm.sampling.generation.generate`) for ``composition`` (+ ``space_group``, ``z``) or, with ``de_novo``, from
    an empty prompt, and run the validity checks on each (``check=False`` skips them: ``valid`` is then False).

    ``model``: ``None``/``"default"``, a model folder or a Hub id (:func:`cifllm.hub.resolve.resolve_model`);
    ``engine``: an already loaded engine (then ``model``, ``engine_name``, ``device`` and ``adapter`` are unused), else
    ``engine_name`` (``hf`` or ``vllm``) is loaded; ``constrained``: the constraint engine on / off, ``None`` = auto
    (on for cif-v2 models; off with a note on ``log``, default stderr, for cif-v1 models). The prompt is validated before any model is loaded: raises :class:`~cifllm.sampling.PromptError` for a
    bad composition or space group, ``ValueError`` for bad sampling parameters.
    """

    conds: dict[str, float] = {}
    properties = load_properties(adapter)
    if conditions:
        if adapter is None:
            raise PromptError("property conditioning needs a LoRA adapter trained on it (--adapter)")

        verdict = check_conditions(read_adapter_record(adapter), dict(conditions))  # unknown property: AdapterError
        for flag in verdict.flags.values():  # not `note`: that name is the log function imported above
            import sys

            print(f"note: extrapolating: {flag}", file=sys.stderr)
        conds = dict(conditions)
    if de_novo:
        if composition or space_group is not None or z is not None:
            raise PromptError("--de-novo excludes a composition, space group and Z")
        prompt = build_prompt(conditions=conds, properties=properties)
    else:
        if not composition:
            raise PromptError("give a composition (e.g. 'Na4Cl4') or ask for de novo samples")
        prompt = build_prompt(composition=composition, z=z, space_group=space_group, conditions=conds, properties=properties)
    params = GenerationParams(
        num_samples=n, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
        batch_size=max(1, min(n, 32)),
    )
    kwargs: dict[str, Any] = {}
    if engine is None:
        kwargs = dict(model=resolve_model(model), engine_name=engine_name, device=device, lora=adapter, seed=seed)
        constrained = resolve_constrained(constrained, kwargs["model"], log=log or note)
    gens = sorted(generate([prompt], params, engine, constrained=constrained, log=log or note, **kwargs), key=lambda g: g.sample_index)
    texts = [strip_conditions(prompt.text + g.text) for g in gens]
    if check:

        verdicts = evaluate_texts(texts, workers=0, time_limit_s=time_limit_s, uniqueness=False)
    else:
        verdicts = [{"valid": False, "consistent": False, "reason": "not_checked"} for _ in texts]
    out = []
    for i, (g, t, v) in enumerate(zip(gens, texts, verdicts, strict=True)):
        reason = f"engine_error: {g.error}" if g.error else (failure_summary(v) if check else "not checked")
        adherent = prompt_adherence({"prompt_meta": prompt.meta}, v) if check else None
        out.append(GeneratedCIF(i, prompt.text, t, bool(v.get("valid")), bool(v.get("consistent")), reason, g.finished, g.n_tokens, adherent, constrained))
    return out
