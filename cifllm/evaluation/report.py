"""Markdown and HTML reports with plots (matplotlib, Agg backend): validity funnel, density, number of elements and
space-group distributions of the valid samples against the reference corpus.

The distribution plots show shares: each bar is the count in its bin over the series' total, so each series' bars
sum to 1 (a sample outside the plotted range, e.g. density > 30 g/cm^3, is left out of the bars but counted in the
total). The failure table names the verdict each check belongs to (CDVAE validity or CrystaLLM self-consistency), so
a valid sample that fails the bond-length rule does not read as a contradiction."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifllm.core.records import REPORT_FILE
from cifllm.evaluation.checks import CONSISTENCY_CHECKS, VALIDITY_CHECKS
from cifllm.utils import atomic_write_text

__all__ = ["FUNNEL", "SHARE_LABEL", "sampling_seconds", "verdict_of_check", "write_report"]

#: y label of the distribution plots: the plotted quantity is count / total per series
SHARE_LABEL = "share of the series (bars sum to 1)"

#: (label, key in metrics["counts"]) from all samples down to unique and novel ones.
FUNNEL: tuple[tuple[str, str], ...] = (
    ("parsed", "parse"),
    ("cell sane", "cell"),
    ("structurally valid", "structural"),
    ("compositionally valid", "compositional"),
    ("valid (CDVAE)", "valid"),
    ("+ self-consistent (CrystaLLM definition)", "valid_all"),
    ("valid & unique", "unique"),
    ("valid & novel", "novel"),
    ("valid, unique & novel", "unique_novel"),
)


def _plots(out: Path, metrics: dict[str, Any], verdicts: Sequence[dict[str, Any]], ref: dict[str, list[float]] | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = out / "plots"
    pdir.mkdir(exist_ok=True)
    made: list[tuple[str, str]] = []
    n = metrics["n_samples"]
    counts = metrics["counts"]

    fig, ax = plt.subplots(figsize=(7, 4))
    funnel = [(lab, k) for lab, k in FUNNEL if counts.get(k) is not None]  # novelty not measured: no bar, not 0
    labels = ["all samples"] + [lab for lab, _ in funnel]
    values = [n] + [counts.get(k, 0) for _, k in funnel]
    ax.barh(labels[::-1], values[::-1], color="#4477aa")
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v} ({100 * v / n:.1f}%)" if n else " 0", va="center", fontsize=8)
    ax.set_xlabel("samples")
    ax.set_title("Validity funnel")
    ax.set_xlim(0, max(values + [1]) * 1.3)
    fig.tight_layout()
    fig.savefig(pdir / "funnel.png", dpi=100)
    plt.close(fig)
    made.append(("Validity funnel", "plots/funnel.png"))

    valid = [v for v in verdicts if v.get("valid")]
    series = {
        "density": ([v["density"] for v in valid if v.get("density") is not None], "density (g/cm$^3$)"),
        "n_elements": ([float(v["n_elements"]) for v in valid if v.get("n_elements") is not None], "number of elements"),
        "sg_number": ([float(v["sg_detected"] or v["sg_stated"]) for v in valid if (v.get("sg_detected") or v.get("sg_stated"))], "space-group number"),
    }
    for key, (vals, xlabel) in series.items():
        ref_vals = (ref or {}).get(key) or []
        if not vals and not ref_vals:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if key == "n_elements":
            hi = int(max(vals + ref_vals + [1]))
            bins: Any = [x + 0.5 for x in range(0, hi + 1)]
        elif key == "sg_number":
            bins = [x + 0.5 for x in range(0, 231)]
        else:
            lo_, hi_ = 0.0, max(vals + ref_vals + [1.0])
            hi_ = min(hi_, 30.0)
            bins = [lo_ + (hi_ - lo_) * k / 50 for k in range(51)]
        if ref_vals:
            ax.hist(ref_vals, bins=bins, weights=_shares(ref_vals), alpha=0.5, label=f"reference (n={len(ref_vals)})", color="#999999")
        if vals:
            ax.hist(vals, bins=bins, weights=_shares(vals), alpha=0.6, label=f"valid samples (n={len(vals)})", color="#ee6677")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(SHARE_LABEL)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(pdir / f"{key}.png", dpi=100)
        plt.close(fig)
        made.append((xlabel.replace("$^3$", "^3").capitalize(), f"plots/{key}.png"))
    return made


def _shares(vals: Sequence[float]) -> list[float]:
    """Histogram weights that make each bar the share count / total of its series (bars sum to 1)."""
    return [1.0 / len(vals)] * len(vals)


def verdict_of_check(check: str) -> str:
    """The aggregate verdict a failing ``check`` makes a sample fail: CDVAE validity (parse and cell also stop the
    CrystaLLM checks), CrystaLLM self-consistency, or none (an informational check such as ``volume``)."""
    if check in ("parse", "cell"):
        return "CDVAE-valid and CrystaLLM-consistent"
    if check in VALIDITY_CHECKS:
        return "CDVAE-valid"
    if check in CONSISTENCY_CHECKS:
        return "CrystaLLM-consistent"
    return "none (informational)"


def sampling_seconds(samples: Sequence[dict[str, Any]]) -> float | None:
    """Seconds the sampling stage spent generating ``samples``: the sum of their records' ``time_s`` (each sample's
    share of its batch's wall time, written by ``cifllm sample``); None (not measured) when any record lacks it, e.g.
    plain CIF texts or samples from elsewhere."""
    times = [s.get("time_s") for s in samples]
    if not times or not all(isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 for t in times):
        return None
    return round(float(sum(times)), 3)  # type: ignore[arg-type]


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _tables(metrics: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    n = metrics["n_samples"]
    defs = metrics.get("definitions", {})
    rows = [[k, "not measured" if c is None else str(c), _fmt(metrics["rates"].get(k)), defs.get(k, "")] for k, c in metrics["counts"].items()]
    tables = [("Counts and rates (over all samples)", ["metric", "count", f"rate (n={n})", "definition"], rows)]
    rv = metrics.get("rates_among_valid", {})
    tables.append(("Rates among valid samples", ["metric", "rate"], [[k, _fmt(v)] for k, v in rv.items()]))
    agree = metrics.get("consistency_agreement")
    if agree:
        tables.append(("Self-consistency: CrystaLLM's definition vs the strict rule", ["consistent (CrystaLLM)", "consistent_strict", "samples"], [
            ["pass", "pass", str(agree.get("both"))], ["pass", "fail", str(agree.get("crystallm_only"))],
            ["fail", "pass", str(agree.get("strict_only"))], ["fail", "fail", str(agree.get("neither"))]]))
    fr = []
    for check, reasons in metrics.get("failure_reasons", {}).items():
        for reason, c in reasons.items():
            fr.append([check, verdict_of_check(check), reason, str(c)])
    tables.append(("Failures by check and reason", ["check", "verdict it fails", "reason", "samples"], fr))
    if "csp" in metrics:
        tables.append(("Crystal structure prediction", ["metric", "value"], [[k, _fmt(v)] for k, v in metrics["csp"].items()]))
    if "stability" in metrics:
        tables += _stability_tables(metrics["stability"])
    t = metrics.get("timing", {})
    rows_t = [["sampling (cifllm sample, generation)", _fmt(t.get("sampling_s"))]]  # absent (older metrics.json): n/a
    rows_t += [[f"evaluate: {k}", _fmt(v)] for k, v in t.get("stages_s", {}).items()] + [["evaluate (total)", _fmt(t.get("wall_s"))]]
    tables.append(("Timing", ["stage", "seconds"], rows_t))
    return tables


def _stability_tables(st: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Stability rates (Wilson 95% intervals), distributions and the reasons samples have no verdict."""
    def ci(r: dict[str, Any]) -> str:
        return "n/a" if not r.get("ci95") else f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"

    defs = st.get("definitions", {})
    rows = []
    for k, r in st["rates"].items():
        rm = st["rates_among_measured"][k]
        rows.append([k, _fmt(r["count"]), f"{_fmt(r['rate'])} {ci(r)} (n={r['n']})", f"{_fmt(rm['rate'])} {ci(rm)} (n={rm['n']})", defs.get(k, "")])
    dist = [[name, *(_fmt(st[name].get(q)) for q in ("n", "min", "median", "mean", "p90", "max"))] for name in ("e_above_hull", "rmsd_A", "steps", "relax_time_s")]
    run = st.get("run", {})
    return [
        (f"Stability ({run.get('potential', 'potential')})", ["metric", "count", "rate over all samples [95% CI]", "rate among samples with E_hull", "definition"], rows),
        ("Stability distributions (E_hull eV/atom, RMSD A, optimizer steps, seconds per relaxation)", ["quantity", "n", "min", "median", "mean", "p90", "max"], dist),
        ("Samples without a stability verdict", ["reason", "samples"], [[k, str(v)] for k, v in st.get("reasons", {}).items()]),
        ("Stability caveats", ["caveat"], [[c] for c in st.get("caveats", [])]),
    ]


