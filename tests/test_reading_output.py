"""What a person reads after a run: no pymatgen noise on stderr, report plots whose label matches what is plotted,
a timing table with the sampling time, and output files with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _noble_gas_texts() -> list[str]:
    from pymatgen.core import Lattice, Structure

    from cifllm.cif import structure_to_text

    return [structure_to_text(Structure(Lattice.cubic(5.0), [el, "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])) for el in ("He", "Ne", "Ar")]


def test_a_run_on_noble_gases_prints_no_missing_electronegativity_warning(tmp_path):
    """`cifllm evaluate` on He/Ne/Ar samples, every warning shown (-W always): pymatgen's "No Pauling
    electronegativity" warning (one per element, from inside every formula reduction) is not printed."""
    run = tmp_path / "run"
    run.mkdir()
    with (run / "samples.jsonl").open("w") as fh:
        for i, t in enumerate(_noble_gas_texts()):
            fh.write(json.dumps({"sample_id": f"s{i}", "cif_text": t, "prompt_meta": {}}) + "\n")
    r = subprocess.run(
        [sys.executable, "-W", "always", "-m", "cifllm.cli", "evaluate", "--no-progress", f"samples={run}", "workers=0", "report=false"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "eval" / "metrics.json").read_text())["counts"]["parse"] == 3  # the noble gases were read
    assert "Pauling" not in r.stderr, r.stderr[-2000:]


def test_the_electronegativity_filter_is_targeted():
    """Importing cifllm.cif adds one ignore filter for that message (UserWarning) and no ignore filter without a
    message (pymatgen, ruamel and numpy add their own filters on import); other warnings still show."""
    code = (
        "import warnings, json\n"
        "before = list(warnings.filters)\n"
        "import cifllm.cif\n"
        "new = [f for f in warnings.filters if f not in before]\n"
        "print(json.dumps([[f[0], f[1].pattern if f[1] else None, f[2].__name__, f[3].pattern if f[3] else None] for f in new]))\n"
        "warnings.warn('No Pauling electronegativity table loaded', UserWarning)\n"  # another message: shown
        "warnings.simplefilter('always')\n"  # filters reset after the import: the values are already read quietly
        "from pymatgen.core import Element\n"
        "print(Element('Ne').X != Element('Ne').X)\n"  # NaN, silently
    )
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    ignores = [f for f in json.loads(lines[0]) if f[0] == "ignore"]
    ours = [f for f in ignores if (f[1] or "").startswith("No Pauling electronegativity for ")]
    assert ours == [["ignore", ours[0][1], "UserWarning", None]]
    assert not [f for f in ignores if not f[1]]  # no blanket ignore
    assert lines[1] == "True"
    assert "No Pauling electronegativity table loaded" in r.stderr and "Pauling electronegativity for" not in r.stderr


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_plain_open_gives(tmp_path, umask):
    """Atomic writes go through a mkstemp file (0600); the written file has 0666 minus the umask, as open() gives,
    when created and when replaced."""
    from cifllm.utils import atomic_write_json, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.md", "x")
        atomic_write_text(tmp_path / "a.md", "y")  # replaced
        atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1})
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("z")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("a.md", "sub/b.json", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_sampling_seconds_is_measured_or_not_measured():
    from cifllm.evaluation.report import sampling_seconds

    assert sampling_seconds([{"time_s": 0.25}, {"time_s": 0.5}]) == 0.75
    assert sampling_seconds([{"time_s": 0.25}, {"cif_text": "x"}]) is None  # one record without its time: n/a, not 0
    assert sampling_seconds([{"time_s": True}]) is None and sampling_seconds([]) is None


def _crystals():
    """Six small ordered crystals built directly (Structure.from_spacegroup is slow): rock salts and CsCl types."""
    from pymatgen.core import Lattice, Structure

    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    out = [Structure(Lattice.cubic(a), [x] * 4 + [y] * 4, fcc + [[(u + 0.5) % 1, v, w] for u, v, w in fcc]) for x, y, a in (("Na", "Cl", 5.64), ("Mg", "O", 4.21), ("K", "Br", 6.6))]
    out += [Structure(Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]]) for x, y, a in (("Cs", "Cl", 4.12), ("Cs", "Br", 4.29), ("Ti", "Zr", 3.2))]
    return out


def test_report_plots_shares_times_sampling_and_names_the_verdicts(tmp_path, monkeypatch):
    """The evaluate stage's report: each distribution series' bars sum to 1 and the axis says share; the timing table
    has the sampling time read from the samples' records (n/a for an old metrics.json); the failure table names the
    verdict each failing check belongs to; report files are 0644 under umask 022."""
    import matplotlib.axes

    from cifllm.cif import structure_to_text
    from cifllm.evaluation.report import SHARE_LABEL, write_report
    from cifllm.evaluation.run import EvalConfig, evaluate

    plotted: list[tuple[str, float]] = []
    ylabels: list[str] = []
    real_hist, real_ylabel = matplotlib.axes.Axes.hist, matplotlib.axes.Axes.set_ylabel

    def hist(self, x, *a, **k):
        out = real_hist(self, x, *a, **k)
        plotted.append((k.get("label", ""), float(sum(out[0]))))
        return out

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", hist)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda self, s, *a, **k: (ylabels.append(s), real_ylabel(self, s, *a, **k))[1])
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"sample_id": f"s{i}", "cif_text": structure_to_text(s), "prompt_meta": {}, "time_s": 0.125} for i, s in enumerate(_crystals())]
    recs.append({"sample_id": "bad", "cif_text": "data_X\n_cell_length_a oops\n", "prompt_meta": {}, "time_s": 0.25})
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    old = os.umask(0o022)
    try:
        out = evaluate(EvalConfig(samples=str(run), workers=0, uniqueness=False), progress=False, log=lambda m: None)
    finally:
        os.umask(old)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timing"]["sampling_s"] == 1.0
    assert len(plotted) == 3 and all(v == pytest.approx(1.0) for _, v in plotted), plotted  # density, n_elements, sg_number
    assert ylabels.count(SHARE_LABEL) == 3 and "share" not in [y for y in ylabels if y != SHARE_LABEL]
    md = (out / "report.md").read_text()
    assert "| sampling (cifllm sample, generation) | 1.0000 |" in md and "| evaluate (total) |" in md
    assert "| parse | CDVAE-valid and CrystaLLM-consistent | " in md
    for name in ("report.md", "report.html", "metrics.json", "checks.jsonl", "config.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    # a metrics.json written before the sampling time was recorded: the row reads n/a, never 0
    del metrics["timing"]["sampling_s"]
    (tmp_path / "old").mkdir()
    write_report(tmp_path / "old", metrics, [])
    assert "| sampling (cifllm sample, generation) | n/a |" in (tmp_path / "old" / "report.md").read_text()
