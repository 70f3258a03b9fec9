"""``cifllm bench``: run one discovery task for a model (optionally with a LoRA adapter), comparison models and the
template baseline, resumably, with 95% intervals on every rate.

Rows (generators; names documented in the BENCH.md header, :mod:`cifllm.bench.report`):

* ``base`` - the model as given (``model``), constraint engine ``constrained`` (auto: on for cif-v2 models);
* ``base-unconstrained`` - the same model with the constraint engine off (``constraint_ablation=true``; only when
  ``base`` is constrained);
* one row per ``compare_models`` entry (e.g. ``old-default``), each with its own auto constraint setting;
* ``lora`` / ``lora+cond`` - with the task's ``adapter`` (plain / property prompts);
* ``rl`` - with ``rl_adapter``, an adapter trained by ``cifllm rl`` (plain prompts);
* ``best-of-n`` - the honest baseline of ``rl``: ``best_of_n`` unprompted samples of the base model, of which the
  ``n_denovo`` the *reward* oracle (:class:`~cifllm.bench.oracle.RewardOracle`, training side only, the rl adapter's
  kind) ranks highest
  are kept as the row's de novo samples (:func:`cifllm.bench.screening.best_of_n`); no CSP part;
* ``template`` - element substitution into training prototypes.

For each row:

* **CSP** on ``n_prompts`` test compositions (prompt ``data_<cell formula>``; capped at the test-set size),
  ``n_samples`` each: match@1, match@k and RMSE with ``StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)``; a
  prediction counts only if it is valid; per-prompt results (samples, valid, first matching sample, best RMSE).
* **De novo**: ``n_denovo`` unconditioned samples (BOS only): validity, uniqueness, novelty against the task's training
  side (train + val + its pretraining corpus, MatterGen tolerances ltol 0.2, stol 0.3, angle 5); per bucket of sites
  per cell and of number of elements (:mod:`cifllm.bench.stats`) next to the reference's share, and a size-matched
  validity. For a model row without adapter these samples do not depend on the task: they are sampled once and shared
  by every task (:class:`cifllm.bench.rows.SharedDenovo`).
* **Rediscovery**: share of held-out test structures matched (novelty tolerances) by at least one valid sample among
  the first N of all samples (CSP + de novo), reported for a range of N.
* **Property** (Case 2): an oracle (:mod:`cifllm.bench.oracle`) trained on all rows carrying the property (the test
  tail included; accuracy on a held-out 20% reported) scores valid novel samples; hit rate = share of them predicted
  above the task's threshold; conditioned rows: Spearman rho of asked vs predicted with a bootstrap interval.
  Champion rate: share of the valid, novel *de novo* samples the oracle places above the threshold (Wilson
  interval), with the unique compositions among those champions.
* **Throughput**: sampling wall seconds, tokens, tokens/s, valid CIFs per second of sampling (measured when the row
  was sampled and kept with it).

Every rate is ``{count, n, rate, ci95}`` (Wilson 95%) under the section's ``rates``; the plain float keys
(``match@1``, ``valid``, ...) stay for readers of the older layout. Each row is saved under ``<out>/<task>/rows/``
as soon as it is sampled and again when scored (:mod:`cifllm.bench.rows`): a rerun with the same settings loads it.
``stage=generate`` only samples (for a sampling environment without the scoring packages). Writes
``<out>/<task>/metrics.json``, ``<out>/<task>/per_prompt.md`` and refreshes ``<out>/BENCH.md``.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cifllm.bench.baselines import TemplateBaseline
from cifllm.bench.oracle import PropertyOracle, RewardOracle
from cifllm.bench.report import render_bench_md, render_per_prompt_md
from cifllm.bench.rows import RESERVED_ROWS, ROW_FORMAT, RowJournal, RowStore, SharedDenovo, digest, folder_fingerprint
from cifllm.bench.screening import best_of_n
from cifllm.bench.splits import load_split
from cifllm.bench.stats import (
    ELEMENT_BUCKETS,
    SITE_BUCKETS,
    bootstrap_spearman,
    rate,
    reference_shares,
    size_buckets,
    size_matched_validity,
)
from cifllm.bench.tasks import TaskSpec, load_task
from cifllm.conditioning import format_property_lines, property_values
from cifllm.core.config import ConfigError, save_config
from cifllm.core.models import ModelNotFoundError, resolve_model
from cifllm.core.records import BENCH_SUMMARY, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, read_adapter_record
from cifllm.core.sampling import SAMPLING
from cifllm.data.corpus import load_corpus
from cifllm.evaluation.matching import ReferenceIndex, csp_match_task, csp_metrics, novelty_task
from cifllm.evaluation.run import evaluate_texts, summarize
from cifllm.evaluation.stability import HullReference, StabilitySettings, run_stability, summarize_stability
from cifllm.sampling.constraints import ConstraintConfig
from cifllm.sampling.engines import EngineError, GenerationParams, check_constrained
from cifllm.sampling.generation import generate, load_engine, resolve_constrained
from cifllm.sampling.prompts import Prompt, strip_conditions
from cifllm.tokenization import load_tokenizer, tokenizer_fingerprint
from cifllm.utils import atomic_write_json, atomic_write_text, sha256_file
from cifllm.utils.limits import map_with_time_limit

__all__ = ["BenchConfig", "RESERVED_ROWS", "RowSpec", "run_bench", "render_bench_md"]

_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class BenchConfig:
    """Budgets: 0 means the task file's default."""

    task: str = "id_random"  #: task name (eval/tasks/<task>.yaml) or task YAML path
    model: str = ""  #: model of the model rows: 'default', a save_pretrained folder or a Hub id; empty = template baseline only
    adapter: str | None = None  #: LoRA adapter folder for the lora rows (trained on `model`); null = no lora rows
    splits: str = "data/tasks"  #: folder of task splits (`cifllm split` output)
    corpus: str = "data/corpus"  #: corpus folder the splits were built from
    out: str = "results"  #: results folder: <task>/rows/, <task>/metrics.json, BENCH.md
    #: CSP prompts (test compositions); 0 = the task's default; capped at the task's test-set size
    n_prompts: int = 0
    #: samples per CSP prompt (k of match@k); 0 = the task's default
    n_samples: int = 0
    #: unconditioned de novo samples per model row; 0 = the task's default
    n_denovo: int = 0
    max_new_tokens: int = SAMPLING.max_new_tokens  #: most tokens generated per sample
    temperature: float = SAMPLING.temperature  #: sampling temperature; 0 = greedy
    top_k: int = SAMPLING.top_k  #: top-k sampling; 0 = off
    batch_size: int = 32  #: sequences per generate call
    seed: int = 0  #: sampling seed
    threads: int = 1  #: torch CPU threads of the sampling engine
    workers: int = 1  #: processes for checks and matching; 0 = in this process
    time_limit_s: float = 30.0  #: seconds per sample and scoring step (over it: a timeout verdict)
    template_baseline: bool = True  #: add the template baseline row (element substitution into training structures of the same anonymized formula)
    stability: bool = False  #: relax de novo samples with CHGNet, E_hull vs the task's reference (needs the mlip extra)
    stability_cache: str | None = None  #: folder of relaxation + hull caches; null = <out>/<task>/stability_cache
    stability_potential: str | None = None  #: universal potential of the stability relaxations: chgnet or sevennet; null = chgnet
    stability_hull: str | None = None  #: reference (the task's reference relaxed with the potential) or dft (the DFT-anchored hull); null = reference
    engine: Literal["hf", "vllm"] = "hf"  #: sampling engine of the model rows: hf or vllm
    gpu_memory_utilization: float = 0.5  #: engine=vllm: share of GPU memory for weights + KV cache
    #: the constraint engine for the model rows: true / false, null = auto (on for cif-v2 models, off for cif-v1)
    constrained: bool | None = None
    #: extra model rows, row name -> save_pretrained folder, each sampled with its own auto constraint setting
    #: (cif-v1 models unconstrained); on the command line: 'compare_models={old-default: runs/default-v1}'
    compare_models: dict[str, str] = field(default_factory=dict)
    #: add a base-unconstrained row (the model with the constraint engine off) next to base (auto = constrained)
    constraint_ablation: bool = False
    #: all = sample, score and report; generate = only sample the rows and save them (rows/<row>.samples.jsonl),
    #: for a sampling environment without the scoring packages (make bench runs it from .venv-vllm first)
    stage: Literal["all", "generate"] = "all"
    #: sample/score only these rows of the plan (names: base, base-unconstrained, a compare_models name, lora,
    #: lora+cond, template); empty = every row. The other rows of the plan are still reported when they are saved as
    #: scored with the same settings, so a long bench can be split across runs; on the command line: rows=[base,template]
    rows: list[str] = field(default_factory=list)
    #: property values the lora+cond row's de novo samples ask for (the task's first conditioning property, its
    #: units), n_denovo / len(cond_asked) samples each; empty = the test tail's 10/50/90% quantiles and maximum.
    #: In-range values show whether the adapter follows its property line at all; on the command line: cond_asked=[1,5,9]
    cond_asked: list[float] = field(default_factory=list)
    #: adapter trained by `cifllm rl` for the ``rl`` row ('{task}' is replaced by the task name; a missing folder with
    #: '{task}' means no rl row for that task); null = no rl row
    rl_adapter: str | None = None
    #: base-model de novo samples screened by the reward oracle for the ``best-of-n`` row (n_denovo kept); 0 = no row;
    #: -1 = equal sampling compute with the rl adapter: its recorded rollout_samples + n_denovo
    best_of_n: int = 0


