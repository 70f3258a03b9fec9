"""Time limits, uniqueness, novelty, CSP match and the evaluate stage end to end."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cifllm.cif import structure_to_text
from cifllm.evaluation import (
    EvalConfig,
    ReferenceIndex,
    csp_match_task,
    csp_metrics,
    evaluate,
    evaluate_texts,
    map_with_time_limit,
)
from cifllm.sampling import GenerationParams, Prompt, SampleConfig, sample
from cifllm.sampling.engines import Generation

# ---------------------------------------------------------------- time limits


def _task(x: str) -> str:
    if x == "sleep":
        time.sleep(30)
    if x == "stuck":  # ignores the soft limit (as a long C call would)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(30)
    if x == "crash":
        os._exit(3)
    if x == "raise":
        raise ValueError("bad item")
    if x == "swallow":  # code that catches Exception cannot swallow the timeout
        try:
            time.sleep(30)
        except Exception:
            return "swallowed"
    return x.upper()


@pytest.mark.parametrize("workers", [0, 2])
def test_time_limit_gives_every_item_a_verdict(workers):
    items = ["a", "sleep", "b", "raise", "swallow", "c"]
    if workers:
        items += ["stuck", "crash", "d"]
    got = dict(map_with_time_limit(_task, items, 0.5, workers=workers, on_failure=lambda it, r, d: f"FAIL:{r}", grace_s=1.0))
    assert sorted(got) == list(range(len(items)))
    expect = {"a": "A", "b": "B", "c": "C", "d": "D", "sleep": "FAIL:timeout", "raise": "FAIL:error", "swallow": "FAIL:timeout", "stuck": "FAIL:timeout", "crash": "FAIL:worker_crash"}
    assert [got[i] for i in range(len(items))] == [expect[x] for x in items]


def test_time_limit_without_handler_raises():
    with pytest.raises(RuntimeError, match="error"):
        list(map_with_time_limit(_task, ["raise"], 1.0, workers=0))


# ---------------------------------------------------------------- CSP


@pytest.fixture(scope="module")
def texts(structures) -> list[str]:
    return [structure_to_text(s) for s in structures]


def test_csp_ground_truth_vs_itself_matches_100_percent(texts):
    rms = {str(i): csp_match_task((t, [t])) for i, t in enumerate(texts)}
    m = csp_metrics(rms, [1])
    assert m["match@1"] == 1.0 and m["n_matched@1"] == len(texts)
    assert m["rmse@1"] == pytest.approx(0.0, abs=1e-6)


def test_csp_ground_truth_vs_shuffled_compositions_matches_0_percent(texts):
    # a derangement: every target gets another target's structure (all prototype formulas differ)
    from pymatgen.core import Composition

    assert len({Composition(t.splitlines()[0][5:]).reduced_formula for t in texts}) == len(texts)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    perm = [0] * len(texts)
    for j, i in enumerate(order):  # one cycle through a random order: no fixed point
        perm[i] = order[(j + 1) % len(order)]
    rms = {str(i): csp_match_task((texts[i], [texts[perm[i]]])) for i in range(len(texts))}
    assert all(perm[i] != i for i in range(len(texts)))
    m = csp_metrics(rms, [1])
    assert m["match@1"] == 0.0 and m["rmse@1"] is None


def test_csp_match_at_k_counts_only_valid_predictions(texts, structures):
    nacl = texts[0]
    kbr = texts[2]
    stretched = structures[0].copy()
    stretched.scale_lattice(stretched.volume * 1.05)
    rms = {
        "a": csp_match_task((nacl, [kbr, None, structure_to_text(stretched)])),  # match only at the 3rd sample
        "b": csp_match_task((nacl, [None, nacl])),  # the invalid first sample does not count
        "c": csp_match_task((nacl, [kbr, kbr, kbr])),
    }
    m = csp_metrics(rms, [1, 2, 3])
    assert m["match@1"] == 0.0
    assert m["match@2"] == pytest.approx(1 / 3)
    assert m["match@3"] == pytest.approx(2 / 3)
    assert m["rmse@3"] is not None and m["rmse@3"] >= 0


# ---------------------------------------------------------------- uniqueness and novelty


def test_uniqueness_and_novelty(texts, structures, tiny_corpus):
    ref = ReferenceIndex.from_corpus(tiny_corpus)
    assert len(ref) == len(texts)
    assert ref.bucket("NaCl") and ref.bucket("Xe") == []
    from pymatgen.core import Lattice, Structure

    new = structure_to_text(Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.0), ["Rb", "I"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    strained = structures[1].copy()  # MgO, 3% larger: a different text, the same structure for the matcher
    strained.scale_lattice(strained.volume * 1.03**3)
    strained_text = structure_to_text(strained)
    assert strained_text != texts[1]
    batch = [texts[0], texts[0], new, new, texts[1], "garbage", strained_text]
    v = evaluate_texts(batch, workers=0, reference=ref)
    assert [x["valid"] for x in v] == [True, True, True, True, True, False, True]
    assert [x["unique"] for x in v] == [True, False, True, False, True, None, False]
    assert v[1]["duplicate_of"] == 0 and v[3]["duplicate_of"] == 2 and v[6]["duplicate_of"] == 4
    assert [x["novel"] for x in v] == [False, False, True, True, False, None, False]
    assert v[6]["novel_match"] == v[4]["novel_match"]
    assert v[0]["novel_match"] in ref.bucket_ids("NaCl")
    # the same with worker processes
    v2 = evaluate_texts(batch, workers=2, reference=ref)
    assert [(x["unique"], x["novel"], x["reason"]) for x in v2] == [(x["unique"], x["novel"], x["reason"]) for x in v]


def test_reference_index_from_texts(texts):
    ref = ReferenceIndex.from_texts(texts)
    assert len(ref.bucket("NaCl")) == 1 and len(ref.buckets) == len(texts)


# ---------------------------------------------------------------- end to end


class _TruthEngine:
    """A fake engine that continues a CSP prompt with its ground-truth text (or garbage for every 2nd sample)."""

    name = "fake"

    def __init__(self, truth: dict[str, str]) -> None:
        self.truth = truth

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, counts=None, progress=None) -> Iterator[Generation]:
        counts = counts or [params.num_samples] * len(prompts)
        for i, p in enumerate(prompts):
            t = self.truth[p.meta["target_id"]]
            for k in range(counts[i]):
                text = t[len(p.text) :] if k % 2 == 0 else "_symmetry_space_group_name_H-M"
                yield Generation(i, k, text, len(text), True, params.seed, 0.0, 0)
            if progress:
                progress(counts[i])


def test_sample_and_evaluate_end_to_end(tiny_corpus, tmp_path):
    from cifllm.cli import main
    from cifllm.data.corpus import load_corpus

    ds = load_corpus(tiny_corpus, split="val")
    truth = dict(zip(ds["id"], ds["text"], strict=True))
    cfg = SampleConfig(out=str(tmp_path / "run"), csp_corpus=str(tiny_corpus), csp_split="val", num_samples=2)
    run = sample(cfg, engine=_TruthEngine(truth), progress=False, log=lambda s: None)
    rc = main(["evaluate", "--no-progress", f"samples={run}", f"reference={tiny_corpus}", f"ground_truth={tiny_corpus}", "workers=2", "time_limit_s=30"])
    assert rc == 0
    out = run / "eval"
    m = json.loads((out / "metrics.json").read_text())
    n = 2 * len(ds)
    assert m["n_samples"] == n
    assert m["counts"]["parse"] == m["counts"]["valid_all"] == len(ds)
    assert m["first_failure"]["bad_line"] == len(ds)
    assert m["counts"]["novel"] == 0  # the ground truth is in the reference corpus
    assert m["counts"]["unique"] == len(ds)
    assert m["csp"]["match@1"] == 1.0 and m["csp"]["match@2"] == 1.0 and m["csp"]["n_targets"] == len(ds)
    assert m["csp"]["rmse@1"] == pytest.approx(0.0, abs=1e-6)
    assert "match@k" in m["definitions"] and m["settings"]["matchers"]["csp"]["stol"] == 0.5
    recs = [json.loads(x) for x in (out / "checks.jsonl").read_text().splitlines()]
    assert len(recs) == n and all(r["reason"] or r["valid_all"] for r in recs)
    for f in ("report.md", "report.html", "plots/funnel.png", "plots/density.png", "plots/n_elements.png", "plots/sg_number.png", "config.yaml"):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "match@1" in html


def test_evaluate_handles_garbage_and_empty_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        json.dumps({"sample_id": "a", "cif_text": ""}),
        "{broken json",
        json.dumps({"sample_id": "c", "text": "data_Na4Cl4\n_cell_length_a 1e308"}),
        json.dumps({"sample_id": "d", "cif_text": "data_X\n" * 5000}),
    ]
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    out = evaluate(EvalConfig(samples=str(run), workers=0), progress=False, log=lambda s: None)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_samples"] == 4 and m["counts"]["parse"] == 0
    recs = [json.loads(x) for x in (out / "checks.jsonl").read_text().splitlines()]
    assert all(r["reason"] for r in recs)
    (run / "samples.jsonl").write_text("")
    out = evaluate(EvalConfig(samples=str(run), workers=0, out=str(tmp_path / "e2")), progress=False, log=lambda s: None)
    assert json.loads((Path(out) / "metrics.json").read_text())["n_samples"] == 0


def test_evaluate_cli_errors_cleanly(tmp_path, capsys):
    from cifllm.cli import main

    assert main(["evaluate", f"samples={tmp_path / 'missing'}"]) == 2
    assert "no samples.jsonl" in capsys.readouterr().err
    assert main(["evaluate", "samples=x", "stol=3"]) == 2
