#!/usr/bin/env bash
# Create (or refresh) the project virtualenv and install statetap into it, editable.
#
#   scripts/bootstrap.sh            # venv at ./.venv
#   VENV=/path/to/venv PYTHON=python3.11 scripts/bootstrap.sh
#
# - Every pip install runs with `-c constraints.txt` (the lock, written by scripts/lock.sh): two
#   fresh machines install the same versions of everything, transitive dependencies included.
# - If the system python3 already has a CUDA torch (a GPU machine), the venv is created with
#   --system-site-packages and torch/triton are taken from there; the lock's torch, triton and
#   nvidia-* lines are then left out of the constraints (they must not replace that torch).
# - Otherwise the CPU wheels torch and triton pinned in the lock (torch==2.13.0, triton==3.8.0)
#   are installed first. Never an unpinned torch: it resolves to a multi-GB CUDA build.
# - Then `pip install --no-build-isolation -e ".[dev]"` (builds csrc/ into statetap._C if any).
# - On a CPU machine, mamba-ssm's python code (no CUDA build; its pin is in the lock) for its
#   adapter's tests.
# - A stamp in the venv records a hash of setup.py, pyproject.toml, the lock, this script and
#   csrc/ sources; the install re-runs only when that hash changes. Safe to run repeatedly.
#   An existing venv is brought to the lock's versions but keeps packages the lock has since
#   dropped (bootstrap warns); delete the venv for exactly the locked set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
[[ "$VENV" == /* ]] || VENV="$(pwd -P)/$VENV"
PYTHON="${PYTHON:-python3}"
LOCK="constraints.txt"
STAMP="$VENV/.statetap-install-stamp"

# lock_pin NAME: the lock's NAME==VERSION line (names compared as pip does: case, - _ . alike)
lock_pin() {
    awk -v want="$1" '
        function norm(n) { n = tolower(n); gsub(/[-_.]+/, "-", n); return n }
        /^[[:space:]]*(#|$)/ { next }
        { split($0, kv, "=="); if (norm(kv[1]) == norm(want)) { print want "==" kv[2]; found = 1; exit } }
        END { exit !found }' "$LOCK" \
        || { echo "bootstrap: $LOCK has no $1 line (regenerate it with scripts/lock.sh)" >&2; exit 1; }
}
[[ -f "$LOCK" ]] || { echo "bootstrap: $LOCK (the lock) is missing" >&2; exit 1; }
TORCH_PIN="$(lock_pin torch)"
TRITON_PIN="$(lock_pin triton)"
MAMBA_SSM_PIN="$(lock_pin mamba-ssm)"
NINJA_PIN="$(lock_pin ninja)"

inputs_hash() {
    {
        cat setup.py pyproject.toml "$LOCK" scripts/bootstrap.sh
        find csrc -maxdepth 1 -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) \
            -print0 2>/dev/null | sort -z | xargs -0 -r cat
    } | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

has_cuda_torch() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1
}

if [[ ! -x "$VENV/bin/python" ]]; then
    if has_cuda_torch "$PYTHON"; then
        echo "bootstrap: system $PYTHON has a CUDA torch; creating $VENV with --system-site-packages"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        echo "bootstrap: creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi

rm -f "$STAMP"

# The constraints pip installs under: the whole lock, or (beside a CUDA torch) the lock without
# torch, triton and the nvidia-* CUDA libraries, which belong to that torch.
CONSTRAINTS="$LOCK"
if has_cuda_torch "$VENV/bin/python"; then
    CONSTRAINTS="$(mktemp "${TMPDIR:-/tmp}/statetap-constraints.XXXXXX")"
    trap 'rm -f "$CONSTRAINTS"' EXIT
    grep -viE '^[[:space:]]*(torch|triton|nvidia[-_.][^=]*)[[:space:]]*==' "$LOCK" > "$CONSTRAINTS"
fi
PIP=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")

# The build tools come first; python's bundled setuptools is too old for editable installs here,
# and ninja must be there before statetap._C is built (pip builds the package before it installs
# the dev extras).
if has_cuda_torch "$VENV/bin/python"; then
    echo "bootstrap: using the CUDA torch already visible to $VENV (lock minus torch/triton/nvidia-*)"
    "${PIP[@]}" "setuptools>=70.1" wheel "$NINJA_PIN"
else
    echo "bootstrap: installing $TORCH_PIN (CPU) and $TRITON_PIN"
    "${PIP[@]}" "$TORCH_PIN" "$TRITON_PIN" "setuptools>=70.1" wheel "$NINJA_PIN"
fi

echo "bootstrap: installing statetap (editable) with the dev extras"
"${PIP[@]}" --no-build-isolation -e ".[dev]"

# mamba-ssm's python package, for its adapter's tests (tests/test_mamba_ssm.py). On a CPU machine
# only its python code installs (no CUDA build; the tests stand in for the extension).
if ! has_cuda_torch "$VENV/bin/python"; then
    echo "bootstrap: installing $MAMBA_SSM_PIN (python code only)"
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
        "${PIP[@]}" --no-deps --no-build-isolation "$MAMBA_SSM_PIN"
    "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(not importlib.util.find_spec("mamba_ssm"))'
fi

# Fail here, not in the first test, if the install does not map the packages as intended:
# statetap, statetap.kernels and statetap.interp come from this checkout, and no top-level
# `kernels`/`interp` resolves into it. Run from / so the cwd is not on sys.path.
ROOT="$(pwd -P)"
(cd / && "$VENV/bin/python" - "$ROOT" <<'PYEOF'
import importlib.util, os, sys
root = sys.argv[1]
inside = lambda p, d: p == d or p.startswith(d + os.sep)
expect = {"statetap": "statetap", "statetap.kernels": "kernels", "statetap.interp": "interp"}
for name, folder in expect.items():
    spec = importlib.util.find_spec(name)
    where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), ""))
    if not where or not inside(os.path.realpath(where), os.path.join(root, folder)):
        sys.exit(f"bootstrap: {name} does not resolve to {root}/{folder} (found: {where})")
for name in ("kernels", "interp"):
    spec = importlib.util.find_spec(name)
    where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), ""))
    if where and inside(os.path.realpath(where), os.path.join(root, name)):
        sys.exit(f"bootstrap: top-level {name!r} resolves to this checkout ({where})")
PYEOF
)

# An existing venv keeps packages that the lock has since dropped: say so (CPU venvs only; a GPU
# venv also sees the system's packages).
if ! has_cuda_torch "$VENV/bin/python"; then
    "$VENV/bin/python" - "$LOCK" <<'PYEOF'
import re, subprocess, sys

def pins(lines):
    """{(normalised name, version without a local label)} of the NAME==VERSION lines."""
    out = set()
    for line in lines:
        line = line.strip()
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out.add((re.sub(r"[-_.]+", "-", name).lower(), version.split("+")[0]))
    return out

freeze = subprocess.run(
    [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable", "--disable-pip-version-check"],
    check=True, capture_output=True, text=True,
).stdout.splitlines()
have = {p for p in pins(freeze) if p[0] not in ("pip", "statetap")}
want = pins(open(sys.argv[1]))
extra, missing = sorted(have - want), sorted(want - have)
if extra or missing:
    print("bootstrap: warning: the venv differs from the lock (delete it for exactly the locked set):"
          + "".join(f"\n  venv has {n}=={v}" for n, v in extra)
          + "".join(f"\n  lock has {n}=={v}" for n, v in missing), file=sys.stderr)
PYEOF
fi

echo "$want" > "$STAMP"
echo "bootstrap: done ($("$VENV/bin/python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'))"
