"""README "Install": pip users get a CPU-only torch command before ``pip install cifllm`` (a bare ``pip install cifllm``
on Linux pulls the CUDA build of torch and ~19 ``nvidia-*`` packages, ~3 GB), and a CUDA command for GPU nodes; both
name the tested torch (constraints/cpu.txt), which satisfies the package's own torch requirement."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _install_section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Install\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Install' section"
    return m.group(1)


def _torch_pin() -> str:
    line = next(ln for ln in (ROOT / "constraints" / "cpu.txt").read_text().splitlines() if ln.startswith("torch=="))
    return line.split("==", 1)[1].strip()


def _commands(block: str) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_install_gives_pip_users_the_cpu_torch_first() -> None:
    section = _install_section()
    m = re.search(r"<!-- install-cpu -->\s*```bash\n(.*?)```", section, re.S)
    assert m, "README Install has no ```bash block after <!-- install-cpu -->"
    cmds = _commands(m.group(1))
    pin = _torch_pin()
    torch_cmd = f"pip install torch=={pin} --index-url {CPU_INDEX}"
    assert torch_cmd in cmds, f"the CPU block must run {torch_cmd!r}; it runs {cmds}"
    pkg = [i for i, c in enumerate(cmds) if re.fullmatch(r"pip install (cifllm|\"?cifllm\[[a-z,]+\]\"?)", c)]
    assert pkg and pkg[0] > cmds.index(torch_cmd), f"`pip install cifllm` must come after the CPU torch: {cmds}"


def test_readme_install_says_how_to_get_cuda_torch() -> None:
    section = _install_section()
    pin = _torch_pin()
    assert re.search(rf"pip install torch=={re.escape(pin)} --index-url https://download\.pytorch\.org/whl/cu\d+", section)
    assert "nvidia-" in section  # why the bare command is not the one to run on a CPU machine


def test_tested_torch_satisfies_the_package_requirement() -> None:
    m = re.search(r'^\s*"(torch[<>=!~ ,.0-9]*)",?$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml declares no torch dependency"
    req = Requirement(m.group(1))
    assert req.specifier.contains(_torch_pin()), f"constraints/cpu.txt torch {_torch_pin()} is outside {req}"
