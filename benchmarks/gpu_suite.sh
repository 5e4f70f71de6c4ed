#!/usr/bin/env bash
# The GPU suite in one command, for a lent GPU machine (the device tool runs it from the
# repository root). It installs statetap over the machine's own torch and triton, checks every
# op on the GPU against its float64 definition, runs the test suite with the Triton interpreter
# off (the kernel tests then launch compiled kernels on CUDA tensors), and runs both benchmarks.
# Result JSON files land in benchmarks/results/ and are copied to $OUT when it is set.
#
#   bash scripts/gpu_wheels.sh              # here, first: the locked wheels the image lacks -> .whl/
#   bash benchmarks/gpu_suite.sh            # --quick benchmark grids (fits one 10-minute call)
#   FULL=1 bash benchmarks/gpu_suite.sh     # the full grids
#
# Wheels in .whl/ (carry it: the device tool's `carry: [".whl"]`) are installed first, into
# /tmp/site on PYTHONPATH, ahead of the image's own packages. The suite then refuses to run unless
# the transformers python imports is the one locked in constraints.txt (the image's 5.17.0 is
# outside statetap's tested range).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
export PYTHONSAFEPATH=1  # keep the repository root off sys.path: ./kernels is not the `kernels` package
QUICK=$([[ "${FULL:-0}" == 1 ]] && echo "" || echo "--quick")

if compgen -G ".whl/*.whl" > /dev/null; then
    echo "gpu_suite: installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
locked="$(sed -nE 's/^[Tt]ransformers==([^[:space:]]+)[[:space:]]*$/\1/p' constraints.txt)"
found="$("$PY" -c 'import transformers; print(transformers.__version__, transformers.__file__)' \
    2>/tmp/gpu_suite_transformers.err)" \
    || found="none import failed: $(tail -n1 /tmp/gpu_suite_transformers.err)"
if [[ -z "$locked" || "${found%% *}" != "$locked" ]]; then
    echo "gpu_suite: refusing to run: python imports transformers ${found%% *} (${found#* })," >&2
    echo "  but constraints.txt locks transformers ${locked:-(none)}. Fetch the locked wheels here with" >&2
    echo "  'bash scripts/gpu_wheels.sh' (make gpu-wheels), then run with carry: [\".whl\"]." >&2
    exit 1
fi
echo "gpu_suite: transformers $locked (${found#* })"

"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -m statetap.cli check --device cuda
TRITON_INTERPRET=0 "$PY" -m pytest -q -x tests
"$PY" benchmarks/bench_mamba.py $QUICK
"$PY" benchmarks/bench_rwkv.py $QUICK
if [[ -n "${OUT:-}" ]]; then
    cp benchmarks/results/*.json "$OUT"/
fi
