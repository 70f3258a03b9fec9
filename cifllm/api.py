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

    prompt (_prompt: validated before any model loads)
      -> candidates (_model_candidates: N samples, optionally spread over the K likeliest space groups;
                     _template_candidates: element substitution into known structures, pool="hybrid"/"template")
      -> checked (_check) -> ranked (_rank: dedupe, score by likelihood or energy, order) -> the best n

With ``rank="none"`` (the default) ``n`` candidates are drawn and returned in sample order. With ``rank="likelihood"``
or ``rank="energy"`` ``candidates`` (default max(64, n)) are drawn, StructureMatcher duplicates dropped, and the best
``n`` returned with their scores (:mod:`cifllm.evaluation.ranking`; energy: a universal potential on a DFT-anchored
hull - not DFT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pymatgen.core import Composition

from cifllm.bench.baselines import TemplateBaseline
from cifllm.cif import CIFError, structure_to_text
from cifllm.conditioning import load_properties
from cifllm.core.models import resolve_model
from cifllm.core.records import check_conditions, read_adapter_record
from cifllm.core.sampling import SAMPLING
from cifllm.data.corpus import load_corpus
from cifllm.evaluation.checks import CONSISTENCY_CHECKS, VALIDITY_CHECKS, CheckSettings, failure_summary
from cifllm.evaluation.nll import load_scoring_model, token_nll
from cifllm.evaluation.ranking import (
    RankSettings,
    dedupe_ranked,
    order,
    relax_and_score,
    score_energy,
    space_group_plan,
)
from cifllm.evaluation.reference import load_reference
from cifllm.evaluation.run import DEFINITIONS, EvalConfig, evaluate_texts, prompt_adherence, reference_record, summarize
from cifllm.evaluation.run import evaluate as evaluate_stage
from cifllm.sampling.engines import Engine, Generation, GenerationParams
from cifllm.sampling.generation import generate as generate_samples
from cifllm.sampling.generation import load_engine, note, resolve_constrained
from cifllm.sampling.prompts import Prompt, PromptError, build_prompt, parse_composition, strip_conditions
from cifllm.sampling.run import parse_generated

__all__ = ["POOLS", "VERDICT_NAMES", "Sample", "evaluate", "generate", "verdict_reason"]

#: where :func:`generate` draws candidates from
POOLS: tuple[str, ...] = ("model", "hybrid", "template")

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
    #: ``model`` (sampled) or ``template`` (element substitution into a known structure)
    source: str = "model"
    #: 1 = best, when ranked; None in sample order
    rank: int | None = None
    #: the ranking's numbers (None: not measured): ``mean_logprob`` (nats/token), ``energy_per_atom``,
    #: ``formation_energy_per_atom``, ``e_above_hull`` (eV/atom), ``relaxed``, ``n_copies``, ``hull_decomposition``
    score: dict[str, Any] = field(default_factory=dict)

    def score_line(self) -> str:
        """The ranking's numbers as one line, e.g. ``rank 1: E -4.312 eV/atom, E_hull 0.012 eV/atom (CHGNet on the
        DFT hull), 3 copies``; empty when not ranked."""
        if self.rank is None:
            return ""
        sc = self.score
        parts = []
        if "energy_per_atom" in sc:
            e, eh = sc.get("energy_per_atom"), sc.get("e_above_hull")
            parts.append(f"E {e:.4f} eV/atom" if e is not None else f"E n/a ({sc.get('energy_reason') or 'not measured'})")
            parts.append(f"E_hull {eh:.4f} eV/atom" if eh is not None else "E_hull n/a")
            if sc.get("relaxed"):
                parts.append("relaxed")
        if sc.get("mean_logprob") is not None:
            parts.append(f"mean log p {sc['mean_logprob']:.4f} nats/token")
        if sc.get("n_copies", 1) > 1:
            parts.append(f"{sc['n_copies']} copies")
        parts.append(f"from {self.source}")
        return f"rank {self.rank}: " + ", ".join(parts)

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


def _load(
    engine: str | Engine, model: str | Path | None, constrained: bool | None, adapter: str | Path | None, device: str, seed: int, log: Callable[[str], None],
) -> tuple[Engine, bool]:
    """The engine (loaded unless given) and whether the constraint engine runs."""
    if isinstance(engine, str):
        return load_engine(resolve_model(model), engine, constrained, log=log, device=device, lora=str(adapter) if adapter else None, seed=seed)  # type: ignore[arg-type]
    model_dir = getattr(engine, "model_dir", None)
    return engine, (resolve_constrained(constrained, model_dir, engine, log=log) if model_dir is not None else bool(constrained))


def _model_candidates(
    prompts: Sequence[tuple[Prompt, int]], params: GenerationParams, engine: Engine, on: bool, log: Callable[[str], None],
) -> list[tuple[Prompt, Generation]]:
    """``count`` candidates of every ``(prompt, count)`` through the one generation path, in prompt then sample order."""
    todo = [(p, c) for p, c in prompts if c > 0]
    gens = generate_samples([p for p, _ in todo], params, engine, constrained=on, counts=[c for _, c in todo], log=log)
    return [(todo[g.prompt_index][0], g) for g in sorted(gens, key=lambda g: (g.prompt_index, g.sample_index))]


def _sample(prompt: Prompt, i: int, text: str, g: Generation | None, v: dict[str, Any], check: bool, engine_name: str, constrained: bool | None, source: str) -> Sample:
    cif_text = strip_conditions(text)
    structure, err = (None, f"engine_error: {g.error}") if g is not None and g.error else parse_generated(cif_text)
    if check:
        valid, consistent = bool(v["valid"]), bool(v["consistent"])
        reason = f"engine_error: {g.error}" if g is not None and g.error else failure_summary(v)
        adherent = prompt_adherence({"prompt_meta": prompt.meta}, v)
    else:
        valid = consistent = adherent = None
        reason = f"engine_error: {g.error}" if g is not None and g.error else "not checked"
    return Sample(
        index=i, prompt=prompt.text, prompt_meta=dict(prompt.meta), text=text, cif_text=cif_text, structure=structure,
        parse_error=err, valid=valid, consistent=consistent, reason=reason, checks=v.get("checks") or {}, prompt_adherence=adherent,
        finished=g.finished if g is not None else True, n_tokens=g.n_tokens if g is not None else 0, seed=g.seed if g is not None else 0,
        engine=engine_name, verdict=v, constrained=constrained, source=source,
        score={"mean_logprob": g.logprob / max(1, g.n_tokens + int(g.finished))} if g is not None and g.logprob is not None else {},
    )


def _check(
    items: Sequence[tuple[Prompt, str, Generation | None, str]], engine_name: str, constrained: bool | None, check: bool, time_limit_s: float,
) -> list[Sample]:
    """Parse and (``check``) run the checks of ``cifllm evaluate`` on every ``(prompt, text, generation, source)``.
    Unchecked: verdicts None."""
    cif_texts = [strip_conditions(t) for _, t, _, _ in items]
    verdicts = evaluate_texts(cif_texts, workers=0, time_limit_s=time_limit_s, uniqueness=False) if check and items else [{} for _ in items]
    return [
        _sample(p, i, t, g, v, check, engine_name if src == "model" else "template", constrained if src == "model" else None, src)
        for i, ((p, t, g, src), v) in enumerate(zip(items, verdicts, strict=True))
    ]


def _template_texts(composition: str, k: int, templates: str | Path | Sequence[str]) -> list[str]:
    """Up to ``k`` template candidates for ``composition``: element substitution (:class:`TemplateBaseline`) into the
    structures of ``templates`` (a corpus folder or canonical CIF texts) with the same anonymous formula."""
    target = Composition(parse_composition(composition).reduced_formula)
    anon = target.anonymized_formula
    if isinstance(templates, (str, Path)):
        ds = load_corpus(templates).select_columns(["text", "reduced_formula"])
        texts = [t for t, f in zip(ds["text"], ds["reduced_formula"], strict=True) if Composition(f).anonymized_formula == anon]
    else:
        texts = list(templates)
    return TemplateBaseline(texts).csp(target, k=k)


def _teacher_forced(model: str | Path | None, adapter: str | Path | None, samples: Sequence[Sample]) -> list[float | None]:
    """Mean log-probability per token (nats) of each sample's CIF text under the model (BOS + text + EOS)."""
    mdl, tok = load_scoring_model(resolve_model(model), adapter)
    enc = tok.backend_tokenizer.encode_batch([s.cif_text for s in samples], add_special_tokens=False)
    mpe = int(mdl.config.max_position_embeddings)
    seqs = [[tok.bos_token_id, *e.ids, tok.eos_token_id] for e in enc]
    fit = [i for i, q in enumerate(seqs) if len(q) <= mpe]
    res = token_nll(mdl, tok, [seqs[i] for i in fit], [1] * len(fit), 16)
    out: list[float | None] = [None] * len(samples)
    for i, (total, k) in zip(fit, res, strict=True):
        out[i] = -total / max(1, k)
    return out


def _rank(
    samples: list[Sample], n: int, settings: RankSettings, model: str | Path | None, adapter: str | Path | None, log: Callable[[str], None],
) -> list[Sample]:
    """Score, order, deduplicate (and relax) ``samples`` (see :mod:`cifllm.evaluation.ranking`); the best ``n``."""
    ok = [s.valid is not False and s.structure is not None for s in samples]
    scores: list[dict[str, Any]] = [dict(s.score) for s in samples]
    if settings.by == "likelihood" and any(s.source != "model" or "mean_logprob" not in s.score for s in samples):
        # a pool with template candidates: every candidate scored the same way, teacher-forced
        for sc, lp in zip(scores, _teacher_forced(model, adapter, samples), strict=True):
            sc["mean_logprob"] = lp
    if settings.by == "energy":
        scored = [i for i in range(len(samples)) if ok[i]]
        log(f"ranking {len(scored)} valid candidates of {len(samples)} by {settings.potential} energy on the DFT hull")
        for i in range(len(samples)):
            scores[i].update(energy_per_atom=None, e_above_hull=None)
        for i, rec in zip(scored, score_energy([samples[i].structure for i in scored], settings), strict=True):
            scores[i].update(_energy_fields(rec))
    ranked = order([{**sc, "valid": v} for sc, v in zip(scores, ok, strict=True)], settings.by)
    structures = [s.structure if v else None for s, v in zip(samples, ok, strict=True)]
    keep, copies = dedupe_ranked(structures, ranked) if settings.dedupe else (ranked, {i: 1 for i in ranked})
    relaxed: dict[int, Any] = {}
    if settings.relax:
        top = [i for i in keep if ok[i] and scores[i].get("energy_per_atom") is not None][: settings.relax_top or 2 * n]
        for i, rec in zip(top, relax_and_score([samples[i].structure for i in top], settings, log=log), strict=True):
            scores[i].update(_energy_fields(rec))
            if rec.get("structure") is not None:
                relaxed[i] = rec["structure"]
        rest = [i for i in keep if i not in set(top)]
        keep = [top[j] for j in order([{**scores[i], "valid": True} for i in top], "energy")] + rest
    out = []
    for r, i in enumerate(keep[:n], start=1):
        s = replace(samples[i], rank=r, score={**scores[i], "n_copies": copies.get(i, 1)})
        if i in relaxed:
            try:
                text = structure_to_text(relaxed[i])
            except CIFError:
                text = s.cif_text
            s = replace(s, structure=relaxed[i], cif_text=text)
        out.append(s)
    return out


def _energy_fields(rec: Mapping[str, Any]) -> dict[str, Any]:
    return dict(
        energy_per_atom=rec.get("energy_per_atom"), formation_energy_per_atom=rec.get("formation_energy_per_atom"), e_above_hull=rec.get("e_above_hull"),
        hull_decomposition=rec.get("hull_decomposition"), relaxed=bool(rec.get("relaxed")), energy_reason=rec.get("reason") or rec.get("hull_reason"),
    )


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
    rank: str = "none",
    candidates: int | None = None,
    space_groups: int = 0,
    relax: bool = False,
    potential: str = "chgnet",
    pool: str = "model",
    templates: str | Path | Sequence[str] | None = None,
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
    None: not measured).

    Ranking (:mod:`cifllm.evaluation.ranking`): ``rank`` ``"none"`` (sample order), ``"likelihood"`` (the model's mean
    log-probability per token) or ``"energy"`` (E_hull of a universal potential's energy on the DFT-anchored hull,
    eV/atom; ``potential`` ``"chgnet"`` or ``"sevennet"``); ``candidates`` drawn before ranking (default max(64,
    n)); ``space_groups=K`` spreads them over the K likeliest feasible space groups (composition prompts without a
    space group); ``relax=True`` relaxes the best 2n by single point and returns relaxed structures; ``pool``
    ``"model"``, ``"template"`` (element substitution into the structures of ``templates``: a corpus folder or
    canonical CIF texts) or ``"hybrid"`` (both: N model candidates plus up to N template ones, ranked together).

    Raises :class:`~cifllm.sampling.PromptError` for a bad prompt (before any model is loaded),
    :class:`~cifllm.core.models.ModelNotFoundError` for a missing model, ``ValueError`` for bad parameters.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    settings = RankSettings(by=rank, candidates=candidates, space_groups=space_groups, relax=relax, potential=potential)  # type: ignore[arg-type]
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool != "model" and (composition is None or templates is None):
        raise ValueError(f"pool={pool!r} needs a composition and templates= (a corpus folder or CIF texts to substitute into)")
    if space_groups and (composition is None or space_group is not None):
        raise PromptError("space_groups spreads a composition prompt over space groups: give a composition and no space_group")
    if settings.by == "energy" and not check:
        raise ValueError("rank='energy' needs the checks (only valid candidates are scored): drop check=False")
    prompt = _prompt(composition, space_group, z, adapter, conditions, log)
    total = settings.n_candidates(n)
    items: list[tuple[Prompt, str, Generation | None, str]] = []
    engine_name, on = "", None
    if pool != "template":
        loaded, on = _load(engine, model, constrained, adapter, device, seed, log)
        engine_name = str(getattr(loaded, "name", ""))
        prompts: list[tuple[Prompt, int]] = [(prompt, total)]
        if space_groups:
            plan = space_group_plan(getattr(loaded, "model_dir", None) or resolve_model(model), composition, space_groups, total, adapter)  # type: ignore[arg-type]
            if plan:
                log("space groups: " + ", ".join(f"{p['space_group']} (Z {p['z']}, {p['count']})" for p in plan))
                prompts = [(build_prompt(composition=parse_composition(composition).reduced_composition, z=p["z"], space_group=p["space_group"], meta=dict(prompt.meta)), p["count"]) for p in plan]  # type: ignore[arg-type]
            else:
                log(f"note: no space group can realize {composition} within 60 atoms; the model chooses freely")
        params = GenerationParams(
            num_samples=total, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
            batch_size=max(1, min(total, batch_size)), logprobs=settings.by == "likelihood",
        )
        items += [(p, p.text + g.text, g, "model") for p, g in _model_candidates(prompts, params, loaded, on, log)]
    if pool != "model":
        items += [(prompt, t, None, "template") for t in _template_texts(composition, total, templates)]  # type: ignore[arg-type]
    samples = _check(items, engine_name, on, check, time_limit_s)
    if settings.by == "none":
        return samples[: max(n, total)]
    return _rank(samples, n, settings, model if isinstance(engine, str) else getattr(engine, "model_dir", model), adapter, log)


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
