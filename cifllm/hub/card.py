"""Model cards (``README.md`` for the Hugging Face Hub) generated from a model folder's run records only, assembled
with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` (metadata and model index).

Every number in the card is read from a file: ``config.json`` (architecture), ``cifllm_run.json`` (parameters, steps,
tokens, losses, wall time, config), ``config.yaml``, ``data_manifest.json`` (datasets, licences, corpus manifest
SHA-256), ``cifllm_tokenizer.json``, ``cifllm_export.json``, and optionally an evaluation ``metrics.json`` and a
benchmark results folder. A missing record makes its section say "not recorded"; a folder without ``config.json``
is an error.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cifllm.bench.report import pct_ci
from cifllm.bench.rows import OWN_ROWS, folder_fingerprint
from cifllm.bench.stats import rate
from cifllm.core.config import config_to_dict, flatten
from cifllm.core.errors import CifllmError
from cifllm.core.records import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE
from cifllm.core.report import NOT_MEASURED, on_off, pct
from cifllm.data.registry import DatasetSpec, load_registry
from cifllm.modeling import SAMPLING_DEFAULTS
from cifllm.training.config import PretrainConfig
from cifllm.utils import atomic_write_text, sha256_file

__all__ = [
    "CODE_LICENSE",
    "NOT_RECORDED",
    "TAGS",
    "CardError",
    "choose_license",
    "render_model_card",
    "training_command",
    "write_model_card",
]

NOT_RECORDED = "not recorded"
#: The licence of the cifllm code (pyproject.toml ``license``); the weights get it too when every training dataset's
#: licence allows redistributing derived work (with attribution): :func:`choose_license`.
CODE_LICENSE = "mit"
TAGS = ["crystal-structure", "cif", "materials-science", "llama", "cifllm"]
#: Phrases that make a dataset licence incompatible with declaring ``cc-by-4.0`` for the weights.
_RESTRICTIVE = re.compile(
    r"no licen[cs]e|not redistribute|research use only|non-?commercial|by[- ]nc|proprietary|all rights reserved|"
    r"unknown|\bicsd\b",
    re.IGNORECASE,
)
#: Licences that allow redistributing derived work (CC BY 4.0: with attribution, which the card gives).
_PERMISSIVE = re.compile(r"\bcc[- ]by\b|\bcc0\b|\bmit\b|\bapache\b|\bbsd\b|public domain|nist terms", re.IGNORECASE)
#: The project's targets for its default model (issue 13), shown with what a model measured in the card's "Targets":
#: CDVAE validity and CrystaLLM self-consistency of constrained de novo samples (CrystaLLM-small reports 94% validity);
VALIDITY_TARGET, CONSISTENCY_TARGET = 0.90, 0.70
#: CSP match@k above the template baseline with non-overlapping 95% intervals, on these tasks;
CSP_TARGET_K, CSP_TARGET_TASKS = 20, ("id_random", "time_split")
#: Spearman(asked property value, oracle prediction) of conditioned samples above this, on at least this many;
SPEARMAN_TARGET, SPEARMAN_TARGET_N, SPEARMAN_TARGET_TASKS = 0.3, 200, ("tc_top", "bandgap_top")
#: valid CIFs per second: 60x CrystaLLM's own sampling loop at 5M parameters on a 2-core CPU (58 tokens/s, ~240 tokens
#: per CIF, its reported 94% validity: ~0.23 valid CIFs/s).
VALID_PER_S_TARGET = 14.0
#: Evaluation rates shown in the card and the model index (key in metrics.json -> label).
_EVAL_RATES = {
    "parse": "Parse rate",
    "valid": "Validity (CDVAE/DiffCSP)",
    "consistent": "Self-consistency (CrystaLLM's definition)",
    "consistent_strict": "Self-consistency, strict rule (cifllm)",
    "valid_all": "Valid and self-consistent (CrystaLLM)",
    "unique": "Unique (among all samples)",
    "novel": "Novel (among all samples)",
    "unique_novel": "Unique and novel (among all samples)",
}


class CardError(CifllmError, ValueError):
    """A folder a card cannot be made for (no ``config.json``)."""


# ------------------------------------------------------------------------------------------------------ reading


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        obj = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return obj if isinstance(obj, dict) else None


def _load_eval(eval_metrics: str | Path | Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(metrics, sample-run summary or None) from a dict, a metrics.json or a folder holding one."""
    if eval_metrics is None:
        return None, None
    if isinstance(eval_metrics, Mapping):
        return dict(eval_metrics), None
    p = Path(eval_metrics)
    if p.is_dir():
        p = p / METRICS_FILE
    metrics = _read_json(p)
    if metrics is None:
        raise CardError(f"{p}: not a readable evaluation metrics.json")
    summary = _read_json(p.parent.parent / "summary.json")  # <samples run>/eval/metrics.json -> <samples run>/summary.json
    return metrics, summary


