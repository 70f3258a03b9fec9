#!/usr/bin/env bash
# The installed package, not the checkout: build the wheel, install it in a clean venv and, from a folder outside the
# checkout, run `cifllm data --list`, `cifllm split --help`, `cifllm demo` (small budget), a corpus from a few CIFs,
# a bounded `cifllm pretrain` on it and `cifllm generate` from the result. Each step must succeed and leave its files.
#
#   .ci/wheel_check.sh               (or `make wheel-check`)
#   PY=.venv/bin/python              the interpreter that builds the wheel (needs setuptools + wheel; default .venv)
#   PYTHON=python3                   the interpreter of the clean venv
#   TORCH_INDEX=...                  where torch comes from (as in `make setup`, see constraints/install_torch.sh)
#   KEEP=1                           keep the temporary folder (its path is printed)
#   WHEEL_DEPS=clean                 clean: the venv installs the wheel's dependencies itself (pip's cache and settings);
#                                    shared: the venv sees the third-party packages of PY's venv (no install; cifllm
#                                    itself still comes only from the wheel, whose requirements are checked)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
PYTHON="${PYTHON:-python3}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cifllm-wheel.XXXXXX")"
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; else echo "wheel-check: keeping $WORK"; fi
T0=$SECONDS
# wall seconds and CPU seconds (user + sys of finished child processes) since the start: on a busy machine the wall
# time says little, the CPU time is what the step costs
step() {  # `times` runs in this shell (in a $(...) subshell it would see no children)
    times >"$WORK/times"
    echo "== wheel-check [$((SECONDS - T0)) s wall, $(tail -1 "$WORK/times" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } printf "%.0f", n }') s cpu] $*"
}
fail() { echo "wheel-check: FAILED: $*" >&2; exit 1; }

step "build the wheel"
rm -rf build/lib build/bdist.*  # setuptools reuses build/lib: a module deleted since the last build would ship
"$PY" -m pip wheel . --no-deps --no-build-isolation -q -w "$WORK/dist" 2>"$WORK/build.log" || { cat "$WORK/build.log" >&2; fail "wheel build"; }
WHL="$(ls "$WORK"/dist/cifllm-*.whl)"
"$PY" - "$WHL" "$REPO" <<'EOF' || fail "the wheel lacks packaged files"
import sys
import zipfile
from pathlib import Path

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
repo = Path(sys.argv[2])
files = [p.relative_to(repo).as_posix() for p in (repo / "cifllm" / "resources").rglob("*") if p.is_file()]
missing = [f for f in files if f not in names]
print(f"{Path(sys.argv[1]).name}: {len(files) - len(missing)} of {len(files)} files of cifllm/resources/")
sys.exit(f"missing from the wheel: {missing}" if missing else 0)
EOF

"$PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin"
case "${WHEEL_DEPS:-clean}" in
clean)
    step "clean venv: torch, then the wheel with the train extra"
    # --no-compile: no .pyc for all of torch/pymatgen up front (what is imported compiles when imported)
    "$REPO/constraints/install_torch.sh" "$V/python" --no-compile
    "$V/python" -m pip install -q --no-compile -c "$REPO/constraints/cpu.txt" "$WHL[train]"
    ;;
shared)
    step "venv on the third-party packages of $PY, the wheel without dependencies"
    deps="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    own="$("$V/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$V/python" -m pip install -q --no-deps --no-compile "$WHL"  # before the link: pip sees no other cifllm
    echo "$deps" >"$own/_cifllm_wheel_check_deps.pth"  # a plain path line: that folder's own .pth hooks do not run
    # the wheel's requirements (core + train extra) are met by what the venv sees (pip check would also judge the
    # venv's own bundled setuptools against torch's wish)
    "$V/python" - <<'EOF' || fail "the wheel's requirements are not met"
import importlib.metadata as md

from packaging.requirements import Requirement

bad = []
for r in map(Requirement, md.requires("cifllm") or []):
    if r.marker and not r.marker.evaluate({"extra": "train"}):
        continue
    try:
        v = md.version(r.name)
    except md.PackageNotFoundError:
        bad.append(f"{r}: not installed")
        continue
    if not r.specifier.contains(v, prereleases=True):
        bad.append(f"{r}: found {v}")
print(f"cifllm's requirements: {'all met' if not bad else bad}")
raise SystemExit(1 if bad else 0)
EOF
    ;;
*) fail "WHEEL_DEPS must be clean or shared, got ${WHEEL_DEPS}" ;;
esac

