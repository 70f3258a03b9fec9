"""The ``sample`` stage: prompts -> engine -> ``samples.jsonl`` + one ``.cif`` per parsed sample.

Run folder::

    <out>/
      config.yaml       resolved SampleConfig
      prompts.jsonl     the validated prompts (id, kind, text, meta)
      samples.jsonl     one record per sample (see SAMPLE_FIELDS), parsed or not
      cifs/<sample_id>.cif   full CIF (with symmetry operators) of every sample that parses
      summary.json      counts, tokens, wall time, tokens/s and samples/s
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cifllm.cif import CIFError, text_to_structure
from cifllm.cif.io import write_cif_file
from cifllm.conditioning import BUILTIN, ConditioningError, PropertySet, expand_conditions, load_properties
from cifllm.core.config import save_config
from cifllm.core.errors import CifllmError
from cifllm.core.inputs import InputError, iter_jsonl, parse_json
from cifllm.core.models import resolve_model
from cifllm.core.records import ADAPTER_RECORD, AdapterError, check_conditions, read_adapter_record
from cifllm.core.sampling import SAMPLING
from cifllm.data.corpus import load_corpus
from cifllm.sampling.constraints import ConstraintConfig
from cifllm.sampling.engines import Engine, GenerationParams
from cifllm.sampling.generation import generate, load_engine, resolve_constrained
from cifllm.sampling.prompts import (
    Prompt,
    PromptError,
    build_prompt,
    prompts_from_structures,
    read_prompt_file,
    strip_conditions,
)
from cifllm.utils import atomic_write_json, atomic_write_text

__all__ = ["SAMPLE_FIELDS", "SampleConfig", "collect_prompts", "parse_generated", "read_samples", "sample"]

#: Keys of every ``samples.jsonl`` record.
SAMPLE_FIELDS = (
    "sample_id",  # s000000, in generation order
    "prompt_id",
    "prompt_kind",
    "prompt",  # prompt text (without <|bos|>)
    "prompt_meta",  # formula, reduced_formula, sg_number, target_id, conditions, ...
    "sample_index",  # k-th sample of this prompt
    "generated",  # the model's continuation only
    "text",  # prompt + generated: the sample as the model wrote it
    "cif_text",  # text without conditioning lines: what the checks read
    "n_tokens",  # generated tokens before <|eos|>
    "finished",  # stopped at <|eos|> (false: ran out of max_new_tokens)
    "engine",
    "seed",
    "batch",
    "time_s",  # wall seconds of the batch / its sequences
    "parse_ok",
    "parse_error",  # "<reason>: <detail>" when parse_ok is false
    "cif_file",  # relative path of the written .cif, or null
    "constraint",  # constraint-engine counters of this sample, or null (unconstrained, or not measured: vllm)
)


@dataclass(frozen=True)
class SampleConfig:
    """Config of ``cifllm sample`` (YAML + ``key=value`` overrides).

    Prompt source, first that is set: ``prompt_file``; ``csp_corpus`` (one composition prompt per structure of
    ``csp_split``, ``csp_limit`` of them, 0 = all, with ``target_id`` for CSP evaluation); ``prefix``; ``composition``
    (+ ``z``, ``space_group``); else de novo. ``num_samples`` per prompt (a prompt file's ``n`` overrides).
    """

    model: str = ""  #: model to sample: 'default' (the shipped model, or $CIFLLM_MODEL), a save_pretrained folder or a Hub id org/name
    tokenizer: str | None = None  #: saved tokenizer folder; null = the model folder's tokenizer
    out: str = "runs/samples"  #: run folder: config.yaml, prompts.jsonl, samples.jsonl, cifs/, summary.json
    engine: Literal["hf", "vllm"] = "hf"  #: sampling engine: hf (transformers generate, CPU or GPU) or vllm (optional extra)
    prompt_file: str | None = None  #: prompts, one per line ('<formula> [<space group>]', '*' = de novo) or .jsonl records; builtin:demo_prompts = the packaged file
    csp_corpus: str | None = None  #: corpus folder: one composition prompt per structure of csp_split, with target_id for CSP evaluation
    csp_split: str = "val"  #: split of csp_corpus to prompt from
    csp_limit: int = 0  #: most csp_corpus structures to prompt from; 0 = all
    csp_space_group: bool = False  #: csp_corpus prompts also state the target's space group
    prefix: str | None = None  #: free prompt text continued as is (end it at a line break)
    composition: str | None = None  #: composition prompt, e.g. NaCl or Na4Cl4
    z: int | None = None  #: formula units per cell (multiplies composition)
    space_group: str | None = None  #: space-group symbol or number added to the composition prompt, e.g. Fm-3m or 225
    num_samples: int = 1  #: samples per prompt (a prompt file's n overrides)
    batch_size: int = 32  #: sequences per generate call
    temperature: float = SAMPLING.temperature  #: sampling temperature; 0 = greedy
    top_k: int = SAMPLING.top_k  #: 0 = off
    top_p: float = SAMPLING.top_p  #: nucleus sampling threshold; 1.0 = off
    max_new_tokens: int = SAMPLING.max_new_tokens  #: most tokens generated per sample (clipped to the model's context)
    seed: int = 0  #: sampling seed (batch b uses seed + b)
    device: str = "auto"  #: auto, cpu or cuda (hf engine)
    dtype: str = "auto"  #: weights dtype: auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16 or float16
    threads: int = 0  #: torch CPU threads; 0 = torch default
    lora: str | None = None  #: LoRA adapter folder (cifllm finetune) trained on `model`
    #: property conditioning, ``name=value`` items separated by ``;``; a value may be a list ``a,b,c`` or a grid
    #: ``lo:hi:n`` (every combination becomes a prompt), e.g. ``tc=80:160:5`` or ``band_gap=3.0;density=2.5``
    conditions: str | None = None
    gpu_memory_utilization: float = 0.5  #: vllm only: share of GPU memory (CPU build: of RAM) for weights + KV cache
    #: the constraint engine (only consistent cif-v2 text can be written): true / false, or null = auto (on for
    #: cif-v2 models, off with a note for cif-v1 models)
    constrained: bool | None = None
    #: the constraint engine's settings when it is on, e.g. constraint.min_bond_ratio=0 (the 0.5 A guard alone)
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)
    write_cifs: bool = True  #: write cifs/<sample_id>.cif (full CIF with symmetry operators) for every sample that parses
    parse_max_sites: int = 2000  #: samples whose parsed cell has more sites are recorded as not parsed

    def generation_params(self) -> GenerationParams:
        return GenerationParams(
            num_samples=self.num_samples,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            batch_size=self.batch_size,
            constraint=self.constraint,
        )


def _set(x: Any) -> bool:
    return x is not None and x != ""


def parse_conditions(spec: str | None) -> dict[str, str]:
    """``"tc=80:160:5; band_gap=3"`` -> ``{"tc": "80:160:5", "band_gap": "3"}`` (values expanded later)."""
    out: dict[str, str] = {}
    for item in (spec or "").split(";"):
        if not item.strip():
            continue
        if "=" not in item:
            raise PromptError(f"conditions: expected name=value items separated by ';', got {item.strip()!r}")
        k, v = item.split("=", 1)
        if k.strip() in out:
            raise PromptError(f"conditions: property {k.strip()!r} given twice")
        out[k.strip()] = v.strip()
    return out


def collect_prompts(cfg: SampleConfig) -> tuple[list[Prompt], list[int]]:
    """Build and validate every prompt of ``cfg`` (raises :class:`PromptError` before any sampling).

    With ``conditions`` every base prompt is repeated for each combination of property values; with a LoRA adapter
    the properties must be ones it was trained on, and values outside its training range are flagged in the prompt's
    ``meta["extrapolation"]`` (and so in every sample record). Property names map to tags through the adapter's
    recorded property set (:func:`cifllm.conditioning.load_properties`; built-in properties without an adapter)."""
    try:
        properties = load_properties(cfg.lora) if _set(cfg.lora) else BUILTIN
    except ConditioningError as exc:
        raise PromptError(str(exc)) from None
    prompts, counts = _base_prompts(cfg, properties)
    conds = parse_conditions(cfg.conditions)
    record = None
    if _set(cfg.lora):

        if (Path(cfg.lora) / ADAPTER_RECORD).is_file():  # type: ignore[arg-type]
            record = read_adapter_record(cfg.lora)  # type: ignore[arg-type]
        elif conds or any(p.meta.get("conditions") for p in prompts):
            raise AdapterError(f"{cfg.lora} has no {ADAPTER_RECORD}: cannot tell which properties it was trained on")
    if not conds:
        if record is not None:

            for p in prompts:
                given = {k: float(v) for k, v in (p.meta.get("conditions") or {}).items()}
                flags = check_conditions(record, given).flags if given else {}
                if flags:
                    p.meta["extrapolation"] = flags
        return prompts, counts
    if any(p.meta.get("conditions") for p in prompts):
        raise PromptError("conditions= and a prompt file with its own conditions: give the properties in one place")
    if record is not None:  # a property the adapter was not trained on: its AdapterError first (values checked below)
        check_conditions(record, dict.fromkeys(conds, math.nan))
    try:
        combos = expand_conditions(conds, properties)
    except ConditioningError as exc:
        raise PromptError(f"conditions: {exc}") from None
    flags_by_combo = []
    for combo in combos:
        flags: dict[str, str] = {}
        if record is not None:

            flags = check_conditions(record, combo).flags
        flags_by_combo.append(flags)
    out_p: list[Prompt] = []
    out_n: list[int] = []
    for p, n in zip(prompts, counts, strict=True):
        for combo, flags in zip(combos, flags_by_combo, strict=True):
            meta = {k: v for k, v in p.meta.items() if k not in ("formula", "reduced_formula", "sg_number")}
            if flags:
                meta["extrapolation"] = flags
            if p.kind == "prefix":
                q = build_prompt(prefix=p.text, conditions=combo, meta=meta, properties=properties)
            elif p.kind == "de_novo":
                q = build_prompt(conditions=combo, meta=meta, properties=properties)
            else:
                q = build_prompt(
                    composition=p.meta["formula"], space_group=p.meta.get("sg_number"), conditions=combo, meta=meta, properties=properties
                )
            out_p.append(q)
            out_n.append(n)
    return out_p, out_n


def _base_prompts(cfg: SampleConfig, properties: PropertySet = BUILTIN) -> tuple[list[Prompt], list[int]]:
    if _set(cfg.prompt_file):
        items = read_prompt_file(cfg.prompt_file, properties)  # type: ignore[arg-type]
        return [p for p, _ in items], [n or cfg.num_samples for _, n in items]
    if _set(cfg.csp_corpus):

        ds = load_corpus(cfg.csp_corpus, split=cfg.csp_split or None)  # type: ignore[arg-type]
        if cfg.csp_limit > 0:
            ds = ds.select(range(min(cfg.csp_limit, len(ds))))
        prompts = prompts_from_structures(zip(ds["id"], ds["text"], strict=True), with_space_group=cfg.csp_space_group)
        return prompts, [cfg.num_samples] * len(prompts)
    if _set(cfg.prefix):
        p = build_prompt(prefix=cfg.prefix)
    elif _set(cfg.composition):
        p = build_prompt(composition=cfg.composition, z=cfg.z or None, space_group=cfg.space_group or None)
    else:
        if _set(cfg.space_group) or cfg.z:
            raise PromptError("space_group and z need a composition")
        p = build_prompt()
    return [p], [cfg.num_samples]


def parse_generated(cif_text: str, max_sites: int = 2000) -> tuple[Any, str]:
    """(Structure or None, "" or "<reason>: <detail>"): never raises, whatever the text."""
    try:
        return text_to_structure(cif_text, max_sites=max_sites), ""
    except CIFError as exc:
        return None, f"{exc.reason}: {exc.detail}"[:500]
    except Exception as exc:  # untrusted text: any failure is a verdict, not a crash
        return None, f"parse_crash: {type(exc).__name__}: {exc}"[:500]


def sample(cfg: SampleConfig, engine: Engine | None = None, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Run the sample stage; returns the run folder. Pass ``engine`` to reuse a loaded model.

    The prompts, the model (``default``, a folder or a Hub id) and the adapter are checked and the engine is loaded
    before anything is written, so a run that fails on its inputs leaves an earlier run in ``out`` as it was."""
    from tqdm.auto import tqdm


    prompts, counts = collect_prompts(cfg)
    flagged = sorted({f for p in prompts for f in p.meta.get("extrapolation", {}).values()})
    for f in flagged:
        log(f"note: extrapolating beyond the adapter's training range: {f}")
    params = cfg.generation_params()
    out = Path(cfg.out)
    if out.is_file():
        raise CifllmError(f"out={out}: is a file, expected a folder for the samples")
    if engine is None:
        if not cfg.model:
            raise ValueError("model= is required ('default', a save_pretrained folder or a Hub id)")
        engine, constrained = load_engine(
            cfg.model,
            cfg.engine,
            cfg.constrained,
            log=log,
            tokenizer_dir=cfg.tokenizer or None,
            device=cfg.device,
            dtype=cfg.dtype,
            threads=cfg.threads,
            lora=cfg.lora or None,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            seed=cfg.seed,
        )
    else:
        constrained = resolve_constrained(cfg.constrained, getattr(engine, "model_dir", None) or (resolve_model(cfg.model) if cfg.model else ""), engine, log=log)
    params = replace(params, constrained=constrained)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "prompts.jsonl", "".join(json.dumps(p.to_json()) + "\n" for p in prompts))
    cif_dir = out / "cifs"
    if cfg.write_cifs:
        cif_dir.mkdir(exist_ok=True)
    partial = out / "samples.jsonl.partial"
    n = n_parsed = n_tokens = n_finished = 0
    t0 = time.perf_counter()
    total = sum(counts)
    bar = tqdm(total=total, desc=f"sample [{engine.name}]", unit="sample", disable=not progress, mininterval=1.0)
    with partial.open("w") as fh:
        for g in generate(prompts, params, engine, constrained=constrained, counts=counts, progress=bar.update, log=log):
            p = prompts[g.prompt_index]
            text = p.text + g.text
            cif_text = strip_conditions(text)
            sid = f"s{n:06d}"
            if g.error:
                structure, err = None, f"engine_error: {g.error}"
            else:
                structure, err = parse_generated(cif_text, cfg.parse_max_sites)
            cif_file = None
            if structure is not None and cfg.write_cifs:
                try:
                    write_cif_file(structure, cif_dir / f"{sid}.cif")
                    cif_file = f"cifs/{sid}.cif"
                except Exception as exc:  # CifWriter on a strange structure: keep the sample, note it
                    err = f"cif_write_failed: {type(exc).__name__}: {exc}"[:500]
            rec = {
                "sample_id": sid,
                "prompt_id": p.id,
                "prompt_kind": p.kind,
                "prompt": p.text,
                "prompt_meta": p.meta,
                "sample_index": g.sample_index,
                "generated": g.text,
                "text": text,
                "cif_text": cif_text,
                "n_tokens": g.n_tokens,
                "finished": g.finished,
                "engine": engine.name,
                "seed": g.seed,
                "batch": g.batch,
                "time_s": round(g.time_s, 6),
                "parse_ok": structure is not None,
                "parse_error": err,
                "cif_file": cif_file,
                "constraint": g.constraint,
            }
            fh.write(json.dumps(rec) + "\n")
            n += 1
            n_parsed += structure is not None
            n_tokens += g.n_tokens
            n_finished += g.finished
    bar.close()
    wall = time.perf_counter() - t0
    partial.replace(out / "samples.jsonl")
    summary = {
        "engine": engine.name,
        "model": cfg.model,
        "n_prompts": len(prompts),
        "n_samples": n,
        "n_parsed": n_parsed,
        "parse_rate": n_parsed / n if n else 0.0,
        "n_finished": n_finished,
        "generated_tokens": n_tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(n_tokens / wall, 2) if wall > 0 else None,
        "samples_per_s": round(n / wall, 3) if wall > 0 else None,
        "constrained": constrained,
        "params": asdict(params),
    }
    atomic_write_json(out / "summary.json", summary)
    log(f"{n} samples ({n_parsed} parse) in {wall:.1f} s, {summary['tokens_per_s']} tokens/s -> {out}")
    return out


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """Read ``samples.jsonl`` (a file or a run folder); a broken line becomes a record with ``parse_error``."""
    p = Path(path)
    if p.is_dir():
        p = p / "samples.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no samples.jsonl (run `cifllm sample` first)")
    out: list[dict[str, Any]] = []
    for i, line in iter_jsonl(p, "samples file"):
        try:
            rec = parse_json(line, f"{p}:{i}")
            if not isinstance(rec, dict):
                raise InputError("not a JSON object")
        except InputError as exc:
            rec = {"sample_id": f"line{i}", "cif_text": "", "parse_error": f"bad_jsonl: {exc}"}
        rec.setdefault("sample_id", f"line{i}")
        if "cif_text" not in rec:
            rec["cif_text"] = strip_conditions(str(rec.get("text", "")))
        out.append(rec)
    return out
