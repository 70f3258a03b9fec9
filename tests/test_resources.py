"""Package data: every file the code names ships in ``cifllm/resources`` and is found without the checkout (the tests
that matter run with the working directory in an empty temporary folder); the checkout's folders are links to the
packaged files, not copies; nothing finds its files through ``Path(__file__).parents``."""

from __future__ import annotations

import ast
import datetime as dt
import re
from pathlib import Path

import pytest

from cifllm.bench.tasks import TASKS_DIR, list_tasks, load_task
from cifllm.core.config import ConfigError, load_config
from cifllm.data.registry import DEFAULT_REGISTRY, load_registry
from cifllm.demo import DemoConfig
from cifllm.sampling.prompts import read_prompt_file
from cifllm.scaling.sweep import ScalingConfig, render_sweep_pbs
from cifllm.training.cluster import TEMPLATE, MiyabiJob, render_pbs
from cifllm.training.config import PretrainConfig
from cifllm.training.deepspeed_config import load_deepspeed_config
from cifllm.training.finetune import FinetuneConfig
from cifllm.utils.resources import (
    CHECKOUT_FOLDERS,
    ResourceError,
    list_resources,
    resolve_path,
    resource_path,
    resources_root,
)

REPO = Path(__file__).resolve().parents[1]
RES = REPO / "cifllm" / "resources"
TASK_NAMES = ["bandgap_top", "elements_heldout", "id_random", "kappa_top", "prototypes_heldout", "tc_top", "time_split"]


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """The working directory is an empty folder: checkout-relative paths do not exist there."""
    monkeypatch.chdir(tmp_path)
    assert not Path("train").exists() and not Path("eval").exists()
    return tmp_path


def test_packaged_root_is_the_package_folder():
    assert resources_root() == RES
    assert TASKS_DIR == RES / "tasks" and DEFAULT_REGISTRY == RES / "datasets"
    assert TEMPLATE == RES / "templates" / "miyabi" / "pretrain.pbs.tmpl" and TEMPLATE.is_file()


def test_tasks_and_registry_load_outside_the_checkout(outside):
    assert list_tasks() == TASK_NAMES
    for name in TASK_NAMES:
        assert load_task(name).name == name
    assert load_task("eval/tasks/tc_top.yaml").property == load_task("tc_top").property  # the checkout path
    assert load_task("builtin:kappa_top").name == "kappa_top"
    reg = load_registry()
    assert len(reg) == len(list_resources("datasets", "*.yaml")) >= 10
    assert set(load_registry("data_prep/datasets")) == set(reg)  # the checkout path falls back to the package