# ------------------------------------------------------------------------------------------------------ formatting


def _num(x: Any, nd: int = 4) -> str:
    if x is None:
        return NOT_RECORDED
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _params(n: Any) -> str:
    if not isinstance(n, int):
        return NOT_RECORDED
    return f"{n:,} ({n / 1e6:.2f}M)" if n < 1e9 else f"{n:,} ({n / 1e9:.2f}B)"


def _seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return NOT_RECORDED
    return f"{s:,.1f} s ({s / 3600:.2f} h)"


def _scalar(v: Any) -> str:
    """A config value as ``key=value`` text that ``cifllm pretrain`` parses back to the same value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return shlex.quote(",".join(str(x) for x in v))
    return shlex.quote(str(v))


def _portable(path: Any) -> Any:
    """A path as a card may show it: relative to the working directory when it lies under it, else its last part;
    an absolute path of the machine that trained the model means nothing to a reader (and discloses that machine)."""
    if not isinstance(path, str) or not Path(path).is_absolute():
        return path
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def training_command(config: Mapping[str, Any]) -> str:
    """``cifllm pretrain key=value ...`` for every key of a saved ``PretrainConfig`` that differs from the default
    (nested blocks as dotted keys, ``train.lr=...``; a flat config of an older run keeps its plain keys)."""
    given = flatten(config, PretrainConfig)
    defaults = flatten(config_to_dict(PretrainConfig()), PretrainConfig)
    plain = {k.rsplit(".", 1)[-1]: k for k in defaults}  # leaf names are unique across the blocks
    parts = []
    for k, v in given.items():
        dk = k if k in defaults else plain.get(k)
        if dk is None or defaults[dk] != v:
            parts.append(f"{k}={_scalar(_portable(v) if isinstance(v, str) else v)}")
    return " ".join(["cifllm", "pretrain", *parts])


def choose_license(licences: Mapping[str, str] | None) -> tuple[str, list[str]]:
    """(:data:`CODE_LICENSE` or ``other``, datasets whose licence does not clearly allow redistributing derived work).

    Weights are derived from their training data: they get the project's licence only when every dataset allows
    that (MIT-, Apache-, BSD-licensed, CC BY or public-domain data, attribution given in the card); one dataset with no
    licence, a non-commercial or a do-not-redistribute licence (or an unknown one) makes it ``other``."""
    if not licences:
        return "other", []
    blocking = []
    for name, text in licences.items():
        t = str(text)
        if _RESTRICTIVE.search(t) or not _PERMISSIVE.search(t):
            blocking.append(name)
    return ("other" if blocking else CODE_LICENSE), blocking


def _public_source(spec: DatasetSpec | None) -> str:
    """Where a registry dataset comes from: its repositories (from the file URLs), else its title."""
    if spec is None:
        return NOT_RECORDED
    urls = [f.url for f in spec.files if f.url] + list(spec.full_dataset_urls)
    repos: list[str] = []
    for u in urls:
        m = re.match(r"https://(?:raw\.githubusercontent\.com|github\.com)/([\w.-]+)/([\w.-]+)/", u)
        repo = f"https://github.com/{m.group(1)}/{m.group(2)}" if m else None
        if repo and repo not in repos:
            repos.append(repo)
    return ", ".join(repos) if repos else "see the dataset registry entry"


def _registry() -> dict[str, DatasetSpec]:
    try:
        return load_registry()
    except Exception:  # a broken registry must not stop a card: its sources read "not recorded"
        return {}


# ------------------------------------------------------------------------------------------------------ sections


def _card_data(name: str, records: dict[str, Any], eval_metrics: dict[str, Any] | None, extra: Mapping[str, Any] | None) -> Any:
    """The card's metadata as ``huggingface_hub.ModelCardData``: licence (:func:`choose_license`), library, task,
    tags and the evaluation rates as the model index. No ``datasets`` key: it takes Hub dataset ids, which the training
    sources (GitHub repositories, the card's data table) do not have."""
    from huggingface_hub import EvalResult, ModelCardData

    manifest = ((records["data"] or {}).get("manifest") or {})
    lic, _ = choose_license(manifest.get("licences") or {})
    fm: dict[str, Any] = {"license": lic}
    if lic == "other":
        fm["license_name"] = "cifllm-training-data-licences"
        fm["license_link"] = "README.md#licence"
    fm.update(library_name="transformers", pipeline_tag="text-generation", tags=list(TAGS))
    results = []
    if eval_metrics and isinstance(eval_metrics.get("rates"), Mapping):
        rates = eval_metrics["rates"]
        for key, label in _EVAL_RATES.items():
            v = rates.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                results.append(EvalResult(
                    task_type="text-generation", task_name="Crystal structure generation (CIF text)",
                    dataset_type="cifllm-samples", dataset_name=f"{eval_metrics.get('n_samples', '?')} samples of this model",
                    metric_type=key, metric_value=float(v), metric_name=label,
                ))
    if extra:
        fm.update(dict(extra))
    return ModelCardData(model_name=name if results else None, eval_results=results or None, **fm)


def _model_section(records: dict[str, Any]) -> list[str]:
    cfg, run, tokr, exp = records["config"], records["run"] or {}, records["tokenizer"] or {}, (records["export"] or {}).get("export") or {}
    arch = ", ".join(cfg.get("architectures") or []) or cfg.get("model_type") or NOT_RECORDED
    dtype = exp.get("dtype") or cfg.get("dtype") or cfg.get("torch_dtype") or NOT_RECORDED
    rows = [
        ("Architecture", arch),
        ("Layers", _num(cfg.get("num_hidden_layers"))),
        ("Hidden size", _num(cfg.get("hidden_size"))),
        ("MLP size", _num(cfg.get("intermediate_size"))),
        ("Attention heads (key/value heads)", f"{_num(cfg.get('num_attention_heads'))} ({_num(cfg.get('num_key_value_heads'))})"),
        ("Context (max positions)", _num(cfg.get("max_position_embeddings"))),
        ("Vocabulary", _num(cfg.get("vocab_size"))),
        ("Tied embeddings", _num(cfg.get("tie_word_embeddings"))),
        ("Parameters", _params(run.get("n_parameters"))),
        ("Preset", run.get("preset") or NOT_RECORDED),
        ("Tokenizer", f"{tokr.get('version', NOT_RECORDED)} (fingerprint `{tokr.get('fingerprint', NOT_RECORDED)}`, {_num(tokr.get('vocab_size'))} tokens)"),
        ("Weights dtype", str(dtype)),
    ]
    for fname, digest in (exp.get("sha256") or {}).items():
        rows.append((f"SHA-256 of `{fname}`", f"`{digest}`"))
    if exp:
        rows.append(("Export check", f"max abs logit difference {exp.get('max_abs_logit_diff', 0):.3g} vs the fp32 source "
                     f"(tolerance {exp.get('tolerance', 0):.3g}), top-1 agreement {pct(exp.get('top1_agreement'))}"))
    lines = ["## Model", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    return lines


def _corpus_report(data: dict[str, Any]) -> dict[str, Any] | None:
    """The corpus's ``report.json``, only if its ``manifest.json`` is the one this model was trained on."""
    corpus, sha = data.get("corpus"), data.get("manifest_sha256")
    if not corpus or not sha:
        return None
    man = Path(corpus) / MANIFEST_FILE
    try:
        if not man.is_file() or sha256_file(man) != sha:
            return None
    except OSError:
        return None
    return _read_json(Path(corpus) / "report.json")


def _data_section(records: dict[str, Any]) -> list[str]:
    data = records["data"]
    lines = ["## Training data", ""]
    if not data:
        return [*lines, f"Data manifest: {NOT_RECORDED}.", ""]
    m = data.get("manifest") or {}
    stats = data.get("stats") or {}
    tr, va = stats.get("train") or {}, stats.get("val") or {}
    lines += [
        f"- corpus: `{data.get('corpus', NOT_RECORDED)}`, corpus manifest SHA-256 `{data.get('manifest_sha256', NOT_RECORDED)}`",
        f"- structures: {_num(m.get('n_train'))} train, {_num(m.get('n_val'))} validation ({_num(m.get('n_rows'))} in the corpus)",
        f"- tokens: {_num(tr.get('n_tokens'))} train, {_num(va.get('n_tokens'))} validation; longest CIF {_num(stats.get('longest_cif_tokens', m.get('max_tokens')))} tokens",
        f"- corpus tokenizer: {m.get('tokenizer_version', NOT_RECORDED)} (fingerprint `{m.get('tokenizer_fingerprint', NOT_RECORDED)}`)",
    ]
    c = m.get("config") or {}
    if c:
        lines.append(
            f"- preparation: mode {c.get('mode', NOT_RECORDED)}, symprec {c.get('symprec', NOT_RECORDED)}, at most "
            f"{c.get('max_atoms', NOT_RECORDED)} atoms and {c.get('max_tokens', NOT_RECORDED)} tokens per structure, "
            f"deduplication {c.get('dedup', NOT_RECORDED)}, validation fraction {c.get('val_fraction', NOT_RECORDED)}"
        )
    lines.append("")
    licences = m.get("licences") or {}
    datasets = list(m.get("datasets") or licences)
    per = m.get("per_source") or ((_corpus_report(data) or {}).get("per_source")) or {}
    inputs: dict[str, int] = {}
    for inp in m.get("inputs") or []:
        if isinstance(inp, Mapping) and inp.get("dataset"):
            inputs[inp["dataset"]] = inputs.get(inp["dataset"], 0) + 1
    registry = _registry()
    lines += [
        '<a name="licence"></a>',
        "",
        "| dataset (cifllm name) | public source | cite | input files | structures in / kept | licence |",
        "|---|---|---|---:|---:|---|",
    ]
    for d in datasets:
        p = per.get(d) or {}
        spec = registry.get(d)
        counts = f"{_num(p['rows_in'])} / {_num(p.get('rows_out_as_representative'))}" if "rows_in" in p else NOT_RECORDED
        lic = str(licences.get(d, NOT_RECORDED)).replace("|", "/")
        title = f"{spec.title} (`{d}`)" if spec else f"`{d}`"
        cite = (spec.citation if spec and spec.citation else NOT_RECORDED).replace("|", "/")
        lines.append(f"| {title} | {_public_source(spec)} | {cite} | {inputs.get(d, NOT_RECORDED)} | {counts} | {lic} |")
    if not datasets:
        lines.append(f"| {NOT_RECORDED} | | | | | |")
    lic, blocking = choose_license(licences)
    lines.append("")
    code = f"The cifllm code that trained and samples this model is under the {CODE_LICENSE.upper()} licence."
    if lic == CODE_LICENSE:
        lines.append(f"{code} All training datasets are under licences that allow redistributing derived work (with "
                     f"attribution), so the weights are released under the {CODE_LICENSE.upper()} licence too; cite the "
                     "datasets above (Materials Project data: CC BY 4.0).")
    elif blocking:
        lines.append(f"**Licence: other.** {code} The licences of {', '.join(blocking)} do not clearly allow redistribution "
                     "of derived work (see the table), so the weights are not declared under it: check those licences "
                     "before using or redistributing these weights.")
    else:
        lines.append(f"**Licence: other.** {code} Dataset licences: {NOT_RECORDED}.")
    lines.append("")
    return lines


def _training_section(records: dict[str, Any]) -> list[str]:
    run = records["run"]
    cfg = (run or {}).get("config") or records["config_yaml"]
    lines = ["## Training", ""]
    if cfg:
        lines += [
            "Command (the resolved configuration is `config.yaml` in this repository; `cifllm pretrain --config config.yaml` "
            "repeats the run):",
            "",
            "```bash",
            training_command(cfg),
            "```",
            "",
        ]
    else:
        lines += [f"Command: {NOT_RECORDED}.", ""]
    if not run:
        return [*lines, f"Run record (`cifllm_run.json`): {NOT_RECORDED}.", ""]
    wall = _seconds(run.get("train_seconds_this_session"))
    if run.get("resumed_from"):
        wall += f" (last session only; resumed from `{_portable(run['resumed_from'])}`)"
    versions = run.get("versions") or {}
    rows = [
        ("Optimizer steps", _num(run.get("global_step"))),
        ("Tokens seen", _num(run.get("tokens_seen"))),
        ("Final train loss", _num(run.get("train_loss"))),
        ("Final validation loss", _num(run.get("eval_loss"))),
        ("Wall time", wall),
        ("Precision", run.get("precision") or NOT_RECORDED),
        ("Processes (world size)", _num(run.get("world_size"))),
        ("DeepSpeed", run.get("deepspeed") or "off"),
        ("Data mode (block size)", f"{run.get('data_mode', NOT_RECORDED)} ({_num(run.get('block_size'))})"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or NOT_RECORDED),
    ]
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines.append("Losses are mean cross-entropy per token (nats); the train loss is the Trainer's average over the run.")
    lines.append("")
    return lines


def _eval_section(metrics: dict[str, Any] | None, summary: dict[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if not metrics:
        return [*lines, f"Sample evaluation: {NOT_RECORDED} (`cifllm card --eval <samples>/eval/metrics.json`).", ""]
    rates = metrics.get("rates") or {}
    among = metrics.get("rates_among_valid") or {}
    defs = metrics.get("definitions") or {}
    lines.append(f"{_num(metrics.get('n_samples'))} samples checked with `cifllm evaluate`.")
    if summary:
        p = summary.get("params") or {}
        lines.append(
            f"Sampling: {_num(summary.get('n_prompts'))} prompt(s), engine {summary.get('engine', NOT_RECORDED)}, temperature "
            f"{p.get('temperature', NOT_RECORDED)}, top-k {p.get('top_k', NOT_RECORDED)}, top-p {p.get('top_p', NOT_RECORDED)}, "
            f"max new tokens {p.get('max_new_tokens', NOT_RECORDED)}, seed {p.get('seed', NOT_RECORDED)}, constraint engine "
            f"{on_off(summary.get('constrained'), NOT_RECORDED)}."
        )
        if summary.get("tokens_per_s") and summary.get("wall_s"):
            lines.append(
                f"Sampling speed on the evaluation machine: {summary['tokens_per_s']:,.0f} tokens/s, "
                f"{summary.get('samples_per_s', 0):.2f} samples/s ({_num(summary.get('n_samples'))} samples in {summary['wall_s']:.0f} s)."
            )
    ref = metrics.get("reference") or {}
    if ref.get("corpus"):
        lines.append(f"Novelty reference: `{ref['corpus']}` (split {ref.get('split') or 'all'}, {_num(ref.get('n'))} structures).")
    lines += ["", "| metric | rate | among valid | definition |", "|---|---:|---:|---|"]
    for key, label in _EVAL_RATES.items():
        lines.append(f"| {label} | {pct(rates.get(key))} | {pct(among.get(key)) if key in among else ''} | {defs.get(key, '')} |")
    agree = metrics.get("consistency_agreement")
    if isinstance(agree, Mapping) and metrics.get("n_samples"):
        lines += ["", f"Self-consistency: CrystaLLM's definition (a reproduction of its `is_valid`) and this project's "
                  f"stricter rule agree on {_num(int(agree.get('both', 0)) + int(agree.get('neither', 0)))} of "
                  f"{_num(metrics['n_samples'])} samples; {_num(agree.get('crystallm_only'))} pass only CrystaLLM's, "
                  f"{_num(agree.get('strict_only'))} only the strict one."]
    csp = metrics.get("csp")
    if isinstance(csp, Mapping):
        lines += ["", "Crystal structure prediction: " + ", ".join(
            f"{k} {pct(v) if k.startswith('match') else _num(v)}" for k, v in csp.items() if k.startswith(("match@", "rmse@")))]
        if defs.get("match@k"):
            lines.append(f"(match@k: {defs['match@k']})")
    lines.append("")
    return lines


def _bench_metrics(bench_dir: str | Path | None, model_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``metrics.json`` of every task in ``bench_dir`` whose rows of the benchmarked model (``base``, ``lora``, ...:
    :data:`~cifllm.bench.rows.OWN_ROWS`; a task benchmarked so far only with its adapter has no ``base`` row) sampled
    *this* model (its weights' fingerprint, see :func:`cifllm.bench.rows.folder_fingerprint`), and the names of the
    tasks left by another model."""
    files = sorted(Path(bench_dir).glob("*/metrics.json")) if bench_dir else []
    ms, other = [], []
    fp = folder_fingerprint(model_dir) if files else None
    for f in files:
        m = _read_json(f)
        if not m or "rows" not in m:
            continue
        m.setdefault("task", {}).setdefault("name", f.parent.name)
        own = [r for r in m.get("rows") or [] if r.get("generator") in OWN_ROWS]
        if not own or any((r.get("fingerprint") or {}).get("model_sha") != fp for r in own):
            other.append(str(m["task"]["name"]))
            continue
        ms.append(m)
    return ms, other


def _bench_section(bench_dir: str | Path | None, ms: list[dict[str, Any]], other: list[str]) -> list[str]:
    """Benchmark rows of the tasks in ``ms`` (see :func:`_bench_metrics`); tasks made with another model are named."""
    lines = ["## Discovery benchmarks", ""]
    rows = []
    for m in ms:
        task = m["task"]
        for r in m.get("rows") or []:
            c, dn, rd = r.get("csp") or {}, r.get("denovo") or {}, r.get("rediscovery") or {}
            k = c.get("samples_per_prompt", 1)
            rows.append(
                f"| {task['name']} | {task.get('case', '-')} | {r.get('generator', '-')} | {pct(c.get('match@1'))} | "
                f"{pct(c.get(f'match@{k}'))} (k={k}) | {pct(dn.get('valid'))} | {pct(dn.get('unique'))} | {pct(dn.get('novel'))} | "
                f"{pct(rd.get('rate'))} | {pct((r.get('property') or {}).get('hit_rate'))} |"
            )
    skipped = [f"Results in {bench_dir} for {', '.join(other)} were made with another model (or an older results format) and are not shown.", ""] if other else []
    if not rows:
        return [*lines, f"Benchmark results: {NOT_RECORDED} (`cifllm card --bench results/`).", "", *skipped]
    lines += [
        "From `cifllm bench` (`<results>/<task>/metrics.json`). CSP match with StructureMatcher(ltol 0.3, stol 0.5, "
        "angle 10); de novo uniqueness, novelty and rediscovery with (0.2, 0.3, 5); `template` is the baseline that "
        "substitutes elements into training structures.",
        "",
        "| task | case | generator | CSP match@1 | match@k | de novo valid | unique | novel | rediscovery | property hit rate |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *skipped,
    ]
    return lines


def _eval_target(metrics: dict[str, Any] | None, key: str, goal: float) -> tuple[str, str]:
    counts, n = (metrics or {}).get("counts") or {}, (metrics or {}).get("n_samples")
    if counts.get(key) is None or not n:
        return NOT_MEASURED, NOT_MEASURED
    k = int(counts[key])
    return f"{pct_ci(rate(k, n))} of {n:,}", "met" if k / n >= goal else "missed"


def _csp_target(ms: list[dict[str, Any]], task: str) -> tuple[str, str]:
    """A model row's CSP match@20 against the template's: met when a model row's 95% interval lies wholly above."""
    m = next((m for m in ms if m["task"]["name"] == task), None)
    if m is None:
        return NOT_MEASURED, NOT_MEASURED
    got: dict[str, dict[str, Any]] = {}
    for r in m.get("rows") or []:
        c = r.get("csp") or {}
        rec = (c.get("rates") or {}).get(f"match@{CSP_TARGET_K}")
        if c.get("samples_per_prompt") == CSP_TARGET_K and isinstance(rec, dict) and rec.get("rate") is not None:
            got[str(r.get("generator"))] = rec
    tmpl = got.get("template")
    models = {g: v for g, v in got.items() if g in OWN_ROWS}  # not a compare_models row (another model)
    if tmpl is None or not models:
        return NOT_MEASURED + f" (needs the model and template rows at {CSP_TARGET_K} samples per prompt)", NOT_MEASURED
    text = "; ".join(f"{g} {pct_ci(v)}" for g, v in models.items()) + f"; template {pct_ci(tmpl)}"
    above = [g for g, v in models.items() if v.get("ci95") and tmpl.get("ci95") and v["ci95"][0] > tmpl["ci95"][1]]
    return text, f"met ({', '.join(above)})" if above else "missed"


def _spearman_target(ms: list[dict[str, Any]], task: str) -> tuple[str, str]:
    m = next((m for m in ms if m["task"]["name"] == task), None)
    row = next((r for r in (m or {}).get("rows") or [] if r.get("generator") == "lora+cond"), None)
    sp = (((row or {}).get("property") or {}).get("response") or {}).get("spearman") or {}
    if sp.get("rho") is None:
        return NOT_MEASURED, NOT_MEASURED
    ci, n = sp.get("ci95"), int(sp.get("n") or 0)
    text = f"{sp['rho']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" over {n:,} valid samples"
    if n < SPEARMAN_TARGET_N:
        return text, f"not shown (fewer than {SPEARMAN_TARGET_N} samples)"
    return text, "met" if sp["rho"] > SPEARMAN_TARGET else "missed"


def _speed_target(metrics: dict[str, Any] | None, summary: dict[str, Any] | None) -> tuple[str, str]:
    n, valid = (metrics or {}).get("n_samples"), ((metrics or {}).get("counts") or {}).get("valid")
    sps = (summary or {}).get("samples_per_s")
    if not n or valid is None or not sps or (summary or {}).get("engine") != "vllm":
        return NOT_MEASURED + " (needs a vLLM evaluation run)", NOT_MEASURED
    v = sps * valid / n
    return f"{v:.2f} valid CIFs/s ({sps:.2f} samples/s x {pct(valid / n)} valid, {n:,} samples)", "met" if v >= VALID_PER_S_TARGET else "missed"


def _targets_section(metrics: dict[str, Any] | None, summary: dict[str, Any] | None, ms: list[dict[str, Any]]) -> list[str]:
    """The project's targets for its default model next to what this model measured (``not measured`` where a record
    is missing). Rates with Wilson 95% intervals, Spearman with its bootstrap 95% interval."""
    rows = [
        ("De novo validity (CDVAE), constrained", f">= {pct(VALIDITY_TARGET, digits=0)}", *_eval_target(metrics, "valid", VALIDITY_TARGET)),
        ("De novo self-consistency (CrystaLLM), constrained", f">= {pct(CONSISTENCY_TARGET, digits=0)}",
         *_eval_target(metrics, "consistent", CONSISTENCY_TARGET)),
        *[(f"CSP match@{CSP_TARGET_K}, `{t}`", "above the template, non-overlapping 95% intervals", *_csp_target(ms, t)) for t in CSP_TARGET_TASKS],
        *[(f"Conditioning, `{t}` (`lora+cond`): Spearman(asked, oracle)", f"> {SPEARMAN_TARGET} on >= {SPEARMAN_TARGET_N} valid samples",
           *_spearman_target(ms, t)) for t in SPEARMAN_TARGET_TASKS],
        ("Valid CIFs per second (vLLM, de novo evaluation)", f">= {VALID_PER_S_TARGET:g} (60x CrystaLLM's own loop at 5M parameters on a 2-core CPU)",
         *_speed_target(metrics, summary)),
    ]
    return [
        "## Targets",
        "",
        "The project's targets for its default model and what this model measured (evaluation and benchmark records "
        "above). The speed depends on the machine the evaluation ran on.",
        "",
        "| target | goal | measured | status |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]


def _usage_section(repo: str) -> list[str]:
    return [
        "## How to use",
        "",
        "Plain `transformers` (no remote code). A prompt is the start of a canonical CIF: `data_<cell formula>` and a",
        "line break (optionally the space-group lines); the tokenizer prepends `<|bos|>`; an empty prompt samples de novo.",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{repo}")',
        f'model = AutoModelForCausalLM.from_pretrained("{repo}", dtype=torch.float32)',
        'ids = tok("data_Na4Cl4\\n", return_tensors="pt")["input_ids"]',
        f"out = model.generate(ids, do_sample=True, temperature={SAMPLING_DEFAULTS['temperature']}, top_k={SAMPLING_DEFAULTS['top_k']}, max_new_tokens=1024,",
        "                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)",
        "print(tok.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
        "Plain `generate` samples without the constraint engine, so its text can contradict itself (a cif-v2 model writes",
        "Wyckoff letters and coordinates that must agree). `cifllm` applies the engine by default to cif-v2 models: every",
        "sample then parses, keeps the prompt's composition and has consistent computed fields.",
        "",
        "With the `cifllm` package (prompts, constrained sampling and validity checks):",
        "",
        "```bash",
        f'cifllm generate --model {repo} --composition "Na4Cl4" --space-group Fm-3m -n 3',
        f"MODEL=$(python -c 'from cifllm.hub import resolve_model; print(resolve_model(\"{repo}\"))')  # local folder",
        "cifllm sample model=$MODEL composition=SrTiO3 num_samples=100 out=runs/samples",
        "cifllm evaluate samples=runs/samples",
        "```",
        "",
    ]


_LIMITATIONS = [
    "## Intended use and limitations",
    "",
    "- Intended use: proposing candidate crystal structures (de novo or for a given composition and space group) as",
    "  input to further screening, and research on language models over crystal structures.",
    "- Generated structures are hypotheses. They are not relaxed with DFT or an interatomic potential, and nothing here",
    "  says they are stable, synthesizable or have any property; check validity (`cifllm evaluate`), relax and compute",
    "  before relying on one.",
    "- A sample can be syntactically wrong, physically implausible (too-close atoms, wrong oxidation states) or",
    "  inconsistent (stated and detected space group disagree): see the evaluation rates above.",
    "- The model learns the biases of its training data: the chemistries, structure types, cell sizes and sources in the",
    "  table above (mostly DFT databases of small, ordered cells); it is weaker outside them (large cells, disorder,",
    "  rare elements).",
    "- It writes text like its training data and can reproduce training structures verbatim; measure novelty against",
    "  the training corpus before calling a sample new.",
    "- Losses and rates in this card are read from the run records; they describe this checkpoint and these settings",
    "  only.",
    "",
]


# ------------------------------------------------------------------------------------------------------ public


def _records(folder: Path) -> dict[str, Any]:
    cfg = _read_json(folder / "config.json")
    if cfg is None:
        raise CardError(f"{folder}: no readable config.json; a model card needs a save_pretrained model folder")
    return {
        "config": cfg,
        "run": _read_json(folder / "cifllm_run.json"),
        "tokenizer": _read_json(folder / "cifllm_tokenizer.json"),
        "export": _read_json(folder / "cifllm_export.json"),
        "data": _read_json(folder / "data_manifest.json"),
        "config_yaml": _read_yaml(folder / CONFIG_FILE),
    }


def render_model_card(
    model_dir: str | Path,
    eval_metrics: str | Path | Mapping[str, Any] | None = None,
    bench_dir: str | Path | None = None,
    repo_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The ``README.md`` text for ``model_dir`` (see the module docstring).

    ``eval_metrics``: an evaluation ``metrics.json`` (or its folder, or the loaded dict); ``bench_dir``: a ``cifllm
    bench`` results folder; ``repo_id``: the Hub id used in the title and examples; ``extra``: front-matter keys that
    override the generated ones. Raises :class:`CardError` when ``model_dir`` has no ``config.json``.
    """
    folder = Path(model_dir)
    records = _records(folder)
    metrics, summary = _load_eval(eval_metrics)
    run = records["run"] or {}
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    if not repo_id and name == "default-model" and run.get("preset"):
        name = f"cifllm-{run['preset']} (the cifllm default model)"
    repo = repo_id or "path/to/model"
    bench_ms, other = _bench_metrics(bench_dir, folder)
    cfg = records["config"]
    intro = f"A {cfg.get('model_type', 'causal')} language model over canonical CIF text (crystal structures)"
    if run:
        intro += ", pretrained from scratch with `cifllm pretrain` on the datasets listed below"
        if run.get("n_parameters"):
            intro += f": {_params(run['n_parameters'])} parameters, {_num(run.get('tokens_seen'))} training tokens"
    intro += "."
    lines = [
        f"# {name}",
        "",
        intro,
        "It writes a crystal structure as text (cell, space group, symmetry-unique sites); the `cifllm` package turns the",
        "text into a structure and checks it.",
        "",
        *_model_section(records),
        *_data_section(records),
        *_training_section(records),
        *_eval_section(metrics, summary),
        *_bench_section(bench_dir, bench_ms, other),
        *_targets_section(metrics, summary, bench_ms),
        *_usage_section(repo),
        *_LIMITATIONS,
        "## Records",
        "",
        "This card was generated by `cifllm card` from the files of this repository: "
        + ", ".join(f"`{f}`" for f in ("config.json", "cifllm_run.json", "cifllm_tokenizer.json", "cifllm_export.json", "config.yaml", "data_manifest.json") if (folder / f).is_file())
        + ".",
        "",
    ]
    from huggingface_hub import ModelCard

    data = _card_data(name, records, metrics, extra)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(
    model_dir: str | Path,
    eval_metrics: str | Path | Mapping[str, Any] | None = None,
    bench_dir: str | Path | None = None,
    repo_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Render the card and write it to ``<model_dir>/README.md`` (atomic); returns the path."""

    text = render_model_card(model_dir, eval_metrics, bench_dir, repo_id, extra)
    out = Path(model_dir) / "README.md"
    atomic_write_text(out, text)
    return out
