"""The Python API: ``cifllm.generate`` (structures for a composition, or de novo) and ``cifllm.evaluate`` (metrics).

    import cifllm
    samples = cifllm.generate(composition="NaCl", space_group="Fm-3m", n=4, seed=0)
    for s in samples:
        print(s.valid, s.reason, s.structure)          # pymatgen Structure, or None when the text does not parse
    metrics = cifllm.evaluate(samples)                  # the metrics dict of `cifllm evaluate`

:func:`generate` goes through the one generation path of every stage (:func:`cifllm.sampling.generation.generate`),
then parses each sample (:func:`cifllm.sampling.run.parse_generated`) and runs the validity checks on it
(:func:`cifllm.evaluation.run.evaluate_texts`, the checks of ``cifllm evaluate``). :func:`evaluate` takes those
samples, plain CIF texts, or a ``cifllm sample`` run folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.conditioning import load_properties
from cifllm.core.models import resolve_model
from cifllm.core.records import ADAPTER_RECORD, check_conditions, read_adapter_record
from cifllm.evaluation.checks import CheckSettings, failure_summary
from cifllm.evaluation.reference import load_reference
from cifllm.evaluation.run import DEFINITIONS, EvalConfig, evaluate_texts, prompt_adherence, reference_record, summarize
from cifllm.evaluation.run import evaluate as evaluate_stage
from cifllm.modeling import SAMPLING_DEFAULTS
from cifllm.sampling.engines import Engine, GenerationParams
from cifllm.sampling.generation import generate as generate_samples
from cifllm.sampling.generation import note
from cifllm.sampling.prompts import PromptError, build_prompt, strip_conditions
from cifllm.sampling.run import parse_generated

__all__ = ["Sample", "evaluate", "generate"]


@dataclass(frozen=True)
class Sample:
    """One generated structure.

    ``text``: the sample as the model wrote it (prompt + continuation, property lines included); ``cif_text``: the same
    without property lines (what the checks read); ``structure``: the pymatgen ``Structure`` of ``cif_text``, or None
    when it does not parse (``parse_error`` says why). ``valid`` (CDVAE/DiffCSP validity: parse, cell, structural,
    compositional), ``consistent`` (CrystaLLM self-consistency), ``reason`` ("ok", or the first failing check with its
    reason) and ``checks`` (every check: ok, reason, detail, value) come from the checks of ``cifllm evaluate`` (None
    / "not checked" with ``check=False``). ``prompt_adherence``: the structure has the prompt's reduced composition
    (None for a de novo prompt or unchecked samples).
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

    def to_record(self) -> dict[str, Any]:
        """This sample as a ``samples.jsonl`` record (the fields ``cifllm evaluate`` reads)."""
        return {
            "sample_id": f"s{self.index:06d}", "prompt": self.prompt, "prompt_meta": self.prompt_meta, "sample_index": self.index,
            "text": self.text, "cif_text": self.cif_text, "n_tokens": self.n_tokens, "finished": self.finished, "engine": self.engine,
            "seed": self.seed, "parse_ok": self.structure is not None, "parse_error": self.parse_error,
        }


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
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int = SAMPLING_DEFAULTS["top_k"],
    top_p: float = SAMPLING_DEFAULTS["top_p"],
    max_new_tokens: int = 1024,
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
    auto (on for cif-v2 models). ``adapter`` + ``conditions``: a LoRA adapter and property values it was trained on
    (``{"band_gap": 3.0}`` or your own property; names map to tags through the adapter's ``properties.json``; a value
    outside its training range is allowed and flagged in ``prompt_meta["extrapolation"]``). Sampling: ``temperature``
    (0 = greedy), ``top_k`` (0 = off), ``top_p``, ``max_new_tokens`` (clipped to the model's context), ``seed``.
    ``check=False`` skips the checks (``valid``/``consistent`` None). Raises :class:`~cifllm.sampling.PromptError`
    for a bad prompt (before any model is loaded), :class:`~cifllm.core.models.ModelNotFoundError` for a missing
    model, ``ValueError`` for bad sampling parameters.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    properties = load_properties(adapter)
    meta: dict[str, Any] = {}
    if conditions:
        if adapter is None:
            raise PromptError("property conditioning needs the LoRA adapter trained on it (adapter=...)")
        if not (Path(adapter) / ADAPTER_RECORD).is_file():
            raise PromptError(f"{adapter} has no {ADAPTER_RECORD}: cannot tell which properties it was trained on")
        flags = check_conditions(read_adapter_record(adapter), {k: float(v) for k, v in conditions.items()}).flags
        if flags:
            meta["extrapolation"] = flags
            for f in flags.values():
                log(f"note: extrapolating beyond the adapter's training range: {f}")
    prompt = build_prompt(composition=composition, z=z, space_group=space_group, conditions=conditions, meta=meta, properties=properties)
    params = GenerationParams(
        num_samples=n, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=max(1, min(n, batch_size)),
    )
    if isinstance(engine, str):
        gens = generate_samples(
            [prompt], params, None, model=resolve_model(model), engine_name=engine, constrained=constrained, log=log, device=device,
            lora=str(adapter) if adapter else None, seed=seed,
        )
        engine_name = engine
    else:
        gens = generate_samples([prompt], params, engine, constrained=constrained, log=log)
        engine_name = getattr(engine, "name", "")
    gens = sorted(gens, key=lambda g: g.sample_index)
    texts = [prompt.text + g.text for g in gens]
    cif_texts = [strip_conditions(t) for t in texts]
    verdicts = evaluate_texts(cif_texts, workers=0, time_limit_s=time_limit_s, uniqueness=False) if check else [{} for _ in gens]
    out = []
    for g, text, cif_text, v in zip(gens, texts, cif_texts, verdicts, strict=True):
        structure, err = (None, f"engine_error: {g.error}") if g.error else parse_generated(cif_text)
        rec = {"prompt_meta": prompt.meta}
        out.append(
            Sample(
                index=g.sample_index, prompt=prompt.text, prompt_meta=dict(prompt.meta), text=text, cif_text=cif_text, structure=structure,
                parse_error=err, valid=bool(v["valid"]) if check else None, consistent=bool(v["consistent"]) if check else None,
                reason=(f"engine_error: {g.error}" if g.error else failure_summary(v)) if check else "not checked",
                checks=v.get("checks") or {}, prompt_adherence=prompt_adherence(rec, v) if check else None,
                finished=g.finished, n_tokens=g.n_tokens, seed=g.seed, engine=engine_name, verdict=v,
            )
        )
    return out


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