@dataclass(frozen=True)
class RowSpec:
    """One generator of a task: a model (with adapter / conditioning) or the template baseline."""

    name: str
    kind: Literal["model", "template"]
    model: str = ""
    adapter: str | None = None
    constrained: bool = False
    conditioned: bool = False
    screen_n: int = 0  # best-of-n: unprompted samples screened by the reward oracle (0 = not a screening row)

    @property
    def shares_denovo(self) -> bool:
        """Unprompted samples of a model without adapter: the same for every task."""
        return self.kind == "model" and self.adapter is None and not self.conditioned and not self.screen_n


@dataclass
class _Task:
    """What the rows of one task are sampled and scored against."""

    spec: TaskSpec
    manifest: dict[str, Any]
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    prompts: list[str]
    n_samples: int
    n_denovo: int
    cond_names: tuple[str, ...] = ()


def _check_model(path: str, what: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a save_pretrained model folder ({what})")
    tok = load_tokenizer(path)
    if tokenizer_fingerprint(tok.backend_tokenizer) != tokenizer_fingerprint():
        raise ValueError(f"{path}: its tokenizer does not match this cifllm's tokenizer ({what})")


def _resolve(name: str, what: str) -> str:
    """The model folder of ``name`` (:func:`cifllm.core.models.resolve_model`), its error naming the config key."""
    try:
        return str(resolve_model(name))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{what}: {exc}") from None


def plan_rows(cfg: BenchConfig, cond_names: tuple[str, ...], log: Callable[[str], None]) -> list[RowSpec]:
    """The rows of a task in report order: base, base-unconstrained, compare models, lora, lora+cond, template."""
    rows: list[RowSpec] = []
    for name, path in cfg.compare_models.items():
        if not isinstance(path, str) or not path:
            raise ConfigError(f"compare_models.{name}: expected a model folder path, got {path!r}")
        if name in RESERVED_ROWS or not _ROW_NAME.match(name):
            raise ConfigError(f"compare_models: row name {name!r} must be 1-40 of [A-Za-z0-9_.-] and none of {list(RESERVED_ROWS)}")
    model = _resolve(cfg.model, "model") if cfg.model else ""  # 'default', a folder or a Hub id, as in every stage
    if model:
        _check_model(model, "model")
        on = resolve_constrained(cfg.constrained, model, log=log)
        rows.append(RowSpec("base", "model", model, constrained=on))
        if cfg.constraint_ablation:
            if on:
                rows.append(RowSpec("base-unconstrained", "model", model, constrained=False))
            else:
                log("constraint_ablation: base is already unconstrained, so there is no base-unconstrained row")
    for name, given in cfg.compare_models.items():
        path = _resolve(given, f"compare_models.{name}")
        _check_model(path, f"compare_models.{name}")
        rows.append(RowSpec(name, "model", path, constrained=resolve_constrained(None, path, log=lambda m, n=name: log(f"{n}: {m}"))))
    if model and cfg.adapter:
        on = rows[0].constrained
        rows.append(RowSpec("lora", "model", model, adapter=cfg.adapter, constrained=on))
        if cond_names:
            rows.append(RowSpec("lora+cond", "model", model, adapter=cfg.adapter, constrained=on, conditioned=True))
    if cfg.model and cfg.rl_adapter:
        rows.append(RowSpec("rl", "model", model, adapter=cfg.rl_adapter, constrained=rows[0].constrained))
    if cfg.model and cfg.best_of_n:
        n = cfg.best_of_n
        if n < 0:
            if not cfg.rl_adapter:
                raise ConfigError("best_of_n=-1 (equal compute with the rl adapter) needs rl_adapter")
            n = int(read_adapter_record(cfg.rl_adapter).get("rollout_samples") or 0) + max(1, cfg.n_denovo)
        rows.append(RowSpec("best-of-n", "model", model, constrained=rows[0].constrained, screen_n=n))
    elif cfg.best_of_n and not cfg.model:
        log("best_of_n: no model given, so there is no best-of-n row")
    if cfg.template_baseline:
        rows.append(RowSpec("template", "template"))
    return rows


# --- sampling ----------------------------------------------------------------------------------------------------


class _ModelSampler:
    """One model row's engine, loaded on first use; every call goes through :func:`generate`."""

    def __init__(self, spec: RowSpec, cfg: BenchConfig, log: Callable[[str], None]) -> None:
        self.spec, self.cfg, self.log = spec, cfg, log
        self.engine: Any = None
        self.load_s = 0.0

    def run(self, prompts: list[str], counts: list[int], journal: RowJournal | None = None, part: str = "csp") -> tuple[list[list[tuple[str, int, str]]], float, int, int]:
        """Per prompt its samples in order as (full text = prompt + continuation, generated tokens, error); sampling
        wall seconds (engine loading excluded); tokens generated; prompts not sampled. A constrained row samples only
        the prompts the constraint engine can continue within ``max_new_tokens`` (a cell with more atoms than that
        budget allows cannot be started): the others get ``counts[i]`` empty samples with the engine's reason, which
        the checks count as invalid. With a ``journal`` every sample is logged as it comes (under ``part``) and the
        prompts whose samples are all logged already are taken from it, not sampled again (their seconds: the logged
        shares of their batches' wall time); the other prompts keep the seeds of an uninterrupted run on vLLM (the HF
        engine seeds per batch, so its resumed draws differ)."""
        cfg = self.cfg
        if not prompts:
            return [], 0.0, 0, 0
        done = journal.done(part, counts) if journal else {}
        got: list[list[tuple[int, str, int, str]]] = [[] for _ in prompts]
        resumed_s = 0.0
        for i, recs in done.items():
            got[i] = [(int(r["sample_index"]), r["text"], int(r["n_tokens"] or 0), r.get("error") or "") for r in recs]
            resumed_s += sum(float(r.get("time_s") or 0.0) for r in recs)
        if done:
            self.log(f"row {self.spec.name}: {part}: {len(done)} of {len(prompts)} prompts taken from the journal")
        pending = [i for i in range(len(prompts)) if i not in done]
        if not pending:
            out = [[(txt, n, err) for _, txt, n, err in sorted(x)] for x in got]
            return out, resumed_s, sum(n for x in out for _, n, _ in x), 0
        if self.engine is None:
            t = time.perf_counter()
            self.engine, _ = load_engine(
                self.spec.model, cfg.engine, self.spec.constrained, log=self.log, threads=cfg.threads, lora=self.spec.adapter,
                seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization,
            )
            self.load_s += time.perf_counter() - t
        params = GenerationParams(num_samples=max(counts), temperature=cfg.temperature, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)
        ps = [Prompt(text=p, kind="prefix", id=str(i)) for i, p in enumerate(prompts)]
        skipped: dict[int, str] = {}
        if self.spec.constrained:
            for i in pending:
                try:
                    check_constrained(self.spec.model, self.engine.tokenizer, [ps[i]], replace(params, constrained=True))
                except EngineError as exc:
                    skipped[i] = str(exc)
        if skipped:
            first = next(iter(skipped.values()))
            self.log(f"row {self.spec.name}: {len(skipped)} of {len(prompts)} prompts cannot be started by the constraint engine at max_new_tokens={cfg.max_new_tokens}; their samples count as invalid (first: {first})")
        for i, why in skipped.items():
            got[i] = [(k, "", 0, why) for k in range(counts[i])]
        # every startable prompt stays in the list (done ones with 0 samples) so each sample keeps its seed
        keep = [i for i in range(len(prompts)) if i not in skipped]
        want = [0 if i in done else counts[i] for i in keep]
        n_want, n_got = sum(want), 0
        step = max(1, n_want // 10)
        t = time.perf_counter()
        if any(want):
            gens = generate([ps[i] for i in keep], replace(params, num_samples=max(want)), engine=self.engine, constrained=self.spec.constrained, counts=want, log=self.log)
            for g in gens:
                i = keep[g.prompt_index]
                text = prompts[i] + g.text if not g.error else ""
                got[i].append((g.sample_index, text, int(g.n_tokens), g.error))
                if journal:
                    journal.append({"part": part, "prompt_index": i, "sample_index": g.sample_index, "text": text, "n_tokens": int(g.n_tokens), "error": g.error, "time_s": round(g.time_s, 6)})
                n_got += 1
                if n_got % step == 0 or n_got == n_want:
                    self.log(f"row {self.spec.name}: {part}: {n_got} of {n_want} samples ({time.perf_counter() - t:.0f} s)")
        seconds = time.perf_counter() - t + resumed_s
        out = [[(txt, n, err) for _, txt, n, err in sorted(x)] for x in got]
        return out, seconds, sum(n for x in out for _, n, _ in x), len(skipped)


def _engine_settings() -> dict[str, Any]:
    """The constraint engine's settings (geometry guard included) that a constrained row is sampled with."""
    plain = json.loads(json.dumps(asdict(ConstraintConfig())))  # tuples as lists: compared with the saved JSON
    return {k: v for k, v in plain.items() if k != "max_tokens"}


def _gen_fingerprint(spec: RowSpec, td: _Task, cfg: BenchConfig) -> dict[str, Any]:
    fp: dict[str, Any] = {
        "row": spec.name, "kind": spec.kind, "split": digest(td.manifest.get("files_sha256")), "n_prompts": len(td.prompts),
        "n_samples": td.n_samples, "n_denovo": td.n_denovo, "seed": cfg.seed,
    }
    if spec.kind == "model":
        fp.update(
            model=spec.model, model_sha=folder_fingerprint(spec.model), adapter=spec.adapter,
            adapter_sha=folder_fingerprint(spec.adapter) if spec.adapter else None, constrained=spec.constrained,
            constraint_settings=_engine_settings() if spec.constrained else None, conditioning=list(td.cond_names) if spec.conditioned else None, engine=cfg.engine,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, batch_size=cfg.batch_size,
        )
        if spec.conditioned and cfg.cond_asked:  # only when set: rows saved before this key existed keep their fingerprint
            fp["cond_asked"] = [float(x) for x in cfg.cond_asked]
        if spec.screen_n:
            fp["screen_n"] = spec.screen_n
            fp["screen_oracle"] = _screen_oracle_kind(cfg)
    return fp


def _screen_oracle_kind(cfg: BenchConfig) -> str:
    """The reward-oracle kind best-of-n screens with: the rl adapter's (its recorded ``reward_oracle``), else the default."""
    rec = read_adapter_record(cfg.rl_adapter) if cfg.rl_adapter else {}
    return str((rec.get("config") or {}).get("reward_oracle") or "extra_trees")


def _denovo_key(spec: RowSpec, cfg: BenchConfig, n: int) -> dict[str, Any]:
    return {
        "prompt": "", "model": spec.model, "model_sha": folder_fingerprint(spec.model), "constrained": spec.constrained, "engine": cfg.engine,
        "constraint_settings": _engine_settings() if spec.constrained else None,
        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k, "batch_size": cfg.batch_size, "n": n, "seed": cfg.seed,
    }


def _sample_row(spec: RowSpec, td: _Task, cfg: BenchConfig, log: Callable[[str], None], journal: RowJournal | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample one row: the sample records (see :mod:`cifllm.bench.rows`) and the sampling record (throughput). A
    model row logs its samples to ``journal`` as they come and resumes from it."""
    recs: list[dict[str, Any]] = []

    def add(kind: str, i: int | None, k: int, text: str, n_tokens: int | None, asked: float | None = None, error: str = "") -> None:
        recs.append({"kind": kind, "prompt_index": i, "sample_index": k, "text": strip_conditions(text), "n_tokens": n_tokens, "asked": asked, **({"error": error} if error else {})})

    if spec.kind == "template":
        t = time.perf_counter()
        tb = TemplateBaseline([r["text"] for r in td.train], seed=cfg.seed)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        csp = [tb.csp(p[5:].strip(), td.n_samples) for p in td.prompts]
        dn = tb.denovo(td.n_denovo)
        seconds = time.perf_counter() - t
        for i, ts in enumerate(csp):
            for k, x in enumerate(ts):
                add("csp", i, k, x, None)
        for k, x in enumerate(dn):
            add("denovo", None, k, x, None)
        return recs, {"engine": "template", "constrained": False, "seconds": round(seconds, 3), "load_seconds": round(load_s, 3), "tokens": None, "n_samples": len(recs), "denovo": {"source": "generated"}}

    sampler = _ModelSampler(spec, cfg, log)
    csp_prompts, dn_prompts, asked = list(td.prompts), [""], [None]
    per = td.n_denovo
    if spec.screen_n:  # best-of-n: only the unprompted pool; screened when scored (the reward oracle needs scoring packages)
        csp_prompts, per = [], spec.screen_n
    if spec.conditioned:
        csp_prompts, dn_prompts, asked = _conditioned_prompts(td, cfg.cond_asked)
        per = max(1, td.n_denovo // max(1, len(asked)))
    csp, seconds, tokens, infeasible = sampler.run(csp_prompts, [td.n_samples] * len(csp_prompts), journal, "csp")
    for i, ts in enumerate(csp):
        for k, (x, n, err) in enumerate(ts):
            add("csp", i, k, x, n, error=err)
    dn_info: dict[str, Any]
    shared = SharedDenovo(cfg.out) if spec.shares_denovo else None
    key = _denovo_key(spec, cfg, td.n_denovo) if shared else None
    hit = shared.get(key) if shared and key else None
    if hit is not None:
        dn_recs, meta = hit
        dn_info = {"source": "shared cache", "file": str(shared.paths(key)[0]), "seconds": meta.get("seconds"), "tokens": meta.get("tokens")}  # type: ignore[union-attr,arg-type]
        log(f"row {spec.name}: {len(dn_recs)} de novo samples from the shared cache {dn_info['file']}")
    else:
        dn, dn_s, dn_tok, _ = sampler.run(dn_prompts, [per] * len(dn_prompts), journal, "denovo")
        dn_recs = [{"prompt_index": j if spec.conditioned else None, "sample_index": k, "text": x, "n_tokens": n, "asked": asked[j], "error": err} for j, ts in enumerate(dn) for k, (x, n, err) in enumerate(ts)]
        dn_info = {"source": "generated", "seconds": round(dn_s, 3), "tokens": dn_tok}
        if shared and key:
            dn_info["file"] = str(shared.put(key, dn_recs, {"seconds": round(dn_s, 3), "tokens": dn_tok, "load_seconds": round(sampler.load_s, 3)}))
    for r in dn_recs:
        add("denovo", r["prompt_index"], r["sample_index"], r["text"], r["n_tokens"], r["asked"], r.get("error") or "")
    dn_s, dn_tok = dn_info.get("seconds"), dn_info.get("tokens")
    total_s = seconds + dn_s if dn_s is not None else None
    total_tok = tokens + dn_tok if dn_tok is not None else None
    return recs, {
        "engine": cfg.engine, "constrained": spec.constrained, "seconds": round(total_s, 3) if total_s is not None else None,
        "csp_seconds": round(seconds, 3), "load_seconds": round(sampler.load_s, 3), "tokens": total_tok, "n_samples": len(recs),
        "csp_prompts_not_started": infeasible, "denovo": dn_info,
        "lora_merged": getattr(sampler.engine, "lora_merged", None) if spec.adapter else None,
    }


def _conditioned_prompts(td: _Task, cond_asked: list[float] | None = None) -> tuple[list[str], list[str], list[float | None]]:
    """Conditioned prompts: each CSP target with its own (test-tail) property values; de novo samples asked for
    ``cond_asked``, or (empty) values across the test tail (its 10/50/90% quantiles and maximum)."""
    task, names = td.spec, td.cond_names
    csp_p = []
    for t, p in zip(td.targets, td.prompts, strict=True):
        vals = property_values(t, names, task.property or None)
        csp_p.append("".join(ln + "\n" for ln in format_property_lines(vals)) + p)
    main = names[0]
    tail = np.asarray([v for r in td.test for v in [property_values(r, (main,), task.property or None).get(main)] if v is not None])
    if cond_asked:
        asked = sorted({float(x) for x in cond_asked})
    else:
        asked = sorted({float(x) for x in np.quantile(tail, [0.1, 0.5, 0.9])} | {float(tail.max())}) if tail.size else []
    dn_p = ["".join(ln + "\n" for ln in format_property_lines({main: a})) for a in asked]
    return csp_p, dn_p, list(asked)


# --- scoring -----------------------------------------------------------------------------------------------------


@dataclass
class _Scoring:
    """Per-task scoring context (stage ``all`` only)."""

    ref: ReferenceIndex
    ref_sizes: dict[str, Any]
    oracle: PropertyOracle | None
    threshold: float | None
    fingerprint: dict[str, Any]
    reward_oracle: RewardOracle | None = None  # best-of-n screening: trained on the training side only


def _verdict_summary(v: dict[str, Any]) -> dict[str, Any]:
    return {k: v.get(k) for k in ("valid", "reason", "reduced_formula", "n_sites", "n_elements", "unique", "novel")}


def _screen(spec: RowSpec, td: _Task, recs: list[dict[str, Any]], sc: _Scoring) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """best-of-n: the pool's reward-oracle predictions, the top ``n_denovo`` kept as the row's de novo samples (the
    others stay in the records as kind ``pool``); returns the records and the screening summary."""
    if sc.reward_oracle is None:
        raise ConfigError(f"row {spec.name}: screening needs a Case-2 task with a property oracle (metrics: property)")
    pool = [i for i, r in enumerate(recs) if r["kind"] in ("denovo", "pool")]
    preds = sc.reward_oracle.predict([recs[i]["text"] for i in pool])
    keep = {pool[j] for j in best_of_n([float(p) for p in preds], td.n_denovo)}
    out = []
    for j, i in enumerate(pool):
        out.append({**recs[i], "kind": "denovo" if i in keep else "pool", "reward_pred": float(preds[j]) if preds[j] == preds[j] else None})
    scored = sum(1 for p in preds if p == p)
    return out, {"n_pool": len(pool), "n_kept": len(keep), "n_reward_scored": scored, "reward_oracle": sc.reward_oracle.description}


def _score(spec: RowSpec, td: _Task, recs: list[dict[str, Any]], sc: _Scoring, cfg: BenchConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one row's samples; returns the row's metrics and the sample records with their verdict summaries."""
    screening = None
    if spec.screen_n:
        recs, screening = _screen(spec, td, recs, sc)
    csp_idx = [i for i, r in enumerate(recs) if r["kind"] == "csp"]
    dn_idx = [i for i, r in enumerate(recs) if r["kind"] == "denovo"]
    by_prompt: list[list[int]] = [[] for _ in td.prompts]
    for i in csp_idx:
        by_prompt[recs[i]["prompt_index"]].append(i)
    order = [i for ids in by_prompt for i in ids] + dn_idx  # generation order: CSP by prompt, then de novo
    texts = [recs[i]["text"] for i in order]
    verd_list = evaluate_texts(texts, workers=cfg.workers, time_limit_s=cfg.time_limit_s, reference=sc.ref)
    verd = dict(zip(order, verd_list, strict=True))
    out_recs = [dict(r) for r in recs]
    for i, v in verd.items():
        out_recs[i].update(_verdict_summary(v))
    res: dict[str, Any] = {"generator": spec.name, "spec": {"kind": spec.kind, "model": spec.model or None, "adapter": spec.adapter, "constrained": spec.constrained}}
    if screening is not None:
        res["screening"] = screening
    k = td.n_samples
    if td.prompts and csp_idx:
        items = [(td.targets[p]["text"], [recs[i]["text"] if verd[i]["valid"] else None for i in ids]) for p, ids in enumerate(by_prompt)]
        rms: list[list[float | None]] = [[] for _ in items]
        for p, r in map_with_time_limit(csp_match_task, items, lambda it: cfg.time_limit_s * max(1, len(it[1])), cfg.workers, on_failure=lambda it, why, d: [None] * len(it[1])):
            rms[p] = r
        for p, ids in enumerate(by_prompt):
            for i, x in zip(ids, rms[p], strict=True):
                out_recs[i]["rms"] = x
        m = csp_metrics({str(p): r for p, r in enumerate(rms)}, sorted({1, k}))
        n_valid = sum(bool(verd[i]["valid"]) for i in csp_idx)
        per_prompt = []
        for p, ids in enumerate(by_prompt):
            hits = [j for j, x in enumerate(rms[p]) if x is not None]
            per_prompt.append({
                "index": p, "formula": td.prompts[p][5:].strip(), "target_id": td.targets[p].get("id"), "n_samples": len(ids),
                "n_valid": sum(bool(verd[i]["valid"]) for i in ids), "matched": bool(hits), "first_match": hits[0] if hits else None,
                "best_rmse": min(x for x in rms[p] if x is not None) if hits else None,
            })
        res["csp"] = {
            **m, "n_prompts": len(td.prompts), "samples_per_prompt": k, "n_csp_samples": len(csp_idx),
            "validity": n_valid / len(csp_idx) if csp_idx else None,
            "rates": {"match@1": rate(m["n_matched@1"], len(td.prompts)), f"match@{k}": rate(m[f"n_matched@{k}"], len(td.prompts)), "validity": rate(n_valid, len(csp_idx))},
            "per_prompt": per_prompt,
        }
    if dn_idx:
        v_dn = [verd[i] for i in dn_idx]
        s = summarize(v_dn)
        n = len(dn_idx)
        c = s["counts"]
        valid = [bool(v["valid"]) for v in v_dn]
        sites = size_buckets([v.get("n_sites") for v in v_dn], valid, SITE_BUCKETS)
        elems = size_buckets([v.get("n_elements") for v in v_dn], valid, ELEMENT_BUCKETS)
        res["denovo"] = {
            "n": n, **{x: s["rates"][x] for x in ("valid", "unique", "novel", "unique_novel")},
            "rates": {x: rate(c[x], n) for x in ("valid", "unique", "novel", "unique_novel")},
            "size_matched_valid": size_matched_validity(sites, sc.ref_sizes["sites"]["shares"]),
            "sizes": {"sites": sites, "elements": elems},
        }
        if cfg.stability:
            res["denovo"]["stability"] = _stability(td.spec, spec.name, [recs[i]["text"] for i in dn_idx], v_dn, sc.ref, cfg)
    # rediscovery over all valid samples, in generation order (CSP first, then de novo)
    by_formula: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for pos, (t, v) in enumerate(zip(texts, verd_list)):
        if v["valid"]:
            by_formula[v["reduced_formula"]].append((pos, t))
    first_hit: list[int] = []
    for row in td.test:
        for pos, t in by_formula.get(row["reduced_formula"], []):
            if novelty_task((t, [row["text"]])) == 0:
                first_hit.append(pos)
                break
    n_total = len(texts)
    grid = sorted({max(1, n_total // 8), max(1, n_total // 4), max(1, n_total // 2), max(1, n_total)})
    n_test = len(td.test)
    res["rediscovery"] = {
        "n_test": n_test,
        "curve": {str(g): sum(1 for h in first_hit if h < g) / max(1, n_test) for g in grid},  # N samples -> rate
        "rate": len(first_hit) / max(1, n_test),
        "rates": {"rate": rate(len(first_hit), n_test)},
    }
    if sc.oracle is not None and sc.threshold is not None:
        novel_valid = [t for t, v in zip(texts, verd_list) if v["valid"] and v.get("novel") is not False]
        preds = sc.oracle.predict(novel_valid) if novel_valid else []
        finite = [float(p) for p in preds if p == p]
        hits = sum(p > sc.threshold for p in finite)
        res["property"] = {
            "n_scored": len(finite),
            "hit_rate": (hits / len(finite)) if finite else None,
            "median_pred": (sorted(finite)[len(finite) // 2] if finite else None),
            "threshold": sc.threshold,
            "unit": td.spec.unit,
            "rates": {"hit_rate": rate(hits, len(finite))},
        }
        dn_set = set(dn_idx)
        champ_pool = [(texts[p], v) for p, (i, v) in enumerate(zip(order, verd_list)) if i in dn_set and v["valid"] and v.get("novel") is not False]
        cp = sc.oracle.predict([t for t, _ in champ_pool]) if champ_pool else []
        champs = [v.get("reduced_formula") for (_, v), p in zip(champ_pool, cp) if p == p and p > sc.threshold]
        res["property"]["champion_rate"] = len(champs) / len(champ_pool) if champ_pool else None
        res["property"]["champions"] = {"n": len(champs), "n_valid_novel_denovo": len(champ_pool), "n_denovo": len(dn_idx),
                                        "unique_compositions": len(set(champs)) / len(champs) if champs else None}
        res["property"]["rates"]["champion_rate"] = rate(len(champs), len(champ_pool))
        if spec.conditioned:
            asked = [recs[i]["asked"] for i in order]
            res["property"]["response"] = _conditioning_response(texts, verd_list, asked, sc.oracle, sc.threshold, cfg.seed)
    return res, out_recs


def _stability(task: TaskSpec, name: str, denovo: list[str], verd: list[dict], ref: ReferenceIndex, cfg: BenchConfig) -> dict[str, Any]:
    """Stability of the de novo samples (:mod:`cifllm.evaluation.stability`): the hull references are the task's
    novelty reference (what the model may have seen), relaxed with the same potential; rates over all de novo samples."""
    settings = StabilitySettings(workers=cfg.workers, time_limit_s=max(cfg.time_limit_s, 300.0))
    cache = Path(cfg.stability_cache) if cfg.stability_cache else Path(cfg.out) / task.name / "stability_cache"
    recs, stats = run_stability(denovo, [f"{name}:{i}" for i in range(len(denovo))], verd, HullReference.from_index(ref), settings, cache)
    st = summarize_stability(recs, verd, settings, stats)
    return {k: st[k] for k in ("n_samples", "n_e_hull", "rates", "reasons", "e_above_hull", "rmsd_A", "run")}


def _conditioning_response(texts: list[str], verd: list[dict], asked: list[float | None], oracle: PropertyOracle, threshold: float, seed: int) -> dict[str, Any]:
    """Does asking for a value move the generated property? Per asked value (de novo samples): valid samples, their
    median oracle prediction and hit rate; Spearman rho between asked and predicted over all of them, with a seeded
    bootstrap 95% interval (:func:`cifllm.bench.stats.bootstrap_spearman`)."""
    pairs = [(a, t) for t, v, a in zip(texts, verd, asked) if a is not None and v["valid"]]
    if not pairs:
        return {"n_scored": 0, "spearman_asked_vs_predicted": None, "spearman": bootstrap_spearman([], [], seed=seed)}
    preds = oracle.predict([t for _, t in pairs])
    by: dict[float, list[float]] = defaultdict(list)
    xs, ys = [], []
    for (a, _), p in zip(pairs, preds):
        if p == p:
            by[a].append(float(p))
            xs.append(a)
            ys.append(float(p))
    table = {
        f"{a:g}": {"n_valid": len(ps), "median_pred": sorted(ps)[len(ps) // 2], "hit_rate": sum(p > threshold for p in ps) / len(ps)}
        for a, ps in sorted(by.items())
    }
    sp = bootstrap_spearman(xs, ys, seed=seed)
    return {"n_scored": len(xs), "by_asked_value": table, "spearman_asked_vs_predicted": sp["rho"], "spearman": sp}


def _throughput(sampling: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Add tokens/s and valid CIFs/s (of sampling wall time) to a row's sampling record."""
    s, tok = sampling.get("seconds"), sampling.get("tokens")
    n_valid = 0
    c, dn = row.get("csp") or {}, row.get("denovo") or {}
    if c:
        n_valid += c["rates"]["validity"]["count"]
    if dn:
        n_valid += dn["rates"]["valid"]["count"]
    return {
        **sampling, "n_valid": n_valid,
        "tokens_per_s": tok / s if tok is not None and s else None,
        "valid_per_s": n_valid / s if s else None,
    }


# --- the task ----------------------------------------------------------------------------------------------------


def _load_task(cfg: BenchConfig, log: Callable[[str], None]) -> tuple[_Task, Path]:
    task = load_task(cfg.task)
    d = Path(cfg.splits) / task.name
    if not (d / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{d}: no split for task {task.name}; build it with `cifllm split --task {task.name}`")
    man = json.loads((d / MANIFEST_FILE).read_text())
    train = load_split(d, "train") + load_split(d, "val")
    test = load_split(d, "test")
    want = cfg.n_prompts or task.n_prompts
    n_prompts = min(want, len(test))
    if n_prompts < want:
        log(f"n_prompts {want} capped at the test-set size: {n_prompts} CSP prompts")
    targets = test[:n_prompts]
    cond: tuple[str, ...] = ()
    if cfg.model and cfg.adapter:
        trained = read_adapter_record(cfg.adapter).get("conditioning") or {}
        cond = tuple(n for n in task.conditioning if n in trained)
        if task.conditioning and not cond:
            log(f"the adapter was not trained with the task's conditioning {list(task.conditioning)}: no lora+cond row")
    td = _Task(
        spec=task, manifest=man, train=train, test=test, targets=targets, prompts=[t["text"].split("\n", 1)[0] + "\n" for t in targets],
        n_samples=cfg.n_samples or task.n_samples, n_denovo=cfg.n_denovo or task.n_denovo, cond_names=cond,
    )
    return td, d


def _scoring(cfg: BenchConfig, td: _Task, d: Path) -> tuple[_Scoring, dict[str, Any]]:
    """The novelty reference (corpus minus the task's exclusions: what the model may have seen), its size
    distribution, and the property oracle (Case 2); plus the oracle's accuracy record (or None)."""
    excl = set((d / "pretrain_exclude.txt").read_text().split())
    ds = load_corpus(cfg.corpus).select_columns(["id", "text", "reduced_formula", "n_sites", "n_elements"])
    keep = [i for i, x in enumerate(ds["id"]) if x not in excl]
    ids, texts, formulas = ds["id"], ds["text"], ds["reduced_formula"]
    ref = ReferenceIndex.from_records([texts[i] for i in keep], [formulas[i] for i in keep], [ids[i] for i in keep])
    n_sites, n_el = ds["n_sites"], ds["n_elements"]
    sizes = {"n": len(keep), "sites": reference_shares([n_sites[i] for i in keep], SITE_BUCKETS), "elements": reference_shares([n_el[i] for i in keep], ELEMENT_BUCKETS)}
    oracle, orc = None, None
    threshold = td.manifest["rule"].get("threshold")
    if "property" in td.spec.metrics and threshold is not None:
        rows = [r for r in td.train + td.test if r.get("value") is not None]
        oracle = PropertyOracle(log_target=td.spec.property in ("tc", "thermal_conductivity"), seed=cfg.seed)
        orc = asdict(oracle.fit([r["text"] for r in rows], [r["value"] for r in rows], threshold))
    manifest = Path(cfg.corpus) / MANIFEST_FILE
    fp = {
        "format": ROW_FORMAT, "corpus": str(cfg.corpus), "corpus_manifest": sha256_file(manifest) if manifest.is_file() else None,
        "time_limit_s": cfg.time_limit_s, "stability": cfg.stability, "seed": cfg.seed,
    }
    reward_oracle = None
    if oracle is not None and cfg.best_of_n:
        lab = [r for r in td.train if r.get("value") is not None]
        reward_oracle = RewardOracle(log_target=oracle.log_target, seed=cfg.seed, kind=_screen_oracle_kind(cfg))  # the rl run's: a fair screen
        reward_oracle.fit([r["text"] for r in lab], [r["value"] for r in lab], threshold)
    return _Scoring(ref, sizes, oracle, threshold, fp, reward_oracle), orc or {}


def _records_complete(recs: list[dict[str, Any]], n_prompts: int) -> bool:
    return all(r.get("kind") in ("csp", "denovo", "pool") and (r["kind"] != "csp" or 0 <= int(r.get("prompt_index", -1)) < n_prompts) for r in recs)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one task (see module docstring); returns the metrics dict (``stage=generate``: the rows' statuses)."""
    t0 = time.time()
    task_name = load_task(cfg.task).name

    def tlog(msg: str) -> None:
        log(f"[bench {task_name}] {msg}")

    if cfg.rl_adapter and "{task}" in cfg.rl_adapter:
        a = cfg.rl_adapter.replace("{task}", task_name)
        if not Path(a).is_dir():
            tlog(f"no rl adapter at {a}: no rl row")
        cfg = replace(cfg, rl_adapter=a if Path(a).is_dir() else None, best_of_n=cfg.best_of_n if Path(a).is_dir() or cfg.best_of_n >= 0 else 0)
    td, d = _load_task(cfg, tlog)
    specs = plan_rows(cfg, td.cond_names, tlog)
    unknown = sorted(set(cfg.rows) - {s.name for s in specs})
    if unknown:
        raise ConfigError(f"rows: {unknown} not in this task's plan {[s.name for s in specs]}")
    res_dir = Path(cfg.out) / td.spec.name
    store = RowStore(res_dir)
    sc: _Scoring | None = None
    oracle_rec: dict[str, Any] = {}
    if cfg.stage == "all":
        sc, oracle_rec = _scoring(cfg, td, d)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        t1 = time.time()
        fp = _gen_fingerprint(spec, td, cfg)
        status, saved, recs = store.lookup(spec.name, fp, sc.fingerprint if sc else None, tlog)
        if status != "none" and recs is not None and not _records_complete(recs, len(td.prompts)):
            tlog(f"row {spec.name}: saved samples do not fit the prompts: regenerating")
            status = "none"
        if status == "scored" and saved is not None:
            tlog(f"row {spec.name}: loaded from {store.row_path(spec.name)}")
            rows.append({k: v for k, v in saved.items() if k not in ("status", "format")})
            continue
        if cfg.rows and spec.name not in cfg.rows:
            tlog(f"row {spec.name}: not in rows={cfg.rows} and not saved as scored with these settings: left out")
            continue
        if status == "generated" and saved is not None and recs is not None:
            sampling = saved["sampling"]
            if cfg.stage == "generate":
                tlog(f"row {spec.name}: samples already saved")
                rows.append({"generator": spec.name, "status": "generated"})
                continue
            tlog(f"row {spec.name}: scoring the saved samples")
        else:
            tlog(f"generating: {spec.name}")
            journal = store.journal(spec.name, fp, tlog) if spec.kind == "model" else None
            try:
                recs, sampling = _sample_row(spec, td, cfg, tlog, journal)
            finally:
                if journal:
                    journal.close()
            store.save_generated(spec.name, fp, recs, sampling)
            if cfg.stage == "generate":
                rows.append({"generator": spec.name, "status": "generated"})
                continue
        assert sc is not None
        row, scored = _score(spec, td, recs, sc, cfg)
        row["sampling"] = _throughput(sampling, row)
        row["seconds"] = round(time.time() - t1, 1)
        row["fingerprint"], row["score_fingerprint"] = fp, sc.fingerprint
        store.save_scored(spec.name, row, scored)
        rows.append(row)
    if cfg.stage == "generate":
        return {"task": asdict(td.spec), "stage": "generate", "rows": rows}
    out: dict[str, Any] = {
        "task": asdict(td.spec), "config": _plain_config(cfg), "split_counts": td.manifest["counts"],
        "leak_check": {k: v for k, v in td.manifest["leak_check"].items() if k != "removed_from_test"},
        "csp_prompts": {"requested": cfg.n_prompts or td.spec.n_prompts, "used": len(td.prompts), "test_size": len(td.test)},
        "reference_sizes": sc.ref_sizes if sc else None, "rows": rows,
    }
    if oracle_rec:
        out["oracle"] = oracle_rec
    if cfg.model:
        out["constrained"] = specs[0].constrained
    out["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(res_dir / METRICS_FILE, out)
    atomic_write_text(res_dir / "per_prompt.md", render_per_prompt_md(out))
    save_config(cfg, res_dir / CONFIG_FILE)  # the resolved config of this task's run
    atomic_write_text(Path(cfg.out) / BENCH_SUMMARY, render_bench_md(Path(cfg.out)))
    return out


def _plain_config(cfg: BenchConfig) -> dict[str, Any]:
    return {**asdict(cfg), "compare_models": dict(cfg.compare_models)}