def write_report(out: Path, metrics: dict[str, Any], verdicts: Sequence[dict[str, Any]], ref: dict[str, list[float]] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` (plots in ``plots/``) and a self-contained ``report.html``; returns both paths."""
    out = Path(out)
    plots = _plots(out, metrics, verdicts, ref) + [tuple(p) for p in metrics.get("stability", {}).get("plots", [])]
    tables = _tables(metrics)
    md = ["# cifllm evaluation report", "", f"{metrics['n_samples']} samples. Definitions and tolerances: `metrics.json`.", ""]
    for title, header, rows in tables:
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        md.append("")
    md.append("## Plots")
    md.append("")
    for title, rel in plots:
        md += [f"### {title}", "", f"![{title}]({rel})", ""]
    atomic_write_text(out / REPORT_FILE, "\n".join(md))

    h = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cifllm evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}</style></head><body>",
        "<h1>cifllm evaluation report</h1>",
        f"<p>{metrics['n_samples']} samples. Definitions and tolerances: <code>metrics.json</code>.</p>",
    ]
    for title, header, rows in tables:
        h.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>")
        h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        h.append("</table>")
    h.append("<h2>Plots</h2>")
    for title, rel in plots:
        data = base64.b64encode((out / rel).read_bytes()).decode()
        h.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    h.append("</body></html>")
    atomic_write_text(out / "report.html", "\n".join(h))
    return out / REPORT_FILE, out / "report.html"
