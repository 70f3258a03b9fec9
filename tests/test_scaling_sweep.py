"""The scaling-law sweep end to end on the fixture corpus: nested subsets, rows written as runs finish, resume, fit
and report, PBS jobs; bad input."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def toy_task(tiny_corpus, tmp_path_factory):
    from cifllm.bench.splits import build_split
    from cifllm.bench.tasks import load_task

    root = tmp_path_factory.mktemp("scaling")
    task = root / "toy.yaml"
    task.write_text("name: toy\ncase: 0\ndescription: fixture crystals\nrule: random_formula\ntest_fraction: 0.15\n")
    build_split(load_task(task), tiny_corpus, root / "tasks", workers=0)
    return root, task


def _cfg(root, task, tiny_corpus, **kw):
    from cifllm.scaling.sweep import load_scaling_config

    over = {
        "task": str(task), "splits": str(root / "tasks"), "corpus": str(tiny_corpus), "out": str(root / "sweep"),
        "protocol": "fixed_steps",  # the early-stopping protocol: tests/test_scaling_transfer.py
        "sizes": [8, 12, 16, 32], "repeats": 1, "val_rows": 8,
        "pretrain_overrides": ["max_position_embeddings=256", "max_steps=12", "batch_size=4", "warmup_steps=2", "eval_steps=0", "save_steps=6", "logging_steps=6", "precision=fp32"],
        "finetune_overrides": ["max_steps=4", "warmup_steps=1", "eval_steps=0", "save_steps=100", "precision=fp32"],
    }
    over.update(kw)
    return load_scaling_config(None, over)


def test_sweep_rows_resume_and_report(toy_task, tiny_corpus):
    from cifllm.scaling.sweep import run_sweep

    root, task = toy_task
    out = run_sweep(_cfg(root, task, tiny_corpus))
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["size"], r["repeat"]) for r in rows] == [(8, 0), (12, 0), (16, 0), (32, 0)]
    for r in rows:
        assert r["status"] == "ok" and r["metric"] == "test_nll" and r["value"] > 0 and r["pretrain_steps"] == 12
    for f in ("REPORT.md", "scaling.png", "scaling_fit.json", "config.yaml"):
        assert (out / f).is_file(), f
    fit = json.loads((out / "scaling_fit.json").read_text())
    assert {"D", "alpha", "C"} <= set(fit["fit"]) if "fit" in fit else {"D", "alpha", "C"} <= set(fit)
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())  # run folders removed (keep_models=false)
    # resume: everything is done, nothing is re-run; a changed recipe is refused
    run_sweep(_cfg(root, task, tiny_corpus))
    assert len((out / "runs.jsonl").read_text().splitlines()) == 4
    from cifllm.config import ConfigError

    with pytest.raises(ConfigError, match="finetune_overrides: run has"):
        run_sweep(_cfg(root, task, tiny_corpus, finetune_overrides=["max_steps=5"]))


def test_sweep_bad_input(toy_task, tiny_corpus):
    from cifllm.scaling.sweep import run_sweep

    root, task = toy_task
    with pytest.raises(ValueError, match="at least 3 distinct sizes"):
        _cfg(root, task, tiny_corpus, sizes=[4, 8])
    with pytest.raises(ValueError, match="smaller than one pretraining batch"):
        run_sweep(_cfg(root, task, tiny_corpus, sizes=[2, 8, 16], out=str(root / "small")))
    with pytest.raises(ValueError, match="larger than the task's pretraining corpus"):
        run_sweep(_cfg(root, task, tiny_corpus, sizes=[4, 8, 10_000], out=str(root / "big")))
    with pytest.raises(ValueError, match="SIZE:REPEAT"):
        _cfg(root, task, tiny_corpus, only="4")


def test_pbs_job_per_run(toy_task, tiny_corpus, tmp_path):
    from cifllm.scaling.sweep import render_sweep_pbs

    root, task = toy_task
    files = render_sweep_pbs(_cfg(root, task, tiny_corpus, repeats=2), tmp_path / "jobs", group="gx00")
    assert len(files) == 8
    text = files[0].read_text()
    assert "#PBS -W group_list=gx00" in text and "cifllm scaling --task" in text and "only=8:0" in text
    assert "{{" not in text