def test_list_tasks_never_returns_empty(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        list_tasks(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.yaml"):
        list_tasks(tmp_path / "empty")


def test_configs_resolve_outside_the_checkout(outside):
    assert load_config(PretrainConfig, "train/configs/tiny.yaml").preset == "tiny"
    assert load_config(PretrainConfig, "builtin:mini").preset == "mini"
    assert load_config(FinetuneConfig, "train/configs/lora.yaml") is not None
    assert resolve_path("eval/sample.yaml") == RES / "configs" / "eval" / "sample.yaml"
    assert resolve_path("data_prep/pooled.yaml") == RES / "configs" / "data" / "pooled.yaml"
    ds = load_deepspeed_config("train/deepspeed/zero2.json", batch_size=4, grad_accum=1, lr=1e-3, max_grad_norm=1.0, world_size=1, bf16=False)
    assert ds["zero_optimization"]["stage"] == 2
    # the defaults that name packaged files: scaling presets, demo prompts
    sc = ScalingConfig()
    for value in (sc.pretrain_config, sc.finetune_config):
        assert resolve_path(value, folders=("configs/train",)).is_relative_to(RES)
    prompts = read_prompt_file(resolve_path(DemoConfig().prompt_file, folders=("prompts",)))
    assert len(prompts) >= 2 and any(p.kind == "de_novo" for p, _ in prompts)
    # a user's own file wins over the packaged one of the same checkout path
    (outside / "train" / "configs").mkdir(parents=True)
    (outside / "train" / "configs" / "tiny.yaml").write_text("preset: tiny\nmax_steps: 77\n")
    assert load_config(PretrainConfig, "train/configs/tiny.yaml").max_steps == 77


def test_builtin_names_and_errors(outside):
    assert resolve_path("builtin:tiny") == RES / "configs" / "train" / "tiny.yaml"
    assert resolve_path("builtin:configs/deepspeed/zero2.json") == RES / "configs" / "deepspeed" / "zero2.json"
    assert resolve_path("builtin:zero2", folders=("configs/accelerate",)).suffix == ".yaml"
    with pytest.raises(ResourceError, match="ambiguous.*zero2.json.*zero2.yaml"):
        resolve_path("builtin:zero2")
    with pytest.raises(ResourceError, match="no packaged file builtin:nope; known: .*tiny"):
        resolve_path("builtin:nope")
    with pytest.raises(ResourceError, match="installation is incomplete"):
        resource_path("no-such-folder")
    assert resolve_path("my/own.yaml") == Path("my/own.yaml")  # unknown: unchanged, the caller names the missing file
    with pytest.raises(ConfigError, match="my/own.yaml does not exist"):
        load_config(PretrainConfig, "my/own.yaml")


def test_templates_render_outside_the_checkout(outside):
    cfg = load_config(PretrainConfig, "builtin:base", {"out": "runs/b", "corpus": "data/corpus"})
    job = MiyabiJob(cfg=cfg, nodes=2, group="gx00", workdir="/w", config_path="train/configs/base.yaml")
    text = render_pbs(job, now=dt.datetime(2025, 1, 2))
    assert text.startswith("#!/bin/bash") and "{{" not in text and "select=2" in text
    assert render_pbs(job, template="train/miyabi/pretrain.pbs.tmpl", now=dt.datetime(2025, 1, 2)) == text
    files = render_sweep_pbs(ScalingConfig(task="tc_top", sizes=(8, 16, 32), repeats=1), outside / "jobs", group="gx00")
    assert len(files) == 3 and all("{{" not in f.read_text() for f in files)


def test_checkout_folders_are_links_to_the_package():
    """No second copy: each checkout path the README names is a link into cifllm/resources (same file)."""
    for folder, packaged in CHECKOUT_FOLDERS.items():
        p = REPO / folder
        if folder in ("eval", "data_prep"):  # real folders with user-facing files; their configs are file links
            linked = [f for f in p.iterdir() if f.is_symlink() and f.is_file()]  # folder links have their own entry
            assert linked, f"{folder}: no links to packaged files"
            for f in linked:
                assert f.resolve().parent in {(RES / x).resolve() for x in packaged}, f
                assert resolve_path(f"{folder}/{f.name}").resolve() == f.resolve()
            copies = [f.name for f in p.iterdir() if f.is_file() and not f.is_symlink() and any((RES / x / f.name).exists() for x in packaged)]
            assert not copies, f"{folder}: copies of packaged files {copies}"
        else:
            assert p.is_symlink() and p.resolve() == (RES / packaged[0]).resolve(), f"{folder} is not a link to {packaged[0]}"


def test_every_packaged_file_ships_in_the_wheel():
    """pyproject's package-data covers every file under cifllm/resources (the glob it uses, evaluated here)."""
    text = (REPO / "pyproject.toml").read_text()
    globs = re.search(r"\[tool\.setuptools\.package-data\]\s*\n(?:#.*\n)*cifllm = \[([^\]]*)\]", text)
    assert globs, "no package-data for cifllm in pyproject.toml"
    patterns = [g.strip().strip('"') for g in globs.group(1).split(",") if g.strip()]
    pkg = REPO / "cifllm"
    shipped = {p for pat in patterns for p in pkg.glob(pat) if p.is_file()}
    missing = [str(p.relative_to(pkg)) for p in RES.rglob("*") if p.is_file() and p not in shipped]
    assert not missing, f"not in package-data: {missing}"


def test_no_module_finds_files_through_its_own_path():
    """``Path(__file__).parents[...]`` reaches into the checkout; run-time files come from importlib.resources."""
    offenders = []
    for f in sorted((REPO / "cifllm").rglob("*.py")):
        if "__file__" not in f.read_text():
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Name) and node.id == "__file__":
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"__file__ used to find files: {offenders}"

