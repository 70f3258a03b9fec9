"""The layering of cifllm (:mod:`cifllm.core.layers`): no import from a higher layer, no cifllm import inside a
function body (except the optional-extra modules of ``LAZY_MODULES``), no import cycle between layer units.

The rule functions are checked on crafted sources first, so a rule that can never fire fails here."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from cifllm.core.layers import LAYERS, LAZY_MODULES, layer_of, unit_of

ROOT = Path(__file__).resolve().parents[1] / "cifllm"


@dataclass(frozen=True)
class Import:
    module: str  # importing module
    target: str  # imported cifllm module
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> list[Import]:
    """Every import of a cifllm module in ``source`` (absolute or relative), and whether it sits in a function body.
    Imports under ``if TYPE_CHECKING:`` are skipped (never executed)."""
    tree = ast.parse(source)
    skip: set[int] = set()
    in_func: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_func |= {id(n) for n in ast.walk(node) if n is not node}
    package = module if module.endswith(".__init__") else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "cifllm" or a.name.startswith("cifllm.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "cifllm" or name.startswith("cifllm."):
                targets = [name]
        out += [Import(module, t, node.lineno, id(node) in in_func) for t in targets]
    return out


def violations(imports: list[Import]) -> list[str]:
    """Upward imports, function-local imports (outside LAZY_MODULES) and imports of a unit missing from LAYERS."""
    bad = []
    for imp in imports:
        src, dst = layer_of(imp.module), layer_of(imp.target)
        where = f"{imp.module}:{imp.line}"
        if src is None:
            if imp.module != "cifllm":  # the package root sits on top of everything
                bad.append(f"{where}: unit {unit_of(imp.module)!r} is not in LAYERS")
            continue
        if dst is None:
            bad.append(f"{where}: imports {imp.target}, which is not in a layer below (the package root or an unknown unit)")
        elif dst > src:
            bad.append(f"{where}: imports {imp.target} from a higher layer ({unit_of(imp.target)} above {unit_of(imp.module)})")
        if imp.in_function and imp.target not in LAZY_MODULES:
            bad.append(f"{where}: imports {imp.target} inside a function (imports go at the top; see LAZY_MODULES)")
    return bad


def unit_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles (strongly connected components of more than one unit) of the unit-level import graph."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        a, b = unit_of(imp.module), unit_of(imp.target)
        if a and b and a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return cycles


def _tree_imports() -> list[Import]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        out += imports_of(path.read_text(), _module_name(path))
    return out


# ------------------------------------------------------------------------------------------ the rules themselves


def test_rules_catch_crafted_violations():
    src = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from cifllm.training.config import PretrainConfig\n"  # sampling -> training: upward
        "from cifllm.cif import parse_canonical\n"  # downward: fine
        "if TYPE_CHECKING:\n"
        "    from cifllm.cli import main\n"  # never executed: fine
        "def f():\n"
        "    from cifllm.tokenization import load_tokenizer\n"  # downward but inside a function
        "    from cifllm.sampling.vllm_constraint import X\n"  # optional extra: allowed lazily
        "    return load_tokenizer\n"
    )
    imps = imports_of(src, "cifllm.sampling.fake")
    assert sorted(i.target for i in imps) == ["cifllm.cif", "cifllm.sampling.vllm_constraint", "cifllm.tokenization", "cifllm.training.config"]
    bad = violations(imps)
    assert len(bad) == 2, bad
    assert any("cifllm.training.config from a higher layer" in b for b in bad)
    assert any("cifllm.tokenization inside a function" in b for b in bad)
    assert violations(imports_of("from cifllm.newthing import x\n", "cifllm.cif.fake")) != []  # unknown unit
    assert violations(imports_of("from . import run\n", "cifllm.sampling.fake")) == []  # relative, same unit
    assert violations(imports_of("from ..training import config\n", "cifllm.sampling.fake")) != []  # relative, upward


def test_cycle_finder_on_a_crafted_graph():
    imps = [Import("cifllm.a.x", "cifllm.b.y", 1, False), Import("cifllm.b.y", "cifllm.c", 1, True), Import("cifllm.c", "cifllm.a.z", 1, False),
            Import("cifllm.d", "cifllm.a.x", 1, False)]
    assert unit_cycles(imps) == [["a", "b", "c"]]
    assert unit_cycles(imps[1:]) == []


def test_layers_list_every_unit_once():
    units = [u for layer in LAYERS for u in layer]
    assert len(units) == len(set(units))
    present = {unit_of(_module_name(p)) for p in ROOT.rglob("*.py")} - {""}
    assert present <= set(units), f"units missing from cifllm.core.layers.LAYERS: {sorted(present - set(units))}"


# ------------------------------------------------------------------------------------------------ the package


def test_no_upward_or_function_local_imports():
    bad = violations(_tree_imports())
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_no_cycle_between_units():
    assert unit_cycles(_tree_imports()) == []


def test_core_imports_no_stage():
    core = [i for i in _tree_imports() if unit_of(i.module) == "core"]
    assert core and {unit_of(i.target) for i in core} <= {"core", "utils"}
