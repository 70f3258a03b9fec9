"""A run killed with SIGKILL and restarted with ``--resume`` loses at most one checkpoint interval and continues with
the same data order and loss curve (checked step by step against what the killed run had logged)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAVE_EVERY = 8


def _cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cifllm.cli", "pretrain", f"corpus={corpus}", f"out={out}", "max_steps=60",
        "batch_size=4", "warmup_steps=2", "logging_steps=1", "eval_steps=0", f"save_steps={SAVE_EVERY}",
        "save_total_limit=2", "progress=false", *extra,
    ]


def _records(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        with contextlib.suppress(ValueError):  # a line being written
            out.append(json.loads(line))
    return out


def test_sigkill_then_resume_loses_at_most_one_interval(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = out / "log.jsonl"
    proc = subprocess.Popen(_cmd(tiny_corpus, out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while True:  # kill once a checkpoint is finished and training has moved past it
            steps = [r["step"] for r in _records(log) if "loss" in r]
            if (out / f"checkpoint-{SAVE_EVERY}" / "cifllm_checkpoint.json").is_file() and steps and max(steps) >= SAVE_EVERY + 2:
                break
            assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
            assert time.time() < deadline, "training did not reach the kill point in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = {r["step"]: r["loss"] for r in _records(log) if "loss" in r}
    finished = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "cifllm_checkpoint.json").is_file())
    last_ckpt, last_step = finished[-1], max(killed)
    assert last_step - last_ckpt <= SAVE_EVERY  # what the resume will redo

    res = subprocess.run(_cmd(tiny_corpus, out, "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{last_ckpt}'}" in res.stdout
    recs = _records(log)
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == list(range(1, 61))  # each step logged once: the killed run's extra lines were dropped
    resumed = {r["step"]: r["loss"] for r in recs if "loss" in r}
    redone = [s for s in killed if s > last_ckpt]
    assert redone, "the kill came right at a checkpoint; nothing to compare"
    for s in redone:  # same batches, same weights -> same loss
        assert resumed[s] == pytest.approx(killed[s], rel=1e-5), s
    run = json.loads((out / "model" / "cifllm_run.json").read_text())
    assert run["global_step"] == 60 and run["resumed_from"].endswith(f"checkpoint-{last_ckpt}")
