"""The Python API: ``cifllm.generate`` (structures for a composition, or de novo) and ``cifllm.evaluate`` (metrics).

    import cifllm
    samples = cifllm.generate(composition="NaCl", space_group="Fm-3m", n=4, seed=0)
    for s in samples:
        print(s.verdicts(), s.structure)   # both verdicts by name, each with its own reason; Structure or None
    metrics = cifllm.evaluate(samples)     # the metrics dict of `cifllm evaluate`

:func:`generate` is the one front-end of "sample a few structures and check them" (``cifllm generate`` calls it too).
It goes through the one generation path of every stage (:func:`cifllm.sampling.generation.generate`), then parses
each sample (:func:`cifllm.sampling.run.parse_generated`) and runs the validity checks on it
(:func:`cifllm.evaluation.run.evaluate_texts`, the checks of ``cifllm evaluate``). :func:`evaluate` takes those
samples, plain CIF texts, or a ``cifllm sample`` run folder.

The pipeline of :func:`generate`, one function per step::

    prompt (_prompt: validated before any model loads) -> candidates (_sample_candidates) -> checked (_check)

Today ``n`` candidates are drawn and all are returned in sample order; a ranking step (by likelihood or energy) would
draw more candidates and keep its best ``n`` after ``_check``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.conditioning import load_properties
from cifllm.core.models import resolve_model
from cifllm.core.records import check_conditions, read_adapter_record
from cifllm.core.sampling import SAMPLING
from cifllm.evaluation.checks import CONSISTENCY_CHECKS, VALIDITY_CHECKS, CheckSettings, failure_summary
from cifllm.evaluation.reference import load_reference
from cifllm.evaluation.run import DEFINITIONS, EvalConfig, evaluate_texts, prompt_adherence, reference_record, summarize
from cifllm.evaluation.run import evaluate as evaluate_stage
from cifllm.sampling.engines import Engine, Generation, GenerationParams
from cifllm.sampling.generation import generate as generate_samples
from cifllm.sampling.generation import load_engine, note, resolve_constrained
from cifllm.sampling.prompts import Prompt, PromptError, build_prompt, strip_conditions
from cifllm.sampling.run import parse_generated

__all__ = ["VERDICT_NAMES", "Sample", "evaluate", "generate", "verdict_reason"]

#: how a person reads each verdict (CLI output, ``Sample.verdicts()``): the aggregate, whose definition it follows,
#: and the checks it is made of. ``valid`` and ``consistent`` are different verdicts: a sample can be CDVAE-valid and
#: fail CrystaLLM's bond-length rule (not self-consistent), so each is printed with the reason *it* failed.
VERDICT_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "valid": ("CDVAE-valid", VALIDITY_CHECKS),
    "consistent": ("CrystaLLM-consistent", ("parse", "cell", *CONSISTENCY_CHECKS)),
}


def verdict_reason(checks: Mapping[str, Mapping[str, Any]], verdict: str) -> str:
    """Why aggregate ``verdict`` (``"valid"`` or ``"consistent"``) failed: ``"<check>: <reason> (<detail>)"`` of its
    first failing check, or ``"not checked: <check> failed"`` when its checks were skipped after an earlier failure;
    ``""`` when it passed (or no check ran)."""
    names = VERDICT_NAMES[verdict][1]
    for name in names:
        c = checks.get(name) or {}
        if c.get("ok") is False:
            detail = " ".join(str(c.get("detail") or "").split())
            return f"{name}: {c.get('reason')}" + (f" ({detail[:160]})" if detail else "")
    for name in names:
        c = checks.get(name) or {}
        if c.get("ok") is None and str(c.get("reason") or "").startswith("skipped_"):
            return f"not checked: {str(c['reason'])[len('skipped_'):]} failed"
    return ""


@dataclass(frozen=True)
class Sample:
    """One generated structure.

    ``text``: the sample as the model wrote it (prompt + continuation, property lines included); ``cif_text``: the same
    without property lines (what the checks read); ``structure``: the pymatgen ``Structure`` of ``cif_text``, or None
    when it does not parse (``parse_error`` says why). Two separate verdicts from the checks of ``cifllm evaluate``:
    ``valid`` (CDVAE/DiffCSP validity: parse, cell, structural, compositional) and ``consistent`` (CrystaLLM
    self-consistency: formula, multiplicity, sites, space group, bond lengths); :meth:`verdicts` names both, each
    with the reason it failed. ``reason``: "ok", or the first failing check of either with its reason; ``checks``:
    every check (ok, reason, detail, value). With ``check=False`` nothing is measured: ``valid``, ``consistent`` and
    ``prompt_adherence`` are None (never False), ``reason`` is "not checked". ``prompt_adherence``: the structure has
    the prompt's reduced composition (None for a de novo prompt). ``constrained``: whether the constraint engine
    wrote it.
    """

    index: int
    prompt: str
    prompt_meta: dict[str, Any]
    text: str
    cif_text: str
    structure: Any
    parse_error: str
    valid: bool | None
    consistent: bool | None
    reason: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_adherence: bool | None = None
    finished: bool = False
    n_tokens: int = 0
    seed: int = 0
    engine: str = ""
    verdict: dict[str, Any] = field(default_factory=dict, repr=False)
    constrained: bool | None = None

    def to_record(self) -> dict[str, Any]:
        """This sample as a ``samples.jsonl`` record (the fields ``cifllm evaluate`` reads)."""
        return {
            "sample_id": f"s{self.index:06d}", "prompt": self.prompt, "prompt_meta": self.prompt_meta, "sample_index": self.index,
            "text": self.text, "cif_text": self.cif_text, "n_tokens": self.n_tokens, "finished": self.finished, "engine": self.engine,
            "seed": self.seed, "parse_ok": self.structure is not None, "parse_error": self.parse_error,
        }

    def verdicts(self) -> str:
        """Both verdicts by name, each with the reason it failed, e.g. ``CDVAE-valid yes; CrystaLLM-consistent no
        (bond_length: bond_length_unreasonable (...)); composition kept yes`` ("not checked" with ``check=False``)."""
        if self.valid is None and self.consistent is None:
            return "not checked" + (f" ({self.reason})" if self.reason.startswith("engine_error") else "")
        parts = []
        for key, (label, _) in VERDICT_NAMES.items():
            ok = getattr(self, key)
            why = "" if ok else verdict_reason(self.checks, key) or self.reason
            parts.append(f"{label} {'yes' if ok else 'no'}" + (f" ({why})" if why else ""))
        if self.prompt_adherence is not None:
            parts.append(f"composition kept {'yes' if self.prompt_adherence else 'no'}")
        return "; ".join(parts)


def _prompt(
    composition: str | None, space_group: int | str | None, z: int | None, adapter: str | Path | None,
    conditions: Mapping[str, float] | None, log: Callable[[str], None],
) -> Prompt:
    """The prompt, validated before any model is loaded (:class:`PromptError`, ``AdapterError``)."""
    meta: dict[str, Any] = {}
    conds = {k: float(v) for k, v in (conditions or {}).items()}
    if conds:
        if adapter is None:
            raise PromptError("property conditioning needs the LoRA adapter trained on it (adapter=...)")
        flags = check_conditions(read_adapter_record(adapter), conds).flags  # unknown property: AdapterError
        if flags:
            meta["extrapolation"] = flags
            for f in flags.values():
                log(f"note: extrapolating beyond the adapter's training range: {f}")
    return build_prompt(composition=composition, z=z, space_group=space_group, conditions=conds or None, meta=meta, properties=load_properties(adapter))


def _sample_candidates(
    prompt: Prompt, params: GenerationParams, engine: str | Engine, model: str | Path | None, constrained: bool | None,
    adapter: str | Path | None, device: str, log: Callable[[str], None],
) -> tuple[list[Generation], str, bool]:
    """``params.num_samples`` candidates of ``prompt`` through the one generation path, in sample order; also the
    engine's name and whether the constraint engine ran."""
    if isinstance(engine, str):
        loaded, on = load_engine(resolve_model(model), engine, constrained, log=log, device=device, lora=str(adapter) if adapter else None, seed=params.seed)  # type: ignore[arg-type]
    else:
        loaded = engine
        model_dir = getattr(engine, "model_dir", None)
        on = resolve_constrained(constrained, model_dir, engine, log=log) if model_dir is not None else bool(constrained)
    gens = generate_samples([prompt], params, loaded, constrained=on, log=log)
    return sorted(gens, key=lambda g: g.sample_index), str(getattr(loaded, "name", "")), on


