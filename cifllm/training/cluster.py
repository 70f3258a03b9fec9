"""Cluster launch: render (and submit) a PBS Professional job for Miyabi-G (one GH200 per node).

The job (packaged template ``cifllm/resources/templates/miyabi/pretrain.pbs.tmpl``, linked from ``train/miyabi/``) starts one MPI rank per node; each rank runs
``torchrun --nnodes N --nproc_per_node 1 --node_rank $OMPI_COMM_WORLD_RANK --master_addr <first node>`` with
``-m cifllm.cli pretrain ... --resume``, so resubmitting the same job continues the run. Rendering checks the options
(walltime format, node count, DeepSpeed config against the world size) before anything is submitted.
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.core.config import ConfigError
from cifllm.training.config import PretrainConfig
from cifllm.training.deepspeed_config import load_deepspeed_config
from cifllm.utils import atomic_write_text
from cifllm.utils.resources import resolve_path, resources_root

__all__ = ["DEFAULT_MODULES", "MiyabiJob", "TEMPLATE", "render_pbs", "submit"]

TEMPLATE = resources_root() / "templates" / "miyabi" / "pretrain.pbs.tmpl"
#: modules loaded by the job; check ``module avail`` on Miyabi and pass ``--modules`` if the names differ
DEFAULT_MODULES = ("cuda", "ompi-cuda")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_GROUP_UNSET = "SET_GROUP"


@dataclass(frozen=True)
class MiyabiJob:
    """Options of one Miyabi-G pretraining job (times as ``HH:MM:SS``, paths as seen on the cluster)."""

    cfg: PretrainConfig
    nodes: int = 1
    walltime: str = "12:00:00"
    group: str | None = None
    queue: str = "regular-g"
    job_name: str | None = None
    workdir: str = "."
    venv: str = ".venv"
    cache_root: str | None = None
    modules: tuple[str, ...] = DEFAULT_MODULES
    master_port: int = 29500
    omp_threads: int = 72  # Grace CPU cores per node (DeepSpeedCPUAdam uses them)
    config_path: str | None = None  # run YAML passed on to the job
    overrides: tuple[str, ...] = field(default_factory=tuple)  # key=value passed on to the job

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1, got {self.nodes}")
        if not re.fullmatch(r"\d{1,3}:[0-5]\d:[0-5]\d", self.walltime):
            raise ConfigError(f"--walltime must be HH:MM:SS, got {self.walltime!r}")
        if self.group is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.group):
            raise ConfigError(f"--group {self.group!r} is not a valid group name")
        if not self.modules:
            raise ConfigError("--modules is empty")

    @classmethod
    def from_args(cls, cfg: PretrainConfig, args: Any) -> MiyabiJob:
        """Build from ``cifllm pretrain`` arguments (group defaults to ``$GROUP``, workdir to the current folder)."""
        import os

        modules = tuple(args.modules.split()) if getattr(args, "modules", None) else DEFAULT_MODULES
        return cls(
            cfg=cfg,
            nodes=args.nodes,
            walltime=args.walltime,
            group=args.group or os.environ.get("GROUP") or None,
            queue=args.queue,
            job_name=args.job_name,
            workdir=args.workdir or str(Path.cwd()),
            cache_root=args.cache_root,
            modules=modules,
            config_path=args.config,
            overrides=tuple(args.overrides),
        )

    @property
    def name(self) -> str:
        return self.job_name or f"cifllm-{self.cfg.preset}"

    def pretrain_args(self) -> list[str]:
        """Arguments of ``cifllm pretrain`` inside the job (always with ``--resume``)."""
        out: list[str] = []
        if self.config_path:
            out += ["--config", self.config_path]
        given = {o.split("=", 1)[0].strip().replace("-", "_") for o in self.overrides}
        out += list(self.overrides)
        for key in ("corpus", "out"):  # always explicit, so the job does not depend on defaults
            if key not in given:
                out.append(f"{key}={getattr(self.cfg, key)}")
        out.append("--resume")
        return out


def _check_deepspeed(job: MiyabiJob) -> None:
    cfg = job.cfg
    if not cfg.deepspeed:
        return

    path = resolve_path(cfg.deepspeed, folders=("configs/deepspeed",))  # builtin:<x> / train/deepspeed/<x>.json
    if not path.is_absolute() and not path.is_file():
        path = Path(job.workdir) / path
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {cfg.deepspeed} not found (relative paths are taken from {job.workdir})")
    load_deepspeed_config(
        path, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world_size=job.nodes,
        bf16=cfg.precision != "fp32", lr=cfg.lr, max_grad_norm=cfg.max_grad_norm,
    )


def render_pbs(job: MiyabiJob, template: str | Path | None = None, now: _dt.datetime | None = None) -> str:
    """The PBS job file for ``job``. Raises ``ConfigError`` on a bad option or an unknown template placeholder."""
    tpl_path = resolve_path(template, folders=("templates/miyabi",)) if template else TEMPLATE
    if not tpl_path.is_file():
        raise FileNotFoundError(f"PBS template {tpl_path} not found (run from a cifllm checkout)")
    _check_deepspeed(job)
    cache_root = job.cache_root or f"/work/{job.group or _GROUP_UNSET}/${{USER}}/.cache"
    out_dir = Path(job.cfg.out)
    log_file = out_dir if out_dir.is_absolute() else Path(job.workdir) / out_dir
    values = {
        "queue": job.queue,
        "nodes": str(job.nodes),
        "walltime": job.walltime,
        "group": job.group or _GROUP_UNSET,
        "job_name": job.name,
        "log_file": str(log_file / f"{job.name}.pbs.log"),
        "rendered_at": (now or _dt.datetime.now()).strftime("%Y-%m-%d %H:%M"),
        "workdir": shlex.quote(job.workdir),
        "modules": " ".join(shlex.quote(m) for m in job.modules),
        "venv": shlex.quote(job.venv),
        "cache_root": cache_root if "${USER}" in cache_root else shlex.quote(cache_root),
        "omp_threads": str(job.omp_threads),
        "master_port": str(job.master_port),
        "out": shlex.quote(str(job.cfg.out)),
        "pretrain_args": " ".join(shlex.quote(a) for a in job.pretrain_args()),
    }

    return render_template(tpl_path, values)


def render_template(tpl_path: str | Path, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders of a job template; an unknown placeholder is a ``ConfigError``."""
    tpl_path = Path(tpl_path)

    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise ConfigError(f"{tpl_path}: unknown placeholder {{{{{key}}}}}")
        return values[key]

    return _PLACEHOLDER.sub(fill, tpl_path.read_text())


def submit(job: MiyabiJob, dry_run: bool = False, template: str | Path | None = None) -> int:
    """Render the job; with ``dry_run`` print it, else write ``<out>/<name>.pbs`` and ``qsub`` it. Returns an exit code."""
    text = render_pbs(job, template)
    if dry_run:
        if not job.group:
            print(f"warning: no --group (or $GROUP); the job says group_list={_GROUP_UNSET}", file=sys.stderr)
        print(text, end="")
        return 0
    if not job.group:
        raise ConfigError("Miyabi needs a group for '#PBS -W group_list': pass --group gXXXXX (or set GROUP)")
    qsub = shutil.which("qsub")
    if qsub is None:
        raise FileNotFoundError("qsub not found: submit from a Miyabi login node (or use --dry-run to see the job)")
    out_dir = Path(job.cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    job_file = out_dir / f"{job.name}.pbs"

    atomic_write_text(job_file, text)
    res = subprocess.run([qsub, str(job_file)], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"qsub failed ({res.returncode}): {res.stderr.strip()}", file=sys.stderr)
        return res.returncode
    print(f"submitted {job_file}: {res.stdout.strip()}")
    return 0
