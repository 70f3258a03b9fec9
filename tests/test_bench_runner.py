"""The benchmark runner's resumable rows, shared de novo samples, comparison rows, intervals, per-prompt results and
size buckets (tiny random models, in-process)."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import yaml

from cifllm.bench import runner as bench_runner
from cifllm.bench.report import render_per_prompt_md
from cifllm.bench.runner import BenchConfig, run_bench
from cifllm.bench.splits import build_split
from cifllm.bench.stats import (
    ELEMENT_BUCKETS,
    SITE_BUCKETS,
    UNPARSED,
    bootstrap_spearman,
    rate,
    reference_shares,
    size_buckets,
    size_matched_validity,
)
from cifllm.bench.tasks import TaskSpec
from cifllm.cif import structure_to_text
from cifllm.config import ConfigError, config_to_dict
from cifllm.core.report import wilson_interval
from cifllm.evaluation.run import evaluate_texts
from cifllm.sampling.generation import generate as real_generate

# --- pure statistics ---------------------------------------------------------------------------------------------


def test_rate_has_wilson_interval_for_a_known_count():
    r = rate(3, 10)
    assert r["count"] == 3 and r["n"] == 10 and r["rate"] == pytest.approx(0.3)
    # the Wilson score interval of 3/10 at 95% is [0.1078, 0.6032] (Newcombe 1998, table I)
    assert r["ci95"] == pytest.approx([0.1078, 0.6032], abs=5e-4)
    assert rate(0, 0) == {"count": 0, "n": 0, "rate": None, "ci95": None}


def test_size_buckets_on_cif_texts_with_known_site_counts(structures):
    by = {s.composition.reduced_formula: s for s in structures}
    picks = {"NaCl": 8, "CsCl": 2, "SrTiO3": 5, "Fe": 2, "Cu": 4, "CaF2": 12}  # sites in the conventional cells
    texts = []
    for f, n in picks.items():
        assert len(by[f]) == n
        texts.append(structure_to_text(by[f]))
    texts.append("data_junk\nthis is not a CIF\n")
    verd = evaluate_texts(texts, workers=0, uniqueness=False)
    assert [v["n_sites"] for v in verd] == [8, 2, 5, 2, 4, 12, None]
    assert [v["n_elements"] for v in verd] == [2, 2, 3, 1, 1, 2, None]
    valid = [bool(v["valid"]) for v in verd]
    assert valid[-1] is False
    sites = size_buckets([v["n_sites"] for v in verd], valid, SITE_BUCKETS)
    assert {k: b["n"] for k, b in sites.items()} == {"1-4": 3, "5-8": 2, "9-16": 1, "17-32": 0, ">32": 0, UNPARSED: 1}
    assert sites["1-4"]["share"] == pytest.approx(3 / 7) and sites[UNPARSED]["valid"]["count"] == 0
    assert sites["17-32"]["valid"]["rate"] is None  # no samples: not measured
    elems = size_buckets([v["n_elements"] for v in verd], valid, ELEMENT_BUCKETS)
    assert {k: b["n"] for k, b in elems.items()} == {"1": 2, "2": 3, "3": 1, "4": 0, ">=5": 0, UNPARSED: 1}
    assert reference_shares([1, 4, 5, 40, 0], SITE_BUCKETS) == {"n": 4, "n_outside": 1, "shares": {"1-4": 0.5, "5-8": 0.25, "9-16": 0.0, "17-32": 0.0, ">32": 0.25}}


def test_size_matched_validity_on_a_constructed_example():
    # 8 samples: four of 1-4 sites (2 valid), two of 5-8 sites (both valid), two that do not parse (invalid)
    sizes = [2, 3, 4, 4, 6, 7, None, None]
    valid = [True, True, False, False, True, True, False, False]
    b = size_buckets(sizes, valid, SITE_BUCKETS)
    ref = {"1-4": 0.25, "5-8": 0.75, "9-16": 0.0, "17-32": 0.0, ">32": 0.0}
    # parsed share 6/8 x (0.25 x 2/4 + 0.75 x 2/2) = 0.75 x 0.875
    assert size_matched_validity(b, ref) == pytest.approx(0.65625)
    # all parsed: the plain reweighting
    b2 = size_buckets([2, 3, 6, 7], [True, False, True, True], SITE_BUCKETS)
    assert size_matched_validity(b2, ref) == pytest.approx(0.25 * 0.5 + 0.75 * 1.0)
    # the reference uses a bucket without samples: n/a
    assert size_matched_validity(b2, {**ref, "9-16": 0.1}) is None
    assert size_matched_validity(size_buckets([], [], SITE_BUCKETS), ref) is None


def test_bootstrap_spearman_interval():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    up = bootstrap_spearman(xs, [x * 2 for x in xs], seed=0)
    assert up["rho"] == pytest.approx(1.0) and up["ci95"] == [1.0, 1.0] and up["n"] == 8 and up["n_boot"] == 1000
    noisy_y = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    a, b = bootstrap_spearman(xs, noisy_y, seed=3), bootstrap_spearman(xs, noisy_y, seed=3)
    assert a == b and a["ci95"][0] < a["rho"] < a["ci95"][1]
    assert bootstrap_spearman([1.0, 2.0], [1.0, 2.0])["rho"] is None  # too few pairs
    assert bootstrap_spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["rho"] is None  # one asked value only


def test_per_prompt_markdown_content():
    pp = [
        {"index": 0, "formula": "Na4Cl4", "target_id": "t0", "n_samples": 3, "n_valid": 2, "matched": True, "first_match": 1, "best_rmse": 0.0123},
        {"index": 1, "formula": "Cs1Cl1", "target_id": "t1", "n_samples": 3, "n_valid": 0, "matched": False, "first_match": None, "best_rmse": None},
    ]
    m = {"task": {"name": "toy"}, "rows": [{"generator": "base", "csp": {"per_prompt": pp}}, {"generator": "template", "csp": {"per_prompt": pp[:1]}}]}
    md = render_per_prompt_md(m)
    lines = [x for x in md.splitlines() if x.startswith("| ") and x[2].isdigit()]
    assert lines == [
        "| 0 | Na4Cl4 | t0 | base | 3 | 2 | yes | 1 | 0.0123 |",
        "| 0 | Na4Cl4 | t0 | template | 3 | 2 | yes | 1 | 0.0123 |",
        "| 1 | Cs1Cl1 | t1 | base | 3 | 0 | no | n/a | n/a |",
    ]


# --- the runner ---------------------------------------------------------------------------------------------------


def _as_cif_v1(model, dest):
    """A copy of a model folder that says it writes cif-v1 text (auto constraint setting: off)."""
    shutil.copytree(model, dest)
    meta = json.loads((dest / "cifllm_tokenizer.json").read_text())
    (dest / "cifllm_tokenizer.json").write_text(json.dumps({**meta, "version": "cif-v1"}))
    return str(dest)


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory, tiny_corpus, toy_model):
    """Two tasks over the tiny corpus (their splits and task files); the toy cif-v2 model and two cif-v1 models (the
    toy model and another random one) that sample unconstrained, so that a run takes seconds."""
    from cifllm.sampling.toy import save_random_llama

    root = tmp_path_factory.mktemp("bench")
    tasks = {}
    for name, seed in (("ta", 0), ("tb", 1)):
        t = TaskSpec(name=name, case=0, description="d", rule="random_formula", sources=("prototypes",), test_fraction=0.3, seed=seed, metrics=("csp", "denovo", "rediscovery"))
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config_to_dict(t)))
        build_split(t, tiny_corpus, root / "splits", workers=1)
        tasks[name] = str(root / f"{name}.yaml")
    other = save_random_llama(root / "other", shape="test", max_positions=256, seed=1)
    return {
        "root": root, "tasks": tasks, "v2": str(toy_model), "model": _as_cif_v1(toy_model, root / "model-v1"),
        "old": _as_cif_v1(other, root / "old-v1"), "corpus": str(tiny_corpus),
    }


def _cfg(env, out, task="ta", **kw) -> BenchConfig:
    base = dict(task=env["tasks"][task], model=env["model"], splits=str(env["root"] / "splits"), corpus=env["corpus"], out=str(out), n_prompts=2, n_samples=2, n_denovo=3, max_new_tokens=16, workers=0, time_limit_s=10.0)
    return BenchConfig(**{**base, **kw})


class _Spy:
    """Wraps ``generate`` in the runner: records every call's prompt texts; ``fail=True`` makes any call an error."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        real = real_generate

        def spy(prompts, *a, **k):
            if fail:
                raise AssertionError("generate must not be called")
            self.calls.append([p.text for p in prompts])
            return real(prompts, *a, **k)

        monkeypatch.setattr(bench_runner, "generate", spy)


