#!/usr/bin/env bash
# Create (or refresh) the project virtualenv and install statetap into it, editable.
#
#   scripts/bootstrap.sh            # venv at ./.venv
#   VENV=/path/to/venv PYTHON=python3.11 scripts/bootstrap.sh
#
# - If the system python3 already has a CUDA torch (a GPU machine), the venv is created with
#   --system-site-packages and torch/triton are taken from there.
# - Otherwise the CPU wheel torch==2.13.0 and triton==3.8.0 are installed first. Never an
#   unpinned torch: it resolves to a multi-GB CUDA build.
# - Then `pip install --no-build-isolation -e ".[dev]"` (builds csrc/ into statetap._C if any).
# - On a CPU machine, mamba-ssm's python code (no CUDA build) for its adapter's tests.
# - A stamp in the venv records a hash of setup.py, pyproject.toml, this script and csrc/
#   sources; the install re-runs only when that hash changes. Safe to run repeatedly.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
[[ "$VENV" == /* ]] || VENV="$(pwd -P)/$VENV"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
TRITON_PIN="triton==3.8.0"
STAMP="$VENV/.statetap-install-stamp"

inputs_hash() {
    {
        cat setup.py pyproject.toml scripts/bootstrap.sh
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

PIP=("$VENV/bin/python" -m pip install -q)
rm -f "$STAMP"

# The build tools come first; python's bundled setuptools is too old for editable installs here.
if has_cuda_torch "$VENV/bin/python"; then
    echo "bootstrap: using the CUDA torch already visible to $VENV"
    "${PIP[@]}" "setuptools>=70.1" wheel
else
    echo "bootstrap: installing $TORCH_PIN (CPU) and $TRITON_PIN"
    "${PIP[@]}" "$TORCH_PIN" "$TRITON_PIN" "setuptools>=70.1" wheel
fi

echo "bootstrap: installing statetap (editable) with the dev extras"
"${PIP[@]}" --no-build-isolation -e ".[dev]"

# mamba-ssm's python package, for its adapter's tests (tests/test_mamba_ssm.py). On a CPU machine
# only its python code installs (no CUDA build; the tests stand in for the extension).
MAMBA_SSM_PIN="mamba-ssm==2.3.2.post1"
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

echo "$want" > "$STAMP"
echo "bootstrap: done ($("$VENV/bin/python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'))"