def _check(
    prompt: Prompt, gens: list[Generation], engine_name: str, constrained: bool, check: bool, time_limit_s: float,
) -> list[Sample]:
    """Parse and (``check``) run the checks of ``cifllm evaluate`` on every candidate. Unchecked: verdicts None."""
    texts = [prompt.text + g.text for g in gens]
    cif_texts = [strip_conditions(t) for t in texts]
    verdicts = evaluate_texts(cif_texts, workers=0, time_limit_s=time_limit_s, uniqueness=False) if check else [{} for _ in gens]
    out = []
    for g, text, cif_text, v in zip(gens, texts, cif_texts, verdicts, strict=True):
        structure, err = (None, f"engine_error: {g.error}") if g.error else parse_generated(cif_text)
        if check:
            valid, consistent = bool(v["valid"]), bool(v["consistent"])
            reason = f"engine_error: {g.error}" if g.error else failure_summary(v)
            adherent = prompt_adherence({"prompt_meta": prompt.meta}, v)
        else:
            valid = consistent = adherent = None
            reason = f"engine_error: {g.error}" if g.error else "not checked"
        out.append(
            Sample(
                index=g.sample_index, prompt=prompt.text, prompt_meta=dict(prompt.meta), text=text, cif_text=cif_text, structure=structure,
                parse_error=err, valid=valid, consistent=consistent, reason=reason, checks=v.get("checks") or {}, prompt_adherence=adherent,
                finished=g.finished, n_tokens=g.n_tokens, seed=g.seed, engine=engine_name, verdict=v, constrained=constrained,
            )
        )
    return out