def _strip_run_fields(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_rows_resume_compare_and_ablation(bench_env, tmp_path, monkeypatch):
    out = tmp_path / "res"
    logs: list[str] = []
    spy = _Spy(monkeypatch)
    cfg = _cfg(bench_env, out, compare_models={"old": bench_env["old"]}, constraint_ablation=True)
    res = run_bench(cfg, log=logs.append)
    # a cif-v1 base samples unconstrained (auto): no ablation row, said so
    assert [r["generator"] for r in res["rows"]] == ["base", "old", "template"]
    assert any("no base-unconstrained row" in x for x in logs)
    assert len(spy.calls) == 4  # per model row: CSP prompts, then the BOS-only de novo prompt
    rows_dir = out / "ta" / "rows"
    for name in ("base", "old", "template"):
        rec = json.loads((rows_dir / f"{name}.json").read_text())
        assert rec["status"] == "scored" and rec["fingerprint"]["n_samples"] == 2
        samples = [json.loads(x) for x in (rows_dir / f"{name}.samples.jsonl").read_text().splitlines()]
        assert {"kind", "prompt_index", "text", "valid", "reason", "n_sites"} <= set(samples[0])
    base = res["rows"][0]
    samples = [json.loads(x) for x in (rows_dir / "base.samples.jsonl").read_text().splitlines()]
    dn = [s for s in samples if s["kind"] == "denovo"]
    assert len(dn) == 3 and len([s for s in samples if s["kind"] == "csp"]) == 4
    # intervals: counts from the samples, Wilson interval of that count
    v = base["denovo"]["rates"]["valid"]
    assert v["n"] == 3 and v["count"] == sum(bool(s["valid"]) for s in dn) and v["ci95"] == list(wilson_interval(v["count"], 3))
    c = base["csp"]["rates"]
    assert c["match@1"]["n"] == 2 and c["match@2"]["n"] == 2 and c["validity"]["n"] == 4
    assert base["rediscovery"]["rates"]["rate"]["n"] == res["split_counts"]["test"]
    # throughput measured with the row
    sp = base["sampling"]
    assert sp["seconds"] > 0 and sp["tokens"] > 0 and sp["tokens_per_s"] == pytest.approx(sp["tokens"] / sp["seconds"])
    assert res["rows"][-1]["sampling"]["tokens"] is None  # the template baseline writes no tokens
    # per-prompt results: one line per composition per row with CSP
    pp = base["csp"]["per_prompt"]
    assert len(pp) == 2 and all(p["n_samples"] == 2 for p in pp)
    assert pp[0]["n_valid"] == sum(bool(s["valid"]) for s in samples if s["kind"] == "csp" and s["prompt_index"] == 0)
    md = (out / "ta" / "per_prompt.md").read_text()
    assert sum(1 for x in md.splitlines() if x.startswith(f"| 0 | {pp[0]['formula']} |")) == 3
    bench_md = (out / "BENCH.md").read_text()
    assert "| ta | 0 | base | 2×2 |" in bench_md and "| ta | 0 | old | 2×2 |" in bench_md and "size-matched valid" in bench_md
    # sizes: every de novo sample in exactly one site bucket; reference shares from the corpus
    assert sum(b["n"] for b in base["denovo"]["sizes"]["sites"].values()) == 3
    assert sum(x for x in res["reference_sizes"]["sites"]["shares"].values()) == pytest.approx(1.0)

    # rerun, same config: every row loaded, nothing sampled (generate and the template baseline must not run)
    monkeypatch.setattr(bench_runner, "TemplateBaseline", None)
    _Spy(monkeypatch, fail=True)
    logs2: list[str] = []
    res2 = run_bench(cfg, log=logs2.append)
    assert _strip_run_fields(res2["rows"]) == _strip_run_fields(res["rows"])
    assert sum("loaded from" in x for x in logs2) == 3

    # other settings: regenerated, and said so in one line; the shared de novo samples are still reused
    spy3 = _Spy(monkeypatch)
    logs3: list[str] = []
    res3 = run_bench(_cfg(bench_env, out, n_samples=3, template_baseline=False), log=logs3.append)
    assert [r["generator"] for r in res3["rows"]] == ["base"] and res3["rows"][0]["csp"]["samples_per_prompt"] == 3
    assert any("row base: saved with other settings (n_samples 2 -> 3)" in x for x in logs3)
    assert spy3.calls and all("" not in c for c in spy3.calls)  # no de novo prompt: taken from the shared cache
    assert res3["rows"][0]["sampling"]["denovo"]["source"] == "shared cache"


def test_shared_denovo_across_tasks_and_generate_stage(bench_env, tmp_path, monkeypatch):
    out = tmp_path / "res"
    spy = _Spy(monkeypatch)
    # stage=generate samples and saves, no scoring, no metrics.json
    gen = run_bench(_cfg(bench_env, out, task="ta", stage="generate", template_baseline=False), log=lambda m: None)
    assert gen["rows"] == [{"generator": "base", "status": "generated"}]
    assert not (out / "ta" / "metrics.json").exists() and json.loads((out / "ta" / "rows" / "base.json").read_text())["status"] == "generated"
    assert [c for c in spy.calls if c == [""]]  # the de novo prompt was sampled once
    n_first = len(spy.calls)
    # the second task: its CSP prompts are sampled, its de novo samples come from the shared cache
    logs: list[str] = []
    res_b = run_bench(_cfg(bench_env, out, task="tb", template_baseline=False), log=logs.append)
    new_calls = spy.calls[n_first:]
    assert len(new_calls) == 1 and "" not in new_calls[0]
    assert any("from the shared cache" in x for x in logs)
    shared = list((out / "_shared").glob("denovo-*.jsonl"))
    assert len(shared) == 1
    # stage=all for the first task scores the saved samples without sampling again
    _Spy(monkeypatch, fail=True)
    res_a = run_bench(_cfg(bench_env, out, task="ta", template_baseline=False), log=lambda m: None)

    def dn_texts(task):
        return [json.loads(x)["text"] for x in (out / task / "rows" / "base.samples.jsonl").read_text().splitlines() if json.loads(x)["kind"] == "denovo"]

    assert dn_texts("ta") == dn_texts("tb") and len(dn_texts("ta")) == 3
    # scored per task: each against its own reference
    assert res_a["rows"][0]["denovo"]["n"] == res_b["rows"][0]["denovo"]["n"] == 3
    assert "shared de novo sample sets: 1, used by 2 task rows" in (out / "BENCH.md").read_text()


def test_plan_rows_constraint_ablation_and_compare_models(bench_env):
    from cifllm.bench.runner import plan_rows

    logs: list[str] = []
    cfg = BenchConfig(model=bench_env["v2"], constraint_ablation=True, compare_models={"old-default": bench_env["old"], "new-copy": bench_env["v2"]}, adapter=None)
    rows = plan_rows(cfg, (), logs.append)
    # each row with its own auto constraint setting: cif-v2 constrained, cif-v1 not; the ablation row forced off
    assert [(r.name, r.constrained) for r in rows] == [("base", True), ("base-unconstrained", False), ("old-default", False), ("new-copy", True), ("template", False)]
    assert [r.shares_denovo for r in rows] == [True, True, True, True, False]
    off = plan_rows(BenchConfig(model=bench_env["v2"], constrained=False, constraint_ablation=True), (), logs.append)
    assert [r.name for r in off] == ["base", "template"] and "no base-unconstrained row" in logs[-1]


def test_prompt_cap_and_bad_compare_models(bench_env, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_runner, "TemplateBaseline", None)
    logs: list[str] = []
    with pytest.raises(ConfigError, match="row name 'base'"):
        run_bench(_cfg(bench_env, tmp_path, compare_models={"base": bench_env["old"]}), log=logs.append)
    with pytest.raises(FileNotFoundError, match="compare_models.old"):
        run_bench(_cfg(bench_env, tmp_path, compare_models={"old": str(tmp_path / "nothing")}), log=logs.append)
    res = run_bench(_cfg(bench_env, tmp_path, model="", n_prompts=10_000, n_denovo=0, template_baseline=False), log=logs.append)
    assert res["csp_prompts"]["used"] == res["split_counts"]["test"] < 10_000
    assert any(f"n_prompts 10000 capped at the test-set size: {res['split_counts']['test']} CSP prompts" in x for x in logs)


def test_constrained_row_skips_prompts_it_cannot_start(bench_env, tmp_path, monkeypatch):
    """A cif-v2 model at a tiny max_new_tokens: the constraint engine cannot write any of the CSP cells, so those prompts
    are not sampled (no crash of the row); their samples are empty, invalid and carry the engine's reason."""
    spy = _Spy(monkeypatch)
    logs: list[str] = []
    res = run_bench(_cfg(bench_env, tmp_path, model=bench_env["v2"], template_baseline=False), log=logs.append)
    row = res["rows"][0]
    assert row["spec"]["constrained"] is True and row["sampling"]["csp_prompts_not_started"] == 2
    assert all(not any(t.startswith("data_") for t in call) for call in spy.calls)  # no CSP prompt reached generate
    assert any("2 of 2 prompts cannot be started by the constraint engine at max_new_tokens=16" in x for x in logs)
    csp = [json.loads(x) for x in (tmp_path / "ta" / "rows" / "base.samples.jsonl").read_text().splitlines() if json.loads(x)["kind"] == "csp"]
    assert len(csp) == 4 and all(s["text"] == "" and s["valid"] is False and "max_new_tokens" in s["error"] for s in csp)
    assert [p["n_valid"] for p in row["csp"]["per_prompt"]] == [0, 0] and row["csp"]["rates"]["validity"] == rate(0, 4)


def test_rows_subset_runs_now_and_reports_finished_rows(bench_env, tmp_path, monkeypatch):
    """rows=[...] samples only those rows; rows of the plan saved as scored earlier are reported with them."""
    out = tmp_path / "res"
    _Spy(monkeypatch)
    logs: list[str] = []
    first = run_bench(_cfg(bench_env, out, rows=["template"]), log=logs.append)
    assert [r["generator"] for r in first["rows"]] == ["template"]
    assert any("row base: not in rows=['template']" in x and "left out" in x for x in logs)
    assert not (out / "ta" / "rows" / "base.json").exists()
    # the next run samples base; template is loaded, not sampled again
    monkeypatch.setattr(bench_runner, "TemplateBaseline", None)
    logs2: list[str] = []
    second = run_bench(_cfg(bench_env, out, rows=["base"]), log=logs2.append)
    assert [r["generator"] for r in second["rows"]] == ["base", "template"]
    assert any("row template: loaded from" in x for x in logs2)
    assert _strip_run_fields(second["rows"][1:]) == _strip_run_fields(first["rows"])
    with pytest.raises(ConfigError, match="not in this task's plan"):
        run_bench(_cfg(bench_env, out, rows=["lora"]), log=lambda m: None)
    # an archived results folder: a scored row needs no samples file; a gzipped one is read where the plain one is gone
    rows_dir = out / "ta" / "rows"
    (rows_dir / "template.samples.jsonl").unlink()
    plain = rows_dir / "base.samples.jsonl"
    (rows_dir / "base.samples.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    base_recs = bench_runner.RowStore(out / "ta").read_samples("base")
    plain.unlink()
    assert bench_runner.RowStore(out / "ta").read_samples("base") == base_recs
    _Spy(monkeypatch, fail=True)
    third = run_bench(_cfg(bench_env, out), log=lambda m: None)
    assert _strip_run_fields(third["rows"]) == _strip_run_fields(second["rows"])


def test_killed_row_resumes_from_its_journal(bench_env, tmp_path, monkeypatch):
    """A run killed inside a row keeps the samples already yielded (rows/<row>.partial.jsonl); the rerun takes the
    prompts whose samples are all there from the journal (count 0 to the engine: the others keep their seeds), samples
    the rest, and removes the journal once the row is saved. A torn last line is dropped."""
    out = tmp_path / "res"
    cfg = _cfg(bench_env, out, template_baseline=False, batch_size=2)  # one CSP prompt (2 samples) per engine batch

    def killing(prompts, *a, **k):
        for j, g in enumerate(real_generate(prompts, *a, **k)):
            if j == 2:  # prompt 0's two samples are out, prompt 1's batch is being sampled
                raise KeyboardInterrupt
            yield g

    monkeypatch.setattr(bench_runner, "generate", killing)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, log=lambda m: None)
    journal = out / "ta" / "rows" / "base.partial.jsonl"
    lines = journal.read_text().splitlines()
    assert json.loads(lines[0])["fingerprint"]["row"] == "base"
    logged = [json.loads(x) for x in lines[1:]]
    assert [(r["part"], r["prompt_index"], r["sample_index"]) for r in logged] == [("csp", 0, 0), ("csp", 0, 1)]
    assert not (out / "ta" / "rows" / "base.json").exists()
    with journal.open("a") as f:
        f.write('{"part": "csp", "prompt_index": 1, "sampl')  # killed mid-write

    calls: list[tuple[list[str], list[int]]] = []

    def spy(prompts, *a, **k):
        calls.append(([p.text for p in prompts], list(k["counts"])))
        return real_generate(prompts, *a, **k)

    monkeypatch.setattr(bench_runner, "generate", spy)
    logs: list[str] = []
    res = run_bench(cfg, log=logs.append)
    assert any("base.partial.jsonl: resuming with 2 samples already sampled" in x for x in logs)
    assert any("row base: csp: 1 of 2 prompts taken from the journal" in x for x in logs)
    assert calls[0][1] == [0, 2]  # prompt 0 from the journal, prompt 1 sampled (same position: same seeds on vLLM)
    samples = [json.loads(x) for x in (out / "ta" / "rows" / "base.samples.jsonl").read_text().splitlines()]
    csp0 = [s["text"] for s in samples if s["kind"] == "csp" and s["prompt_index"] == 0]
    assert csp0 == [r["text"] for r in logged]
    assert len([s for s in samples if s["kind"] == "csp"]) == 4 and len([s for s in samples if s["kind"] == "denovo"]) == 3
    assert res["rows"][0]["csp"]["n_csp_samples"] == 4
    assert not journal.exists()

    # a journal of other settings is discarded, said so
    bench_runner.RowStore(out / "ta").journal("base", {"row": "base", "seed": 99}, logs.append).close()
    bench_runner.RowStore(out / "ta").journal("base", {"row": "base", "seed": 0}, logs.append).close()
    assert any("base.partial.jsonl: saved with other settings (seed 99 -> 0): discarded" in x for x in logs)


def test_bench_rows_sample_with_the_one_set_of_defaults(bench_env, tmp_path, monkeypatch):
    """What a model row passes to the generation path when the bench config sets no sampling key: the temperature,
    top-k and top-p of :data:`cifllm.core.sampling.SAMPLING` (the other entry points: tests/test_api.py)."""
    from cifllm.core.sampling import SAMPLING

    seen = []

    def spy(prompts, params, *a, **k):
        seen.append((params.temperature, params.top_k, params.top_p))
        return real_generate(prompts, params, *a, **k)

    monkeypatch.setattr(bench_runner, "generate", spy)
    cfg = _cfg(bench_env, tmp_path, rows=["base"], n_denovo=1, template_baseline=False)
    assert BenchConfig().max_new_tokens == SAMPLING.max_new_tokens  # _cfg shortens it to keep the test fast
    run_bench(cfg, log=lambda m: None)
    assert seen and set(seen) == {(SAMPLING.temperature, SAMPLING.top_k, SAMPLING.top_p)}
