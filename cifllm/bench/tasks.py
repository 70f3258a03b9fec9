"""Discovery-task definitions: one YAML per task in the package (``cifllm/resources/tasks/``, linked from the
checkout's ``eval/tasks/``), loaded into a frozen :class:`TaskSpec`.

Rules (``rule``):

* ``random_formula``  - control: test = reduced formulas whose hash falls under ``test_fraction``.
* ``elements``        - Case 1: every structure containing any of ``elements`` is test (and out of pretraining).
* ``prototypes``      - Case 1: structure types (anonymous formula + space group + Wyckoff letters) whose hash falls
                         under ``test_fraction`` are held out entirely.
* ``property_top``    - Case 2: rows with ``property``; train below the ``quantile`` of its values, test = the tail above.
* ``time``            - Case 3: rows with a year; train = year <= ``cutoff_year``, test = later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cifllm.core.config import ConfigError, load_config
from cifllm.utils.resources import resolve_path, resources_root

__all__ = ["TaskSpec", "load_task", "list_tasks", "TASKS_DIR"]

#: the packaged task folder (``cifllm/resources/tasks``)
TASKS_DIR = resources_root() / "tasks"
MP_STYLE_SOURCES = ("mp_20", "mpts_52", "mp40_time_split", "materialmini", "lemat_baselines")


@dataclass(frozen=True)
class TaskSpec:
    """One discovery task. Fractions are of reduced formulas / prototypes; quantiles of the property values."""

    name: str
    case: int  # 0 = in-distribution control, 1 = input, 2 = output, 3 = historical extrapolation
    description: str
    rule: Literal["random_formula", "elements", "prototypes", "property_top", "time"]
    sources: tuple[str, ...] = ()  # corpus rows with any of these sources; empty = all rows
    test_fraction: float = 0.1
    val_fraction: float = 0.1  # of the train side, hashed on reduced formula
    elements: tuple[str, ...] = ()
    property: str = ""
    unit: str = ""
    quantile: float = 0.9
    min_value: float | None = None  # rows with property <= min_value are dropped (e.g. Tc = 0: non-superconductors)
    max_hydrogen_fraction: float | None = None  # drop compositions with more H than this atomic fraction
    cutoff_year: int = 0
    seed: int = 0
    conditioning: tuple[str, ...] = ()  # corpus property names used for LoRA conditioning (Case 2)
    n_prompts: int = 20  # default CSP prompts (test compositions) at the CPU budget
    n_samples: int = 4  # samples per prompt
    n_denovo: int = 64  # unconditioned / conditioned de novo samples
    metrics: tuple[str, ...] = ("csp", "denovo", "rediscovery")

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError(f"task {self.name}: fractions must lie in (0, 1)")
        if self.rule == "elements" and not self.elements:
            raise ValueError(f"task {self.name}: rule 'elements' needs a non-empty 'elements' list")
        if self.rule == "property_top":
            if not self.property:
                raise ValueError(f"task {self.name}: rule 'property_top' needs 'property'")
            if not 0 < self.quantile < 1:
                raise ValueError(f"task {self.name}: quantile {self.quantile} must lie in (0, 1)")
        if self.rule == "time" and self.cutoff_year <= 0:
            raise ValueError(f"task {self.name}: rule 'time' needs 'cutoff_year'")


def list_tasks(tasks_dir: str | Path = TASKS_DIR) -> list[str]:
    """Task names (file stems) in ``tasks_dir``; a missing folder or one without ``*.yaml`` is a ``ConfigError``."""
    d = Path(tasks_dir)
    if d.is_file():
        raise ConfigError(f"tasks folder {d}: is a file, expected a folder of <task>.yaml files")
    if not d.is_dir():
        raise ConfigError(f"tasks folder {d} does not exist")
    names = sorted(p.stem for p in d.glob("*.yaml"))
    if not names:
        raise ConfigError(f"tasks folder {d} has no *.yaml task files")
    return names


def load_task(name_or_path: str | Path, tasks_dir: str | Path = TASKS_DIR, overrides: list[str] | None = None) -> TaskSpec:
    """A task by name (``<tasks_dir>/<name>.yaml``, default the packaged tasks) or by path (``builtin:<name>`` and the
    checkout's ``eval/tasks/<name>.yaml`` resolve to the packaged file); unknown keys and bad values raise
    ``ConfigError``."""
    p = resolve_path(name_or_path, folders=("tasks",))
    if not p.suffix:
        p = Path(tasks_dir) / f"{name_or_path}.yaml"
    if p.is_dir():
        raise ConfigError(f"task file {p}: is a directory, expected a <task>.yaml file")
    if not p.is_file():
        raise FileNotFoundError(f"no task file {p}; known tasks: {list_tasks(tasks_dir)}")
    return load_config(TaskSpec, p, overrides)
