"""The benchmark's Markdown: ``<results>/BENCH.md`` (one main table over every task's ``metrics.json``, then size
buckets, sampling throughput, property oracles and stability) and ``<results>/<task>/per_prompt.md``.

A rate is shown as ``12.3% [8.1, 17.5]`` (its Wilson 95% interval, in %), ``n/a`` when not measured. Rows written by
an older runner (plain float rates, no intervals) are shown without intervals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifllm.bench.stats import ELEMENT_BUCKETS, SITE_BUCKETS, UNPARSED
from cifllm.core.report import MISSING, fmt_num, pct

__all__ = ["pct_ci", "render_bench_md", "render_per_prompt_md"]


def pct_ci(r: dict[str, Any] | None, fallback: Any = None) -> str:
    """``rate [lo, hi]`` in % from a :func:`cifllm.bench.stats.rate` record; ``fallback`` (a plain rate) when there is
    no record."""
    if not isinstance(r, dict):
        return pct(fallback)
    ci = r.get("ci95")
    if r.get("rate") is None or not ci:
        return pct(r.get("rate"))
    return f"{pct(r['rate'])} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _rho(resp: dict[str, Any] | None) -> str:
    if not resp:
        return MISSING
    sp = resp.get("spearman") or {}
    rho = sp.get("rho", resp.get("spearman_asked_vs_predicted"))
    if rho is None:
        return MISSING
    ci = sp.get("ci95")
    n = sp.get("n", resp.get("n_scored"))
    return f"{rho:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + (f" ({n})" if n is not None else "")


def _bench_files(results_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(results_dir.glob("*/metrics.json")):
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and "rows" in m and "task" in m:  # not another stage's metrics.json (e.g. evaluate)
            out.append(m)
    return out


def _main_row(m: dict[str, Any], r: dict[str, Any]) -> str:
    c, dn, rd, pr = r.get("csp") or {}, r.get("denovo") or {}, r.get("rediscovery") or {}, r.get("property") or {}
    k = c.get("samples_per_prompt", 1)
    cr, dr, pr_r = c.get("rates") or {}, dn.get("rates") or {}, pr.get("rates") or {}
    n_csp = f"{c['n_prompts']}×{k}" if "n_prompts" in c else MISSING
    speed = (r.get("sampling") or {}).get("valid_per_s")
    return (
        f"| {m['task']['name']} | {m['task'].get('case', '-')} | {r['generator']} | {n_csp} | {pct_ci(cr.get('match@1'), c.get('match@1'))} | "
        f"{pct_ci(cr.get(f'match@{k}'), c.get(f'match@{k}'))} | {fmt_num(c.get(f'rmse@{k}'))} | {dn.get('n', MISSING)} | "
        f"{pct_ci(dr.get('valid'), dn.get('valid'))} | {pct(dn.get('size_matched_valid'))} | {pct(dn.get('unique'))} | {pct(dn.get('novel'))} | "
        f"{pct(rd.get('rate'))} | {pct_ci(pr_r.get('hit_rate'), pr.get('hit_rate'))} | {_rho(pr.get('response'))} | {fmt_num(speed)} |"
    )


def _bucket_table(ms: list[dict[str, Any]], which: str, buckets: tuple[tuple[str, int, int | None], ...], title: str) -> list[str]:
    labels = [b[0] for b in buckets]
    lines = []
    for m in ms:
        ref = ((m.get("reference_sizes") or {}).get(which) or {})
        shown = False
        for r in m["rows"]:
            b = ((r.get("denovo") or {}).get("sizes") or {}).get(which)
            if not b:
                continue
            if not shown and ref:
                shares = ref.get("shares") or {}
                lines.append(f"| {m['task']['name']} | reference | {ref.get('n', MISSING)} | " + " | ".join(pct(shares.get(x)) for x in labels) + " | - | - |")
                shown = True
            cells = [f"{pct(b[x]['share'])} / {pct(b[x]['valid']['rate'])}" for x in [*labels, UNPARSED]]
            extra = pct(r["denovo"].get("size_matched_valid")) if which == "sites" else "-"
            lines.append(f"| {m['task']['name']} | {r['generator']} | {r['denovo'].get('n', MISSING)} | " + " | ".join(cells) + f" | {extra} |")
    if not lines:
        return []
    return [
        "",
        title,
        "",
        "| task | row | n | " + " | ".join(labels) + f" | {UNPARSED} | size-matched valid |",
        "|---|---|---" + "|---" * (len(labels) + 2) + "|",
        *lines,
    ]


def render_bench_md(results_dir: Path) -> str:
    """One main table, task x row x metric, from every ``<results>/<task>/metrics.json``; then the secondary tables."""
    ms = _bench_files(Path(results_dir))
    shared = {(r.get("sampling") or {}).get("denovo", {}).get("file") for m in ms for r in m["rows"] if (r.get("sampling") or {}).get("denovo", {}).get("file")}
    uses = sum(1 for m in ms for r in m["rows"] if (r.get("sampling") or {}).get("denovo", {}).get("file"))
    lines = [
        "# Discovery benchmark results",
        "",
        "Rows: `base` = the model given to `cifllm bench` (constraint engine auto: on for cif-v2 models); `base-unconstrained`",
        "= the same model with the constraint engine off (`constraint_ablation=true`); other names (e.g. `old-default`) =",
        "`compare_models` entries, each sampled with its own auto constraint setting; `lora` = with the task's adapter, plain",
        "prompts; `lora+cond` = adapter with property prompts (CSP targets with their own values, de novo asked for test-tail",
        "values); `template` = pymatgen element substitution into training prototypes.",
        "",
        "CSP match with StructureMatcher(ltol 0.3, stol 0.5, angle 10) over n prompts × k samples; novelty/uniqueness/",
        "rediscovery with (0.2, 0.3, 5); rediscovery = share of test structures matched by >= 1 valid sample; property hit",
        "rate = share of valid novel samples that the oracle places above the task's threshold; rho = Spearman correlation",
        "between the asked and the oracle-predicted property of conditioned de novo samples, bootstrap 95% interval (1,000",
        "seeded resamples) and (n). Rates: `rate [95% Wilson interval]`. Size-matched valid = share of samples with a",
        "structure × Σ over site buckets of (reference share × validity in the bucket): validity at the size distribution of",
        "the task's reference corpus, unparsed samples counted invalid; n/a when a bucket the reference uses has no sample.",
        "valid CIFs/s = valid samples (CSP + de novo) per second of sampling wall time. n/a = not measured.",
        "De novo samples of the rows without adapter are sampled once per model and settings and shared by every task",
        f"(`_shared/`), each scored per task against that task's reference: shared de novo sample sets: {len(shared)}, used by {uses} task rows.",
        "",
        "| task | case | row | CSP n×k | match@1 | match@k | RMSE@k | n de novo | valid | size-matched valid | unique | novel | rediscovery | property hit rate | rho [CI] (n) | valid CIFs/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in ms:
        lines += [_main_row(m, r) for r in m["rows"]]
    lines += _bucket_table(ms, "sites", SITE_BUCKETS, "De novo samples per sites per cell (share of the row's samples / validity in the bucket; reference = the task's novelty reference corpus, share):")
    lines += _bucket_table(ms, "elements", ELEMENT_BUCKETS, "De novo samples per number of elements (share / validity; reference share):")
    sp_lines = []
    for m in ms:
        for r in m["rows"]:
            s = r.get("sampling")
            if s:
                src = (s.get("denovo") or {}).get("source", MISSING)
                sp_lines.append(
                    f"| {m['task']['name']} | {r['generator']} | {s.get('engine', MISSING)} | {s.get('constrained', MISSING)} | {fmt_num(s.get('seconds'))} | "
                    f"{fmt_num(s.get('tokens'))} | {fmt_num(s.get('tokens_per_s'))} | {fmt_num(s.get('valid_per_s'))} | {src} | {s.get('csp_prompts_not_started', MISSING)} |"
                )
    if sp_lines:
        lines += [
            "",
            "Sampling (wall seconds of sampling, engine loading excluded; measured when the row was sampled, de novo from the shared cache at its",
            "own sampling). Not started = CSP prompts whose cell has more atoms than the constraint engine can write within",
            "max_new_tokens: their samples are empty and count as invalid.",
            "",
            "| task | row | engine | constrained | seconds | tokens | tokens/s | valid CIFs/s | de novo samples | CSP prompts not started |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *sp_lines,
        ]
    orc_lines = [f"| {m['task']['name']} | {fmt_num(m['oracle'].get('mae'))} | {fmt_num(m['oracle'].get('r2'))} | {m['oracle'].get('n_fit', MISSING)} |" for m in ms if m.get("oracle")]
    if orc_lines:
        lines += ["", "Property oracles (accuracy on a held-out 20% of the rows with the property):", "", "| task | MAE | R2 | n fit |", "|---|---|---|---|", *orc_lines]
    lines += _champion_table(ms)
    st_lines = []
    for m in ms:
        for r in m["rows"]:
            st = (r.get("denovo") or {}).get("stability")
            if st:
                rt = st["rates"]
                st_lines.append(
                    f"| {m['task']['name']} | {r['generator']} | {st['n_samples']} | {st['n_e_hull']} | {pct(rt['stable']['rate'])} | {pct(rt['metastable']['rate'])} | "
                    f"{pct(rt['sun']['rate'])} | {pct(rt['msun']['rate'])} | {fmt_num(st['e_above_hull']['median'])} |"
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


def _champion_table(ms: list[dict[str, Any]]) -> list[str]:
    """Case 2: champion rate per row (share of valid, novel de novo samples the evaluation oracle places above the
    task's threshold, Wilson interval), unique compositions among the champions, S.U.N. (when stability ran) and the
    row's sampling compute (samples, tokens; best-of-n: its whole screened pool; rl: the adapter's training rollouts
    are in its record, cifllm_adapter.json)."""
    out = []
    for m in ms:
        for r in m["rows"]:
            pr = r.get("property") or {}
            if "champion_rate" not in pr:
                continue
            ch = pr.get("champions") or {}
            sun = (((r.get("denovo") or {}).get("stability") or {}).get("rates") or {}).get("sun") or {}
            s = r.get("sampling") or {}
            scr = r.get("screening") or {}
            n_samples = scr.get("n_pool") or s.get("n_samples")
            out.append(
                f"| {m['task']['name']} | {r['generator']} | {ch.get('n_valid_novel_denovo', MISSING)} | {pct_ci((pr.get('rates') or {}).get('champion_rate'), pr.get('champion_rate'))} | "
                f"{pct(ch.get('unique_compositions'))} | {pct(sun.get('rate'))} | {fmt_num(n_samples)} | {fmt_num(s.get('tokens'))} |"
            )
    if not out:
        return []
    return [
        "",
        "Champions (Case 2, de novo): champion rate = share of the valid, novel de novo samples that the evaluation oracle",
        "places above the task's threshold [Wilson 95%]; unique = distinct compositions among those champions; S.U.N. from",
        "the stability table (n/a: not run); samples / tokens = the row's sampling compute (best-of-n: its screened pool).",
        "",
        "| task | row | valid novel de novo | champion rate | unique compositions (champions) | S.U.N. | samples | tokens |",
        "|---|---|---|---|---|---|---|---|",
        *out,
    ]


def render_per_prompt_md(metrics: dict[str, Any]) -> str:
    """One line per CSP composition per row (prompt order, then row order) of one task's metrics."""
    name = metrics["task"]["name"]
    per: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for r in metrics["rows"]:
        for p in (r.get("csp") or {}).get("per_prompt") or []:
            per.setdefault(p["index"], []).append((r["generator"], p))
    lines = [
        f"# Per-prompt CSP results: {name}",
        "",
        "One line per composition per row: n = samples, valid = valid samples, matched = a valid sample matches the target",
        "(StructureMatcher ltol 0.3, stol 0.5, angle 10), first = index (0-based) of the first matching sample, best RMSE =",
        "smallest normalized RMS displacement of a matching sample. n/a = no match.",
        "",
        "| # | composition | target | row | n | valid | matched | first | best RMSE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in sorted(per):
        for gen, p in per[i]:
            lines.append(
                f"| {i} | {p['formula']} | {p.get('target_id') or MISSING} | {gen} | {p['n_samples']} | {p['n_valid']} | "
                f"{'yes' if p['matched'] else 'no'} | {p['first_match'] if p['first_match'] is not None else MISSING} | {fmt_num(p['best_rmse'])} |"
            )
    return "\n".join(lines) + "\n"
