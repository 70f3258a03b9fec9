"""The Sim2Real sweep of issue 17 on fixture crystals: the step plan, early stopping with the best checkpoint
restored, the downstream regression on a property known exactly (sites per cell), the computed-sources pool and the
downstream split, and the sweep end to end with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _scaled(structures, k: int, scale: float):
    s = structures.copy()
    s.scale_lattice(s.volume * scale**3)
    return s


@pytest.fixture(scope="module")
def toy_corpus(structures, tmp_path_factory):
    """144 rows (48 prototypes x 3 lattice scalings): prototypes i % 4 == 0 are 'supercon3d' rows with a measured
    property (``n_sites``) and a fixed split by scaling; i % 4 == 1 are hypothetical 'perov_5'; the rest 'mp_20'.
    Plus a hydrogen-rich superconductor (dropped) and one whose two records disagree on the split (dropped)."""
    from pymatgen.core import Lattice, Structure

    from cifllm.cif import format_formula, structure_to_text
    from cifllm.data.corpus import CorpusRow, write_corpus
    from cifllm.tokenization import build_tokenizer

    tok = build_tokenizer()
    rows = []

    def add(s, sources, prov, split, tag):
        text = structure_to_text(s)
        comp = s.composition
        rows.append(CorpusRow(
            text=text, reduced_formula=format_formula(comp, reduced=True), elements=[e.symbol for e in comp.elements],
            n_sites=len(s), sg_number=1, n_tokens=len(tok.encode(text, add_special_tokens=False).ids), sources=sources,
            source_ids=[f"{sources[0]}:{tag}"], properties={}, year=None, provenance=prov, split=split,
        ))

    for k, scale in enumerate((0.97, 1.0, 1.03)):
        for i, s0 in enumerate(structures):
            s = _scaled(s0, k, scale)
            if i % 4 == 0:
                prov = [{"dataset": "supercon3d", "id": f"{k}-{i}", "split": ("train", "val", "test")[k], "properties": {"n_sites": len(s)}}]
                add(s, ["supercon3d"], prov, "train", f"{k}-{i}")
            elif i % 4 == 1:
                add(s, ["perov_5"], [{"dataset": "perov_5", "id": f"{k}-{i}"}], "train", f"{k}-{i}")
            else:
                add(s, ["mp_20"], [{"dataset": "mp_20", "id": f"{k}-{i}"}], "val" if k == 2 else "train", f"{k}-{i}")
    hydride = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.0), ["Al", "H"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    add(hydride, ["supercon3d"], [{"dataset": "supercon3d", "id": "h", "split": "train", "properties": {"n_sites": 12}}], "train", "h")
    conflict = Structure.from_spacegroup("Im-3m", Lattice.cubic(3.3), ["Ta"], [[0, 0, 0]])
    add(conflict, ["supercon3d"], [
        {"dataset": "supercon3d", "id": "c1", "split": "train", "properties": {"n_sites": 2}},
        {"dataset": "supercon3d", "id": "c2", "split": "test", "properties": {"n_sites": 2}},
    ], "train", "c")
    return write_corpus(rows, tmp_path_factory.mktemp("transfer_corpus"))


def test_plan_steps_grow_with_size_and_are_clipped():
    from cifllm.scaling.protocol import EarlyStopConfig, plan_steps

    es = EarlyStopConfig(lr_schedule="cosine", epochs_cap=10, min_steps=60, max_steps_cap=2400, eval_epochs=0.5, eval_min_steps=10, eval_max_steps=150)
    small, mid, big = plan_steps(32, 16, es), plan_steps(1600, 16, es), plan_steps(100_000, 16, es)
    assert small.max_steps == 60 and small.eval_steps == 10  # floors
    assert mid.max_steps == 1000 and mid.eval_steps == 50 and mid.warmup_steps == 50  # 10 passes, eval every half pass
    assert big.max_steps == 2400 and big.eval_steps == 150  # caps
    for p in (small, mid, big):
        assert p.max_steps % p.eval_steps == 0 and 0 < p.warmup_steps < p.max_steps
        assert p.overrides()["lr_schedule"] == "cosine"  # issue 17: the decay spans the cap
    # the default (issue 32): the rate is constant after a fixed warm-up, so the cap is only a safety bound
    const = EarlyStopConfig(epochs_cap=10, min_steps=60, max_steps_cap=2400, eval_epochs=0.5, eval_min_steps=10, eval_max_steps=150, warmup_steps=100)
    a, b = plan_steps(1600, 16, const), plan_steps(100_000, 16, const)
    assert a.warmup_steps == b.warmup_steps == 100 and a.max_steps == 1000
    ov = b.overrides()
    assert ov["lr_schedule"] == "wsd" and ov["decay_steps"] == 1 and ov["warmup_steps"] == 100
    from cifllm.training.config import TrainArgs

    args = TrainArgs(**ov)
    name, kw = args.scheduler()
    assert name == "warmup_stable_decay" and kw["num_decay_steps"] == 1
    with pytest.raises(ValueError, match="patience"):
        EarlyStopConfig(patience=0)


def test_early_stopping_stops_before_the_cap_and_restores_the_best_checkpoint(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    from cifllm.core.config import load_config
    from cifllm.scaling.protocol import STOP_EARLY, pretrain_early_stopping, read_early_stopping
    from cifllm.training.config import PretrainConfig

    # 38 training CIFs and a high learning rate: the validation loss turns up after a few passes
    cfg = load_config(PretrainConfig, None, {
        "preset": "tiny", "corpus": str(tiny_corpus), "out": str(tmp_path / "run"), "max_position_embeddings": 256,
        "max_steps": 400, "eval_steps": 5, "save_steps": 5, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2,
        "precision": "fp32", "progress": False, "logging_steps": 50,
    })
    model = pretrain_early_stopping(cfg, patience=2, min_delta=0.0)
    es = read_early_stopping(model)
    assert es["stop_reason"] == STOP_EARLY and es["steps_run"] < 400
    assert es["best_step"] == es["steps_run"] - 2 * 5  # two evaluations without improvement after the best
    curve = dict(es["val_curve"])
    assert curve[es["best_step"]] == es["best_val_loss"] == min(v for s, v in curve.items() if s > 0)
    assert curve[es["steps_run"]] > es["best_val_loss"] and es["init_val_loss"] > es["best_val_loss"]
    assert es["restored_best"]
    saved = load_file(str(model / "model.safetensors"))
    best = load_file(str(tmp_path / "run" / f"checkpoint-{es['best_step']}" / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / f"checkpoint-{es['steps_run']}" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert np.array_equal(saved[name].numpy(), best[name].numpy())
    assert not np.array_equal(saved[name].numpy(), last[name].numpy())


def test_downstream_regression_learns_a_known_property(toy_corpus):
    from cifllm.scaling.downstream import (
        COMPOSITION_FEATURES,
        DownstreamConfig,
        finetune_regressor,
        gbt_baseline,
        load_property_set,
        scratch_backbone,
    )

    cfg = DownstreamConfig(sources=("supercon3d",), property="n_sites", log_target=False, epochs=40, patience=40, lr_backbone=1e-3, lr_head=3e-3, batch_size=8)
    data = load_property_set(toy_corpus, cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 12, 12)
    assert data.dropped == {"hydrogen_rich": 1, "split_conflict": 1}
    model, tok = scratch_backbone("tiny", 256, seed=0)
    res = finetune_regressor(model, tok, data, cfg, seed=0)
    # sites per cell (2-12) is a function of the text: the fine-tuned head must beat the train mean clearly
    assert res["mae"] < 0.5 * res["mean_baseline_mae"], res
    assert 1 <= res["best_epoch"] <= res["epochs_run"] == 40
    gbt = gbt_baseline(data, "composition", log_target=False)
    assert gbt["n_features"] == len(COMPOSITION_FEATURES) == 46 and gbt["n_train"] == 12 and gbt["mae"] >= 0


def test_pool_keeps_computed_sources_and_drops_downstream_formulas(toy_corpus):
    from types import SimpleNamespace

    from cifllm.scaling.downstream import DownstreamConfig, load_property_set
    from cifllm.scaling.transfer import COMPUTED_SOURCES, build_pool

    data = load_property_set(toy_corpus, DownstreamConfig(property="n_sites", log_target=False))
    cfg = SimpleNamespace(corpus=str(toy_corpus), include_sources=COMPUTED_SOURCES, val_rows=256)
    train, val, counts = build_pool(cfg, data, exclude_ids=set())
    assert {s for r in train + val for s in r["sources"]} == {"mp_20"}
    assert len(train) == 48 and len(val) == 24  # 24 mp_20 prototypes x 3 scalings, scaling 2 in val
    assert counts["excluded_not_computed"] == {"perov_5": 36, "supercon3d": 38}
    assert counts["excluded_kinds"] == {"experimental": ["supercon3d"], "hypothetical": ["perov_5"], "other": []}
    assert not {r["reduced_formula"] for r in train + val} & data.formulas
    # a computed source that shares a formula with the downstream set is dropped and counted
    cfg2 = SimpleNamespace(corpus=str(toy_corpus), include_sources=("mp_20", "supercon3d"), val_rows=256)
    train2, val2, counts2 = build_pool(cfg2, data, exclude_ids=set())
    assert counts2["dropped"]["downstream_overlap"] == 36 and len(train2) + len(val2) == 74  # + hydride and conflict rows


def test_transfer_sweep_end_to_end_resumes(toy_corpus, tmp_path):
    from cifllm.scaling.sweep import load_scaling_config, run_sweep

    over = {
        "corpus": str(toy_corpus), "out": str(tmp_path / "sweep"), "sizes": [8, 16, 32], "repeats": 1, "val_rows": 12,
        "generative_metric": False,
        "pretrain_overrides": ["max_position_embeddings=256", "batch_size=4", "precision=fp32", "logging_steps=50"],
        "early_stop": {"epochs_cap": 3, "min_steps": 4, "max_steps_cap": 12, "eval_epochs": 1, "eval_min_steps": 2, "eval_max_steps": 4, "patience": 2},
        "downstream": {"property": "n_sites", "log_target": False, "epochs": 2, "patience": 2},
    }
    out = run_sweep(load_scaling_config(None, over))
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    runs = [r for r in rows if r["kind"] == "run"]
    refs = sorted(r["reference"] for r in rows if r["kind"] == "reference")
    assert [(r["size"], r["repeat"]) for r in runs] == [(8, 0), (16, 0), (32, 0)]
    assert refs == ["gbt_composition", "gbt_oracle", "scratch"]
    for r in runs:
        p = r["pretrain"]
        assert r["status"] == "ok" and r["mae"] > 0 and r["test_nll"] is None  # generative metric off: not measured
        assert p["steps_run"] <= p["max_steps"] and p["stop_reason"] in ("early_stop", "step_cap") and p["best_val_loss"] > 0
    assert [r["pretrain"]["max_steps"] for r in runs] == [6, 12, 12]  # 3 passes at 4 CIFs/step, capped at 12
    pool = json.loads((out / "pool.json").read_text())
    assert pool["pool_train"] == 48 and pool["excluded_not_computed"]["perov_5"] == 36
    for r in runs:
        p = r["pretrain"]
        assert p["converged"] == (p["stop_reason"] == "early_stop") and p["lr_schedule"] == "constant"
        assert p["val_curve"] and p["val_curve"][0][0] == 0 and p["best_step"] in [s for s, _ in p["val_curve"]]
    for f in ("REPORT.md", "transfer_scaling.png", "transfer_fit.json", "val_curves.png"):
        assert (out / f).is_file(), f
    fit = json.loads((out / "transfer_fit.json").read_text())
    conv = fit["convergence"]
    capped = [[r["size"], r["repeat"]] for r in runs if r["pretrain"]["stop_reason"] == "step_cap"]
    assert conv["runs"] == 3 and conv["step_cap"] == capped and conv["fitted"] == 3 - len(capped)
    assert fit["metrics"]["test_nll"]["fit"] is None and fit["metrics"]["mae"]["references"]["scratch"]["n"] == 1
    report = (out / "REPORT.md").read_text()
    assert "| 16 | 0 |" in report and "scratch" in report and "## Convergence" in report
    assert f"{len(capped)} stopped on the step cap and count as **not converged**" in report
    # resume: every row is there, nothing is re-run; at a constant rate the step cap (a safety bound) may be raised
    raised = {**over, "early_stop": {**over["early_stop"], "max_steps_cap": 16}}
    run_sweep(load_scaling_config(None, raised))
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(rows)
    assert load_scaling_config(out / "config.yaml").early_stop.max_steps_cap == 16
    # ... but not under the cosine schedule, where the cap shapes the learning rate of every step
    from cifllm.core.config import ConfigError, save_config

    cos = {**over, "out": str(tmp_path / "cos"), "early_stop": {**over["early_stop"], "lr_schedule": "cosine"}}
    (tmp_path / "cos").mkdir()
    save_config(load_scaling_config(None, cos), tmp_path / "cos" / "config.yaml")
    with pytest.raises(ConfigError, match="early_stop.max_steps_cap"):
        run_sweep(load_scaling_config(None, {**cos, "early_stop": {**cos["early_stop"], "max_steps_cap": 16}}))


def test_interrupted_early_stopping_run_resumes_with_its_counter(tiny_corpus, tmp_path):
    """Remove the last checkpoint and the model of a finished run (= a run killed one evaluation before its stop) and
    run again: it resumes from the previous checkpoint with the early-stopping counter restored and stops at the same
    step with the same best step (a reset counter would train `patience` more evaluations)."""
    import shutil

    from cifllm.core.config import load_config
    from cifllm.scaling.protocol import STOP_EARLY, pretrain_early_stopping, read_early_stopping
    from cifllm.training.config import PretrainConfig

    cfg = load_config(PretrainConfig, None, {
        "preset": "tiny", "corpus": str(tiny_corpus), "out": str(tmp_path / "run"), "max_position_embeddings": 256,
        "max_steps": 400, "eval_steps": 5, "save_steps": 5, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2,
        "precision": "fp32", "progress": False, "logging_steps": 50, "lr_schedule": "wsd", "decay_steps": 1,
    })
    first = read_early_stopping(pretrain_early_stopping(cfg, patience=3, min_delta=0.0))
    assert first["stop_reason"] == STOP_EARLY and first["steps_run"] - first["best_step"] == 15
    shutil.rmtree(tmp_path / "run" / "model")
    shutil.rmtree(tmp_path / "run" / f"checkpoint-{first['steps_run']}")
    again = read_early_stopping(pretrain_early_stopping(cfg, patience=3, min_delta=0.0))
    assert (again["steps_run"], again["best_step"], again["stop_reason"]) == (first["steps_run"], first["best_step"], STOP_EARLY)
