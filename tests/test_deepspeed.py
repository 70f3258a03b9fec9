"""DeepSpeed ZeRO-3 with parameter and optimizer offload to CPU, on CPU (DeepSpeed's CPU accelerator + gloo), through
the entry point users launch: ``torchrun ... -m cifllm.cli pretrain deepspeed=train/deepspeed/zero3_offload.json``.

The first run on a machine compiles DeepSpeed's ``cpu_adam`` and ``shm_comm`` ops (a few minutes on 2 cores); they are
cached in ``$TORCH_EXTENSIONS_DIR`` (default here: ``<repo>/.torch_extensions``), later runs take ~30 s each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
DS = REPO / "train" / "deepspeed" / "zero3_offload.json"
GLOBAL_BATCH = 4


def _torchrun(corpus: Path, out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "cifllm.cli", "pretrain", f"corpus={corpus}", f"out={out}", f"deepspeed={DS}",
        "max_steps=4", f"batch_size={GLOBAL_BATCH // nproc}", "warmup_steps=1", "logging_steps=1",
        "eval_steps=2", "save_steps=2", "progress=false",
        "data_mode=packed",  # block order independent of the per-process batch size, so 1 and 2 processes compare
        *extra,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    return res


def _losses(out: Path) -> list[float]:
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def _check_saved_model(out: Path, nproc: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shards = sorted(p.name for p in (out / "checkpoint-4" / "global_step4").iterdir())
    assert shards == sorted(
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in range(nproc) for kind in ("model", "optim")
    )
    assert (out / "checkpoint-4" / "cifllm_checkpoint.json").is_file()
    model_dir = out / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # the 16-bit weights gathered at save time
    tok = AutoTokenizer.from_pretrained(model_dir)
    run = json.loads((model_dir / "cifllm_run.json").read_text())
    assert run["world_size"] == nproc and run["global_step"] == 4 and run["deepspeed"] == str(DS)
    ids = tok(["data_"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all() and model.model.embed_tokens.weight.abs().sum() > 0


@pytest.fixture(scope="module")
def zero3_one_process(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3") / "np1"
    _torchrun(tiny_corpus, out, nproc=1)
    return out


def test_zero3_offload_one_process(zero3_one_process):
    _check_saved_model(zero3_one_process, nproc=1)
    losses = _losses(zero3_one_process)
    assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.fixture(scope="module")
def zero3_two_processes(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3") / "np2"
    _torchrun(tiny_corpus, out, nproc=2)
    return out


def test_zero3_offload_two_processes_match_one(zero3_one_process, zero3_two_processes):
    """Two ranks, each with half of the global batch and half of every parameter: same batches, same loss curve."""
    _check_saved_model(zero3_two_processes, nproc=2)
    assert _losses(zero3_two_processes) == pytest.approx(_losses(zero3_one_process), rel=1e-4)


def test_zero3_sharded_checkpoint_resume(zero3_two_processes, tiny_corpus, tmp_path):
    """Resume the 2-process run from its step-2 checkpoint (two ZeRO-3 shards): steps 3-4 repeat exactly."""
    out = tmp_path / "np2"
    shutil.copytree(zero3_two_processes, out)
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "model")
    res = _torchrun(tiny_corpus, out, 2, "--resume")
    assert f"resuming from {out / 'checkpoint-2'}" in res.stdout
    assert _losses(out) == pytest.approx(_losses(zero3_two_processes), rel=1e-5)
    _check_saved_model(out, nproc=2)


def test_resume_with_another_process_count_is_refused(zero3_two_processes, monkeypatch):
    from cifllm.training.checkpoints import CheckpointError
    from cifllm.training.config import load_pretrain_config
    from cifllm.training.pretrain import prepare

    cfg = load_pretrain_config(zero3_two_processes / "config.yaml")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(CheckpointError, match=r"holds 2 ZeRO shard\(s\) but this run has 1 process"):
        prepare(cfg, resume=True)
