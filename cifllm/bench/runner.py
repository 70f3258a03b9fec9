"""``cifllm bench``: run one discovery task for a model (optionally with a LoRA adapter) and the template baseline.

For each generator ("model" rows: ``base`` = the model as given, ``lora`` with ``adapter``; plus ``template``):

* **CSP** on ``n_prompts`` test compositions (prompt ``data_<cell formula>``), ``n_samples`` each: match@1, match@k and
  RMSE with ``StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)``; a prediction counts only if it is valid.
* **De novo**: ``n_denovo`` unconditioned samples (BOS only): validity, uniqueness, novelty against the task's training
  side (train + val + its pretraining corpus, MatterGen tolerances ltol 0.2, stol 0.3, angle 5).
* **Rediscovery**: share of held-out test structures matched (novelty tolerances) by at least one valid sample among
  the first N of all samples (CSP + de novo), reported for a range of N.
* **Property** (Case 2): an oracle (:mod:`cifllm.bench.oracle`) trained on all rows carrying the property (the test
  tail included; accuracy on a held-out 20% reported) scores valid novel samples; hit rate = share of them predicted
  above the task's threshold.

Writes ``<out>/<task>/metrics.json`` and refreshes ``<out>/BENCH.md`` from every task's metrics.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cifllm.bench.baselines import TemplateBaseline
from cifllm.bench.oracle import PropertyOracle
from cifllm.bench.splits import load_split
from cifllm.bench.tasks import TaskSpec, load_task
from cifllm.conditioning import format_property_lines, property_values
from cifllm.core.config import save_config
from cifllm.core.records import BENCH_SUMMARY, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, read_adapter_record
from cifllm.core.report import MISSING, fmt_num, pct
from cifllm.data.corpus import load_corpus
from cifllm.evaluation.matching import ReferenceIndex, csp_match_task, csp_metrics, novelty_task
from cifllm.evaluation.run import evaluate_texts, summarize
from cifllm.evaluation.stability import HullReference, StabilitySettings, run_stability, summarize_stability
from cifllm.sampling.engines import GenerationParams
from cifllm.sampling.generation import generate, resolve_constrained
from cifllm.sampling.prompts import Prompt, strip_conditions
from cifllm.tokenization import load_tokenizer, tokenizer_fingerprint
from cifllm.utils import atomic_write_json, atomic_write_text

__all__ = ["BenchConfig", "run_bench", "render_bench_md"]


@dataclass(frozen=True)
class BenchConfig:
    """Budgets: 0 means the task file's default."""

    task: str = "id_random"
    model: str = ""  # save_pretrained folder; empty = template baseline only
    adapter: str | None = None
    splits: str = "data/tasks"
    corpus: str = "data/corpus"
    out: str = "results"
    n_prompts: int = 0
    n_samples: int = 0
    n_denovo: int = 0
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_k: int = 0
    batch_size: int = 32
    seed: int = 0
    threads: int = 1
    workers: int = 1
    time_limit_s: float = 30.0
    template_baseline: bool = True
    stability: bool = False  # relax de novo samples with CHGNet, E_hull vs the task's reference (mlip extra)
    stability_cache: str | None = None  # null = <out>/<task>/stability_cache
    engine: Literal["hf", "vllm"] = "hf"  # sampling engine of the model rows
    gpu_memory_utilization: float = 0.5  # engine=vllm: share of GPU memory for weights + KV cache
    #: the constraint engine for the model rows: true / false, null = auto (on for cif-v2 models, off for cif-v1)
    constrained: bool | None = None


def _generate_llm(model: str, adapter: str | None, prompts: list[str], counts: list[int], cfg: BenchConfig, constrained: bool) -> list[list[str]]:
    """Full texts (prompt + continuation) per prompt, ``counts[i]`` samples for prompt ``i`` (engine ``cfg.engine``;
    ``constrained`` already resolved by the caller)."""
    params = GenerationParams(num_samples=max(counts), temperature=cfg.temperature, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)
    ps = [Prompt(text=p, kind="prefix", id=str(i)) for i, p in enumerate(prompts)]
    out: list[list[str]] = [[] for _ in prompts]
    gens = generate(
        ps, params, model=model, engine_name=cfg.engine, constrained=constrained, counts=counts,
        threads=cfg.threads, lora=adapter, seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization,
    )
    for g in gens:
        out[g.prompt_index].append(prompts[g.prompt_index] + g.text if not g.error else "")
    return out