mkdir "$WORK/run" && cd "$WORK/run"
"$V/python" - "$REPO" <<'EOF'
import sys
from pathlib import Path

import cifllm

pkg = Path(cifllm.__file__).resolve()
assert Path(sys.argv[1]).resolve() not in pkg.parents, f"cifllm imported from the checkout: {pkg}"
print("cifllm from", pkg.parent)
EOF

step "cifllm data --list"
"$V/cifllm" data --list | tee data_list.txt
[ "$(wc -l <data_list.txt)" -ge 10 ] || fail "data --list printed fewer than 10 datasets"

step "cifllm split --help"
"$V/cifllm" split --help >split_help.txt
grep -q "usage: cifllm split" split_help.txt || fail "split --help"
"$V/python" -c "from cifllm.bench.tasks import list_tasks, load_task; names = list_tasks(); [load_task(n) for n in names]; print('tasks:', *names)"

step "cifllm demo (small budget: the packaged prompts, 1 sample each, 96 tokens, unconstrained)"
"$V/cifllm" demo out=demo num_samples=1 n_denovo=1 max_new_tokens=96 constrained=false
[ -f demo/demo.json ] && [ -f demo/samples/eval/metrics.json ] || fail "demo wrote no demo.json / metrics.json"

step "a corpus from a folder of CIFs"
mkdir cifs
"$V/python" - <<'EOF'
from pymatgen.core import Lattice, Structure

protos = [  # (name, space group, a in Angstrom, species, fractional sites)
    ("NaCl", "Fm-3m", 5.64, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ("KCl", "Fm-3m", 6.29, ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ("MgO", "Fm-3m", 4.21, ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ("CsCl", "Pm-3m", 4.12, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ("Si", "Fd-3m", 5.43, ["Si"], [[0, 0, 0]]),
    ("Cu", "Fm-3m", 3.61, ["Cu"], [[0, 0, 0]]),
    ("Fe", "Im-3m", 2.87, ["Fe"], [[0, 0, 0]]),
    ("ZnS", "F-43m", 5.41, ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
    ("SrTiO3", "Pm-3m", 3.91, ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
    ("CaF2", "Fm-3m", 5.46, ["Ca", "F"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
]
for name, sg, a, species, coords in protos:
    Structure.from_spacegroup(sg, Lattice.cubic(a), species, coords).to(filename=f"cifs/{name}.cif")
EOF
mkdir registry
cat >registry/my_cifs.yaml <<'EOF'
name: my_cifs
title: ten cubic prototypes (wheel check)
kind: structures
format: cif_dir
files:
  - path: cifs
licence: CC0
EOF
"$V/cifllm" data registry=registry data_dir=. out=corpus workers=1 val_fraction=0.2 --no-progress >data_out.txt || { cat data_out.txt >&2; fail "cifllm data on a CIF folder"; }
[ -f corpus/manifest.json ] || fail "no corpus/manifest.json"

step "cifllm pretrain (tiny preset by its checkout path, 4 steps)"
"$V/cifllm" pretrain --config train/configs/tiny.yaml corpus=corpus out=tiny max_steps=4 batch_size=2 warmup_steps=1 \
    eval_steps=0 save_steps=4 logging_steps=2 progress=false
[ -f tiny/model/config.json ] || fail "pretrain saved no model"

step "cifllm generate from the pretrained model"
"$V/cifllm" generate --model tiny/model --composition NaCl -n 1 --max-new-tokens 48 --seed 0 --no-constrained >generate_out.txt
[ -s generate_out.txt ] || fail "generate printed nothing"
head -5 generate_out.txt

step "done"
