"""The README's annotated package tree lists every module of the package (issue 31 item 21)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tree_lists_every_module():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- package-tree -->", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    listed: set[str] = set()
    pkg = ""
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)\s+#", line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        if name.endswith("/"):
            pkg = name[:-1] if indent == 2 else pkg
            listed.add(f"{name[:-1]}/__init__.py")
        elif indent == 2:
            listed.add(name)
            pkg = ""
        else:
            listed.add(f"{pkg}/{name}")
    modules = {p.relative_to(ROOT / "cifllm").as_posix() for p in (ROOT / "cifllm").rglob("*.py") if "resources" not in p.parts}
    assert not modules - listed, f"modules missing from the README tree: {sorted(modules - listed)}"
    assert not listed - modules - {"resources/__init__.py"}, f"README tree lists modules that do not exist: {sorted(listed - modules)}"
