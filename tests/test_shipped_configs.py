"""Every shipped YAML loads into its config class (litgpt-style): train presets, the LoRA config, the sampling and
evaluation configs, the corpus config, the task files, the dataset registry and the DeepSpeed/accelerate profiles.

Files are found in the package (``cifllm/resources``) and in the checkout's user-facing folders (``train/``, ``eval/``,
``data_prep/``), whichever exist; a folder that holds no file of a kind it used to hold fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cifllm.bench.tasks import load_task
from cifllm.cli.common import add_config_arguments
from cifllm.core.config import config_help, describe_config, load_config
from cifllm.data.prep import PrepConfig
from cifllm.data.registry import load_registry
from cifllm.evaluation.run import EvalConfig
from cifllm.sampling.run import SampleConfig
from cifllm.scaling.sweep import ScalingConfig
from cifllm.training.config import PretrainConfig
from cifllm.training.deepspeed_config import load_deepspeed_config
from cifllm.training.finetune import FinetuneConfig
from cifllm.training.rl import RLConfig

REPO = Path(__file__).resolve().parents[1]
RES = REPO / "cifllm" / "resources"


def _files(*patterns: str) -> list[Path]:
    found: dict[Path, Path] = {}
    for pat in patterns:
        for p in sorted(REPO.glob(pat)):
            found.setdefault(p.resolve(), p)  # checkout links to the packaged file count once
    return list(found.values())


def _config_class(path: Path) -> type:
    name, folder = path.name, path.parent.name
    if name == "lora.yaml":
        return FinetuneConfig
    if name == "rl.yaml":
        return RLConfig
    if folder in ("train", "configs"):
        return PretrainConfig
    if name.startswith("sample"):
        return SampleConfig
    if name == "eval.yaml":
        return EvalConfig
    if name.startswith("scaling"):
        return ScalingConfig
    if folder in ("data", "data_prep"):
        return PrepConfig
    raise AssertionError(f"no config class known for {path}")


STAGE_YAMLS = _files("cifllm/resources/configs/train/*.yaml", "train/configs/*.yaml", "cifllm/resources/configs/eval/*.yaml",
                     "eval/*.yaml", "cifllm/resources/configs/data/*.yaml", "data_prep/*.yaml")
TASK_YAMLS = _files("cifllm/resources/tasks/*.yaml", "eval/tasks/*.yaml")


def test_every_kind_is_shipped():
    kinds = {_config_class(p) for p in STAGE_YAMLS}
    assert kinds == {PretrainConfig, FinetuneConfig, RLConfig, SampleConfig, EvalConfig, PrepConfig, ScalingConfig}
    assert len(TASK_YAMLS) >= 7


@pytest.mark.parametrize("path", STAGE_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_stage_yaml_loads(path):
    cls = _config_class(path)
    cfg = load_config(cls, path)
    given = yaml.safe_load(path.read_text()) or {}
    assert isinstance(cfg, cls) and given, path
    if cls is PretrainConfig:  # the shipped presets spell the training loop as the nested block
        assert isinstance(given.get("train"), dict) and cfg.train.max_steps == given["train"]["max_steps"]


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: p.name)
def test_task_yaml_loads(path):
    task = load_task(path)
    assert task.name == path.stem


def test_dataset_registry_loads():
    reg = load_registry()
    assert len(reg) >= 10 and all(s.files for s in reg.values())


def test_deepspeed_and_accelerate_profiles_load():
    ds = _files("cifllm/resources/configs/deepspeed/*.json")
    acc = _files("cifllm/resources/configs/accelerate/*.yaml")
    assert ds and acc
    t = load_config(PretrainConfig, "builtin:tiny").train
    for p in ds:  # checked against a one-process tiny run, the way `cifllm pretrain deepspeed=...` checks it
        run = dict(batch_size=t.batch_size, grad_accum=t.grad_accum, world_size=1, bf16=False, lr=t.lr, max_grad_norm=t.max_grad_norm)
        assert isinstance(load_deepspeed_config(p, **run), dict)
    for p in acc:
        assert isinstance(yaml.safe_load(p.read_text()), dict)


def test_bad_key_names_close_matches():
    from cifllm.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr' .*did you mean train\.lr"):
        load_config(PretrainConfig, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="did you mean .*warmup_steps"):
        load_config(FinetuneConfig, None, ["warmup_step=3"])


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, RLConfig, SampleConfig, EvalConfig, PrepConfig])
def test_help_lists_every_key_with_default_and_comment(cls):
    import argparse

    keys = describe_config(cls)
    text = config_help(cls)
    assert keys and all(f"  {k.key} = {k.default}" in text for k in keys)
    p = argparse.ArgumentParser()
    add_config_arguments(p, cls)
    assert all(k.key in p.format_help() for k in keys)
    if cls is PretrainConfig:
        info = {k.key: k for k in keys}
        assert info["train.lr"].default == "0.001" and "peak learning rate" in info["train.lr"].comment
    if cls is FinetuneConfig:  # a block keeps the defaults of the field that holds it
        assert {k.key: k.default for k in keys}["train.max_steps"] == "200"
