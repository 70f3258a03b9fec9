"""pyproject.toml declares what cifllm imports, and imports what it declares: every third-party module imported under
``cifllm/`` belongs to a declared distribution (core or an extra), and every core dependency is imported somewhere
(an undeclared import breaks a clean install; an unused dependency is installed for nothing)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    """(core dependency names, names in any extra), normalized."""
    text = (ROOT / "pyproject.toml").read_text()
    core = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    extras = re.search(r"^\[project\.optional-dependencies\](.*?)^\[", text, re.S | re.M)
    assert core and extras
    names = lambda block: {_norm(Requirement(s).name) for s in re.findall(r'"([^"]+)"', block)}  # noqa: E731
    return names(core.group(1)), names("\n".join(ln.split("=", 1)[1] for ln in extras.group(1).splitlines() if "=" in ln))


def _imported() -> set[str]:
    """Top-level third-party modules imported anywhere under cifllm/ (module level or in a function)."""
    mods: set[str] = set()
    for path in (ROOT / "cifllm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("cifllm", "__future__")}


def test_every_import_is_declared_and_every_core_dependency_is_used():
    core, extras = _declared()
    dists = packages_distributions()
    imported_dists: set[str] = set()
    undeclared = []
    for mod in sorted(_imported()):
        names = {_norm(d) for d in dists.get(mod, [mod])}
        imported_dists |= names
        if not names & (core | extras):
            undeclared.append(f"{mod} ({', '.join(sorted(names))})")
    assert undeclared == [], f"imported under cifllm/ but not declared in pyproject.toml: {undeclared}"
    unused = sorted(core - imported_dists)
    assert unused == [], f"core dependencies cifllm never imports: {unused}"