def _score(task: TaskSpec, name: str, csp_prompts: list[str], csp_targets: list[str], csp_texts: list[list[str]], denovo: list[str], ref, test_rows: list[dict], cfg: BenchConfig, oracle=None, threshold: float | None = None, asked: list[float | None] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"generator": name}
    flat = [t for ts in csp_texts for t in ts]
    verd = evaluate_texts(flat + denovo, workers=cfg.workers, time_limit_s=cfg.time_limit_s, reference=ref)
    v_csp, v_dn = verd[: len(flat)], verd[len(flat) :]
    k = max((len(ts) for ts in csp_texts), default=0)
    if csp_prompts:
        rms = {}
        pos = 0
        for i, ts in enumerate(csp_texts):
            preds = [t if v["valid"] else None for t, v in zip(ts, v_csp[pos : pos + len(ts)])]
            pos += len(ts)
            rms[str(i)] = csp_match_task((csp_targets[i], preds)) if preds else []
        res["csp"] = {**csp_metrics(rms, sorted({1, k})), "n_prompts": len(csp_prompts), "samples_per_prompt": k, "validity": summarize(v_csp)["rates"]["valid"] if v_csp else None}
    if denovo:
        s = summarize(v_dn)
        res["denovo"] = {"n": len(denovo), "valid": s["rates"]["valid"], "unique": s["rates"]["unique"], "novel": s["rates"]["novel"], "unique_novel": s["rates"]["unique_novel"]}
        if cfg.stability:
            res["denovo"]["stability"] = _stability(task, name, denovo, v_dn, ref, cfg)
    # rediscovery over all valid samples, in generation order (CSP first, then de novo)
    by_formula: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for idx, (t, v) in enumerate(zip(flat + denovo, verd)):
        if v["valid"]:
            by_formula[v["reduced_formula"]].append((idx, t))
    first_hit: list[int] = []
    for row in test_rows:
        cands = by_formula.get(row["reduced_formula"], [])
        hit = None
        for idx, t in cands:
            if novelty_task((t, [row["text"]])) == 0:
                hit = idx
                break
        if hit is not None:
            first_hit.append(hit)
    n_total = len(flat) + len(denovo)
    grid = sorted({max(1, n_total // 8), max(1, n_total // 4), max(1, n_total // 2), max(1, n_total)})
    res["rediscovery"] = {
        "n_test": len(test_rows),
        "curve": {str(n): sum(1 for h in first_hit if h < n) / max(1, len(test_rows)) for n in grid},  # N samples -> rate
        "rate": len(first_hit) / max(1, len(test_rows)),
    }
    if oracle is not None and threshold is not None:
        novel_valid = [t for t, v in zip(flat + denovo, verd) if v["valid"] and v.get("novel") is not False]
        preds = oracle.predict(novel_valid) if novel_valid else []
        finite = [float(p) for p in preds if p == p]
        res["property"] = {
            "n_scored": len(finite),
            "hit_rate": (sum(p > threshold for p in finite) / len(finite)) if finite else None,
            "median_pred": (sorted(finite)[len(finite) // 2] if finite else None),
            "threshold": threshold,
            "unit": task.unit,
        }
        if asked is not None:
            res["property"]["response"] = _conditioning_response(flat + denovo, verd, asked, oracle, threshold)
    return res


def _stability(task: TaskSpec, name: str, denovo: list[str], verd: list[dict], ref, cfg: BenchConfig) -> dict[str, Any]:
    """Stability of the de novo samples (:mod:`cifllm.evaluation.stability`): the hull references are the task's
    novelty reference (what the model may have seen), relaxed with the same potential; rates over all de novo samples."""
    settings = StabilitySettings(workers=cfg.workers, time_limit_s=max(cfg.time_limit_s, 300.0))
    cache = Path(cfg.stability_cache) if cfg.stability_cache else Path(cfg.out) / task.name / "stability_cache"
    recs, stats = run_stability(denovo, [f"{name}:{i}" for i in range(len(denovo))], verd, HullReference.from_index(ref), settings, cache)
    st = summarize_stability(recs, verd, settings, stats)
    return {k: st[k] for k in ("n_samples", "n_e_hull", "rates", "reasons", "e_above_hull", "rmsd_A", "run")}


def _conditioning_response(texts: list[str], verd: list[dict], asked: list[float | None], oracle, threshold: float) -> dict[str, Any]:
    """Does asking for a value move the generated property? Per asked value (de novo samples): valid samples, their
    median oracle prediction and hit rate; Spearman rho between asked and predicted over all of them."""
    from scipy.stats import spearmanr

    pairs = [(a, t) for t, v, a in zip(texts, verd, asked) if a is not None and v["valid"]]
    if not pairs:
        return {"n_scored": 0}
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
    rho = float(spearmanr(xs, ys).statistic) if len(set(xs)) > 1 and len(xs) > 2 else None
    return {"n_scored": len(xs), "by_asked_value": table, "spearman_asked_vs_predicted": rho}


def run_bench(cfg: BenchConfig, log=print) -> dict[str, Any]:
    """Run one task (see module docstring); returns the metrics dict."""
    t0 = time.time()
    task = load_task(cfg.task)
    d = Path(cfg.splits) / task.name
    if not (d / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{d}: no split for task {task.name}; build it with `cifllm split --task {task.name}`")
    if cfg.model and not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"{cfg.model}: not a save_pretrained model folder")
    if cfg.model:

        tok = load_tokenizer(cfg.model)
        if tokenizer_fingerprint(tok.backend_tokenizer) != tokenizer_fingerprint():
            raise ValueError(f"{cfg.model}: its tokenizer does not match this cifllm's tokenizer")
    man = json.loads((d / MANIFEST_FILE).read_text())
    train = load_split(d, "train") + load_split(d, "val")
    test = load_split(d, "test")
    n_prompts = cfg.n_prompts or task.n_prompts
    n_samples = cfg.n_samples or task.n_samples
    n_denovo = cfg.n_denovo or task.n_denovo
    targets = test[:n_prompts]
    prompts = [t["text"].split("\n", 1)[0] + "\n" for t in targets]
    # novelty reference: what the model may have seen = corpus minus the task's exclusions
    excl = set((d / "pretrain_exclude.txt").read_text().split())

    ds = load_corpus(cfg.corpus).select_columns(["id", "text", "reduced_formula"])
    keep = [i for i, x in enumerate(ds["id"]) if x not in excl]
    ref = ReferenceIndex.from_records([ds["text"][i] for i in keep], [ds["reduced_formula"][i] for i in keep], [ds["id"][i] for i in keep])
    oracle = None
    threshold = man["rule"].get("threshold")
    out: dict[str, Any] = {"task": asdict(task), "config": asdict(cfg), "split_counts": man["counts"], "leak_check": {k: v for k, v in man["leak_check"].items() if k != "removed_from_test"}, "rows": []}
    if "property" in task.metrics and threshold is not None:

        rows = [r for r in train + test if r.get("value") is not None]
        oracle = PropertyOracle(log_target=task.property in ("tc", "thermal_conductivity"), seed=cfg.seed)
        out["oracle"] = asdict(oracle.fit([r["text"] for r in rows], [r["value"] for r in rows], threshold))
    gens: list[tuple[str, Any]] = []
    asked_by_row: dict[str, list[float | None]] = {}
    constrained = False
    if cfg.model:

        constrained = resolve_constrained(cfg.constrained, cfg.model, log=lambda m: log(f"[bench {task.name}] {m}"))
        out["constrained"] = constrained

    def llm(adapter: str | None):
        """CSP and de novo samples from one loaded engine: the CSP prompts, then the empty (BOS-only) prompt."""
        texts = _generate_llm(cfg.model, adapter, [*prompts, ""], [n_samples] * len(prompts) + [n_denovo], cfg, constrained)
        return texts[:-1], texts[-1]

    cond_names: tuple[str, ...] = ()
    if cfg.adapter:

        trained = read_adapter_record(cfg.adapter).get("conditioning") or {}
        cond_names = tuple(n for n in task.conditioning if n in trained)
        if task.conditioning and not cond_names:
            log(f"[bench {task.name}] the adapter was not trained with the task's conditioning {list(task.conditioning)}: no lora+cond row")

    def llm_cond(adapter: str):
        """Conditioned prompts: each CSP target with its own (test-tail) property values; de novo samples asked for
        values across the test tail (its 10/50/90% quantiles and maximum), ``n_denovo`` split evenly among them."""
        import numpy as np


        csp_p = []
        for t, p in zip(targets, prompts, strict=True):
            vals = property_values(t, cond_names, task.property or None)
            csp_p.append("".join(ln + "\n" for ln in format_property_lines(vals)) + p)
        main = cond_names[0]
        tail = np.asarray([v for r in test for v in [property_values(r, (main,), task.property or None).get(main)] if v is not None])
        asked = sorted({float(x) for x in np.quantile(tail, [0.1, 0.5, 0.9])} | {float(tail.max())}) if tail.size else []
        per = max(1, n_denovo // max(1, len(asked)))
        dn_p = ["".join(ln + "\n" for ln in format_property_lines({main: a})) for a in asked]
        texts = _generate_llm(cfg.model, adapter, [*csp_p, *dn_p], [n_samples] * len(csp_p) + [per] * len(dn_p), cfg, constrained)
        asked_by_row["lora+cond"] = [None] * (len(csp_p) * n_samples) + [a for a in asked for _ in range(per)]
        return texts[: len(csp_p)], [t for ts in texts[len(csp_p) :] for t in ts]

    if cfg.model:
        gens.append(("base", lambda: llm(None)))
        if cfg.adapter:
            gens.append(("lora", lambda: llm(cfg.adapter)))
            if cond_names:
                gens.append(("lora+cond", lambda: llm_cond(cfg.adapter)))
    if cfg.template_baseline:
        tb = TemplateBaseline([r["text"] for r in train], seed=cfg.seed)
        gens.append(("template", lambda: ([tb.csp(t["text"].split("\n", 1)[0][5:], n_samples) for t in targets], tb.denovo(n_denovo))))

    for name, make in gens:
        t1 = time.time()
        log(f"[bench {task.name}] generating: {name}")
        csp_texts, denovo = make()
        csp_texts = [[strip_conditions(t) for t in ts] for ts in csp_texts]  # property lines out: what the checks read
        denovo = [strip_conditions(t) for t in denovo]
        row = _score(task, name, prompts, [t["text"] for t in targets], csp_texts, denovo, ref, test, cfg, oracle, threshold, asked_by_row.get(name))
        row["seconds"] = round(time.time() - t1, 1)
        out["rows"].append(row)
    out["seconds"] = round(time.time() - t0, 1)
    res_dir = Path(cfg.out) / task.name
    atomic_write_json(res_dir / METRICS_FILE, out)
    save_config(cfg, res_dir / CONFIG_FILE)  # the resolved config of this task's run
    atomic_write_text(Path(cfg.out) / BENCH_SUMMARY, render_bench_md(Path(cfg.out)))
    return out


def _num(x: float | None) -> str:
    return fmt_num(x)


def render_bench_md(results_dir: Path) -> str:
    """One table, task x generator x metric, from every ``<results>/<task>/metrics.json``."""
    lines = [
        "# Discovery benchmark results",
        "",
        "CSP match with StructureMatcher(ltol 0.3, stol 0.5, angle 10); novelty/uniqueness/rediscovery with (0.2, 0.3, 5);",
        "rediscovery = share of test structures matched by >= 1 valid sample; property hit rate = share of valid novel",
        "samples that the oracle places above the task's threshold; rho = Spearman correlation between the asked and the",
        "oracle-predicted property of conditioned de novo samples (lora+cond rows); n/a = not measured.",
        "Generators: base = pretrained model; lora = with the task's adapter, plain prompts; lora+cond = adapter with",
        "property prompts (CSP targets with their own values, de novo asked for test-tail values); template = pymatgen",
        "element substitution into training prototypes.",
        "",
        "| task | case | generator | CSP match@1 | match@k | RMSE@k | de novo valid | unique | novel | rediscovery | property hit rate | rho asked/pred | oracle MAE / R2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(results_dir.glob("*/metrics.json")):
        m = json.loads(f.read_text())
        if not isinstance(m, dict) or "rows" not in m or "task" not in m:
            continue  # another stage's metrics.json (e.g. an evaluate run) in the same results folder
        orc = m.get("oracle")
        orc_s = f"{orc['mae']:.3g} / {orc['r2']:.2f}" if orc else MISSING
        for r in m["rows"]:
            c, dn = r.get("csp", {}), r.get("denovo", {})
            k = c.get("samples_per_prompt", 1)
            lines.append(
                f"| {m['task']['name']} | {m['task']['case']} | {r['generator']} | {pct(c.get('match@1'))} | {pct(c.get(f'match@{k}'))} | "
                f"{_num(c.get(f'rmse@{k}'))} | {pct(dn.get('valid'))} | {pct(dn.get('unique'))} | {pct(dn.get('novel'))} | "
                f"{pct(r['rediscovery']['rate'])} | {pct(r.get('property', {}).get('hit_rate'))} | "
                f"{_num(r.get('property', {}).get('response', {}).get('spearman_asked_vs_predicted'))} | {orc_s} |"
            )
    st_lines = []
    for f in sorted(results_dir.glob("*/metrics.json")):
        m = json.loads(f.read_text())
        if not isinstance(m, dict) or "rows" not in m or "task" not in m:
            continue
        for r in m["rows"]:
            st = r.get("denovo", {}).get("stability")
            if st:
                rt = st["rates"]
                st_lines.append(
                    f"| {m['task']['name']} | {r['generator']} | {st['n_samples']} | {st['n_e_hull']} | {pct(rt['stable']['rate'])} | {pct(rt['metastable']['rate'])} | "
                    f"{pct(rt['sun']['rate'])} | {pct(rt['msun']['rate'])} | {_num(st['e_above_hull']['median'])} |"
                )
    if st_lines:
        lines += [
            "",
            "Stability of de novo samples (CHGNet relaxation, E_hull against the task's reference relaxed with the same potential;",
            "rates in % over all de novo samples, S.U.N. = stable (E_hull <= 0) & unique & novel, M.S.U.N. = E_hull <= 0.1 eV/atom):",
            "",
            "| task | generator | n | with E_hull | stable | metastable | S.U.N. | M.S.U.N. | median E_hull (eV/atom) |",
            "|---|---|---|---|---|---|---|---|---|",
            *st_lines,
        ]
    return "\n".join(lines) + "\n"
