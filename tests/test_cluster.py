"""Miyabi-G PBS job rendering (``cifllm pretrain --cluster miyabi --dry-run``)."""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from cifllm.config import ConfigError
from cifllm.training.cluster import MiyabiJob, render_pbs, submit
from cifllm.training.config import load_pretrain_config

REPO = Path(__file__).resolve().parents[1]


def _job(**kw) -> MiyabiJob:
    cfg = load_pretrain_config(
        REPO / "train" / "configs" / "base.yaml",
        {"deepspeed": "train/deepspeed/zero3_offload.json", "out": "runs/base-4n", "corpus": "data/corpus"},
    )
    values = dict(
        cfg=cfg, nodes=4, walltime="24:00:00", group="gx12", workdir="/work/gx12/alice/cifllm",
        config_path="train/configs/base.yaml",
        overrides=("deepspeed=train/deepspeed/zero3_offload.json", "out=runs/base-4n", "corpus=data/corpus"),
    )
    values.update(kw)
    return MiyabiJob(**values)


def test_rendered_job_for_four_nodes():
    text = render_pbs(_job(), now=dt.datetime(2025, 1, 2, 3, 4))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [x for x in lines if x.startswith("#PBS")]
    assert directives == [
        "#PBS -q regular-g",
        "#PBS -l select=4",
        "#PBS -l walltime=24:00:00",
        "#PBS -W group_list=gx12",
        "#PBS -N cifllm-base",
        "#PBS -j oe",
        "#PBS -o /work/gx12/alice/cifllm/runs/base-4n/cifllm-base.pbs.log",
    ]
    assert "{{" not in text and "}}" not in text
    assert "cd /work/gx12/alice/cifllm" in text
    assert "export HF_HUB_OFFLINE=1" in text
    assert "export HF_HOME=/work/gx12/${USER}/.cache/huggingface" in text
    assert "export TORCH_EXTENSIONS_DIR=/work/gx12/${USER}/.cache/torch_extensions" in text
    assert 'MASTER_ADDR=$(head -n 1 "$PBS_NODEFILE")' in text
    assert 'if [ "$NNODES" -ne 4 ]' in text
    assert re.search(r'mpirun -n "\$NNODES" --map-by ppr:1:node', text)
    launch = text[text.index("bash -c '") :]
    assert '--nnodes "$NNODES" --nproc_per_node 1 --node_rank "$OMPI_COMM_WORLD_RANK"' in launch
    assert '--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m cifllm.cli pretrain "$@"' in launch
    args = shlex.split(lines[-1].strip())
    assert args == [
        "cifllm-rank", "--config", "train/configs/base.yaml", "deepspeed=train/deepspeed/zero3_offload.json",
        "out=runs/base-4n", "corpus=data/corpus", "--resume",
    ]


def test_rendered_job_is_valid_bash():
    text = render_pbs(_job(nodes=2, overrides=("out=runs/it's here",)))
    res = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert "'out=runs/it'\"'\"'s here'" in text  # quoted for the shell


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"nodes": 0}, "--nodes must be >= 1"),
        ({"walltime": "24h"}, "HH:MM:SS"),
        ({"group": "g x"}, "not a valid group"),
    ],
)
def test_bad_job_options(kw, message):
    with pytest.raises(ConfigError, match=message):
        _job(**kw)


def test_deepspeed_config_is_checked_against_node_count(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"train_batch_size": 32, "zero_optimization": {"stage": 2}}')
    cfg = load_pretrain_config(None, {"deepspeed": str(bad), "batch_size": 8})
    with pytest.raises(ValueError, match=r"train_batch_size=32 contradicts .*=64"):
        render_pbs(_job(cfg=cfg, nodes=8))


def test_cli_dry_run_prints_job_and_submit_needs_group(tmp_path, capsys, monkeypatch):
    from cifllm.cli import main

    monkeypatch.delenv("GROUP", raising=False)
    rc = main(["pretrain", "--cluster", "miyabi", "--nodes", "2", "--group", "gx12", "--dry-run", "preset=small", f"out={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 0 and "#PBS -l select=2" in out and "#PBS -W group_list=gx12" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    with pytest.raises(ConfigError, match="needs a group"):
        submit(_job(group=None))
