"""The layers of cifllm, lowest first: a module imports only from its own layer unit or from lower layers.

=============  ========================================================================================================
layer          what it holds
=============  ========================================================================================================
utils          atomic writes, hashing, time limits, packaged resources (imports nothing of cifllm)
core           shared contracts: errors, config loader, the reader of users' JSON/YAML/text files, run/split/adapter
               records and file names, model resolution, report formatting (``cifllm.errors`` and ``cifllm.config`` are
               its compatibility names)
cif            canonical CIF text, parsing, symmetry, matching
tokenization   the CIF tokenizer
conditioning   property lines written before a CIF (pure functions)
modeling       model presets and configs
data           corpus building: readers, filters, dedup, the corpus folder
potentials     universal interatomic potentials (CHGNet, SevenNet), elemental references, the DFT-anchored hull
sampling       prompts, constraint engine, generation engines, ``cifllm sample``
evaluation     checks, matching, stability, NLL, ``cifllm evaluate``
bench          discovery tasks, splits, oracle, baselines, the benchmark runner
training       pretraining, LoRA fine-tuning, checkpoints, cluster jobs
hub            export, model card, push
scaling        the transfer scaling-law sweep and fit
demo           the main job on built-in defaults
api            the documented Python API; ``generate``, the one sample-and-check front-end (CLI too)
cli            ``cifllm <stage>``: one module per stage, one error handler
fuzz           fuzzers of the pipeline and of the CLI's error contract (drive ``cifllm.cli``)
=============  ========================================================================================================

Rules (enforced by ``tests/test_layering.py``): no import from a higher layer; no import of a cifllm module inside a
function body (imports sit at the top of the module), except the modules in :data:`LAZY_MODULES`, which import an
optional extra at import time; no import cycle between layer units. The CLI loads a stage's module by name
(:data:`cifllm.cli.STAGES`), so ``cifllm --help`` does not import every stage.
"""

from __future__ import annotations

__all__ = ["LAYERS", "LAZY_MODULES", "layer_of", "unit_of"]

#: layer units, lowest first; units in one tuple share a layer
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),
    ("core", "errors", "config"),
    ("cif",),
    ("tokenization",),
    ("conditioning",),
    ("modeling",),
    ("data",),
    ("potentials",),
    ("sampling",),
    ("evaluation",),
    ("bench",),
    ("training",),
    ("hub",),
    ("scaling",),
    ("demo",),
    ("api",),
    ("cli",),
    ("fuzz",),
)

#: cifllm modules that import an optional extra (vLLM) when imported: they may be imported inside the function that
#: needs them, and only there
LAZY_MODULES: frozenset[str] = frozenset({"cifllm.sampling.vllm_constraint"})


def unit_of(module: str) -> str:
    """``cifllm.sampling.run`` -> ``sampling``; ``cifllm`` -> ``""`` (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int | None:
    """The layer index of a module (0 = lowest), or None for a unit not in :data:`LAYERS` (and the package root)."""
    unit = unit_of(module)
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    return None
