#!/usr/bin/env bash
# The GPU suite in one command, for a lent GPU machine (the device tool runs it from the
# repository root). It installs statetap over the machine's own torch and triton, checks every
# op on the GPU against its float64 definition, runs the test suite with the Triton interpreter
# off (the kernel tests then launch compiled kernels on CUDA tensors), and runs both benchmarks.
# Result JSON files land in benchmarks/results/ and are copied to $OUT when it is set.
#
#   bash benchmarks/gpu_suite.sh            # --quick benchmark grids (fits one 10-minute call)
#   FULL=1 bash benchmarks/gpu_suite.sh     # the full grids
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
export PYTHONSAFEPATH=1  # keep the repository root off sys.path: ./kernels is not the `kernels` package
QUICK=$([[ "${FULL:-0}" == 1 ]] && echo "" || echo "--quick")

"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -m statetap.cli check --device cuda
TRITON_INTERPRET=0 "$PY" -m pytest -q -x tests
"$PY" benchmarks/bench_mamba.py $QUICK
"$PY" benchmarks/bench_rwkv.py $QUICK
if [[ -n "${OUT:-}" ]]; then
    cp benchmarks/results/*.json "$OUT"/
fi
