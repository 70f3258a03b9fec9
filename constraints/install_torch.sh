#!/usr/bin/env bash
# Install the tested torch (constraints/cpu.txt) into the venv of PYTHON, from TORCH_INDEX.
#
#   constraints/install_torch.sh .venv/bin/python
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128 constraints/install_torch.sh .venv/bin/python   # CUDA wheel
#   TORCH_INDEX= constraints/install_torch.sh .venv/bin/python    # pip's own settings (a mirror, a local wheel folder)
#   constraints/install_torch.sh PYTHON --no-compile              # further arguments go to `pip install`
#
# TORCH_INDEX unset = PyTorch's CPU index (a CPU-only torch, no nvidia-* packages). When that index cannot be reached
# (an offline machine with its own package mirror), the script says so and falls back to pip's own settings.
# A torch that already satisfies the pin is kept (pip does not reinstall it).
set -euo pipefail
PY="${1:?usage: install_torch.sh PYTHON [pip install options]}"
HERE="$(cd "$(dirname "$0")" && pwd)"
INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
ARGS=(-m pip install -q "${@:2}" -c "$HERE/cpu.txt" torch)

PIN="$(grep -m1 -E '^torch==' "$HERE/cpu.txt" | cut -d= -f3)"
HAVE="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [ -n "$HAVE" ] && [ "${HAVE%%+*}" = "$PIN" ]; then
    echo "torch $HAVE already installed (pin: torch==$PIN)"
    exit 0
fi
if [ -n "$INDEX" ]; then
    if "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=10)" "$INDEX" 2>/dev/null; then
        echo "torch from $INDEX"
        exec "$PY" "${ARGS[@]}" --index-url "$INDEX"
    fi
    echo "TORCH_INDEX=$INDEX cannot be reached from here: torch comes from pip's own settings (pip config list)" >&2
fi
exec "$PY" "${ARGS[@]}"