def generate(
    composition: str | None = None,
    space_group: int | str | None = None,
    n: int = 1,
    model: str | Path | None = "default",
    engine: str | Engine = "hf",
    constrained: bool | None = None,
    seed: int = 0,
    *,
    z: int | None = None,
    adapter: str | Path | None = None,
    conditions: Mapping[str, float] | None = None,
    temperature: float = SAMPLING.temperature,
    top_k: int = SAMPLING.top_k,
    top_p: float = SAMPLING.top_p,
    max_new_tokens: int = SAMPLING.max_new_tokens,
    batch_size: int = 32,
    device: str = "auto",
    check: bool = True,
    time_limit_s: float = 30.0,
    log: Callable[[str], None] = note,
) -> list[Sample]:
    """Sample ``n`` structures for ``composition`` (a formula such as ``"NaCl"``, or the cell formula ``"Na4Cl4"``;
    ``z`` multiplies it) and optional ``space_group`` (number or symbol); ``composition=None``: de novo.

    ``model``: ``"default"`` (the shipped model, or ``$CIFLLM_MODEL``), a model folder or a Hub id. ``engine``:
    ``"hf"`` or ``"vllm"``, or an engine already loaded (:func:`cifllm.sampling.make_engine`; reuse it across calls,
    then ``model``, ``adapter`` and ``device`` are unused). ``constrained``: the constraint engine on / off, None =
    auto (on for cif-v2 models; off with a note on ``log`` for cif-v1 models). ``adapter`` + ``conditions``: a LoRA
    adapter and property values it was trained on (``{"band_gap": 3.0}`` or your own property; names map to tags
    through the adapter's ``properties.json``; a value outside its training range is allowed and flagged in
    ``prompt_meta["extrapolation"]``). Sampling (defaults: :data:`cifllm.core.sampling.SAMPLING`, the same in every
    entry point): ``temperature`` (0 = greedy), ``top_k`` (0 = off), ``top_p``, ``max_new_tokens`` (clipped to the
    model's context), ``seed``. ``check=False`` skips the checks (``valid``/``consistent``/``prompt_adherence``
    None: not measured). Raises :class:`~cifllm.sampling.PromptError` for a bad prompt (before any model is
    loaded), :class:`~cifllm.core.models.ModelNotFoundError` for a missing model, ``ValueError`` for bad sampling
    parameters.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    prompt = _prompt(composition, space_group, z, adapter, conditions, log)
    params = GenerationParams(
        num_samples=n, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=max(1, min(n, batch_size)),
    )
    gens, engine_name, on = _sample_candidates(prompt, params, engine, model, constrained, adapter, device, log)
    # n candidates, all returned in sample order; a ranking step would draw more candidates and keep its best n here
    return _check(prompt, gens, engine_name, on, check, time_limit_s)


def _records(samples: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for i, s in enumerate(samples):
        if isinstance(s, Sample):
            out.append(s.to_record())
        elif isinstance(s, str):
            out.append({"sample_id": f"s{i:06d}", "cif_text": strip_conditions(s), "prompt_meta": {}})
        elif isinstance(s, Mapping):
            rec = dict(s)
            rec.setdefault("sample_id", f"s{i:06d}")
            rec.setdefault("cif_text", strip_conditions(str(rec.get("text", ""))))
            out.append(rec)
        else:
            raise TypeError(f"evaluate: sample {i} is a {type(s).__name__}; give cifllm.Sample objects, CIF texts, samples.jsonl records or a path")
    return out


def evaluate(
    samples_or_path: Sequence[Any] | str | Path,
    reference: str | Path | Sequence[Any] | Any | None = None,
    *,
    reference_split: str | None = None,
    uniqueness: bool = True,
    workers: int = 0,
    time_limit_s: float = 60.0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The metrics of ``cifllm evaluate`` (counts, rates, rates among valid, failure reasons, definitions).

    ``samples_or_path``: samples from :func:`generate`, CIF texts, ``samples.jsonl`` records, or a ``cifllm sample``
    run folder / ``samples.jsonl`` (then the evaluate stage runs and also writes its folder, ``out`` or
    ``<run>/eval``). ``reference`` for novelty: a corpus folder (``cifllm data``), a folder of CIF files, or pymatgen
    ``Structure`` objects / CIF texts (:func:`cifllm.evaluation.reference.load_reference`: they go through the corpus
    filters, and ``metrics["reference"]["dropped"]`` counts those rejected); None: novelty "not measured", reported
    as None, never 0. ``workers`` processes (0 = this process), ``time_limit_s`` per sample (or reference record) and
    stage.
    """
    ref = load_reference(reference, reference_split, workers, time_limit_s, log=note)
    if isinstance(samples_or_path, str | Path):
        cfg = EvalConfig(
            samples=str(samples_or_path), out=str(out) if out else None,
            reference=str(reference) if isinstance(reference, str | Path) and ref is not None else None,
            reference_split=reference_split, workers=workers, time_limit_s=time_limit_s, uniqueness=uniqueness,
        )
        folder = evaluate_stage(cfg, progress=False, log=note, reference=ref)
        return json.loads((folder / "metrics.json").read_text())
    records = _records(list(samples_or_path))
    texts = [str(r.get("cif_text") or "") for r in records]
    verdicts = evaluate_texts(texts, CheckSettings(), workers, time_limit_s, ref.index if ref else None, uniqueness)
    metrics = summarize(verdicts, records, novelty_measured=ref is not None)
    metrics["definitions"] = DEFINITIONS
    metrics["reference"] = reference_record(ref, reference, reference_split)
    return metrics
