#!/usr/bin/env bash
# The GPU suite in one command, for a lent GPU machine (the device tool runs it from the
# repository root). It installs statetap over the machine's own torch and triton, checks every
# op on the GPU against its float64 definition, runs the kernel tests with the Triton interpreter
# off (the kernel tests then launch compiled kernels on CUDA tensors), and runs both benchmarks.
# A failing part does not stop the parts after it: each part runs under its own time limit, and
# at the end gpu_suite_report.py lists every failure and writes the suite's JSON. The result JSON
# written by this run and the test report are copied to $OUT when it is set (for the whole log:
# `set -o pipefail; bash benchmarks/gpu_suite.sh 2>&1 | tee $OUT/gpu_suite.log`).
#
#   bash scripts/gpu_wheels.sh              # here, first: the locked wheels the image lacks -> .whl/
#   bash benchmarks/gpu_suite.sh            # kernel tests + --quick grids: fits one 8-minute call
#   FULL=1 bash benchmarks/gpu_suite.sh     # the whole test suite and the full grids (longer)
#
# Limits per part in seconds (benchmarks/README.md gives the expected times), within BUDGET=450:
# LIMIT_INSTALL=120 LIMIT_CHECK=90 LIMIT_BENCH=120 (each benchmark) LIMIT_TESTS=240;
# a limit of 0 skips its part.
#
# Wheels in .whl/ (carry it: the device tool's `carry: [".whl"]`) are installed first, into
# /tmp/site on PYTHONPATH, ahead of the image's own packages. The suite then refuses to run unless
# the transformers python imports is the one locked in constraints.txt (the image's 5.17.0 is
# outside statetap's tested range).
set -uo pipefail  # no -e: a failing part must not stop the benchmarks after it
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

# Every part runs under its own limit, and never past the suite's budget: BUDGET seconds from here
# (450 by default, so that wheels, install and report fit one 8-minute call).
BUDGET=${BUDGET:-450}
run_part() {  # run_part NAME LIMIT COMMAND...: time-limited, its status and seconds recorded
    local name=$1 limit=$2 started=$SECONDS status=0
    shift 2
    if [[ "$limit" == 0 ]]; then
        echo "gpu_suite: $name skipped (its limit is 0)"
        return
    fi
    local left=$((BUDGET - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        echo "gpu_suite: $name not run: ${left} s of the ${BUDGET} s budget left"
        PARTS+=(--part "$name:124:0")
        return
    fi
    echo "gpu_suite: $name (limit ${limit} s): $*"
    # SIGINT first: pytest then stops and still writes its report of the tests that ran.
    timeout --signal=INT --kill-after=15 "$limit" "$@" || status=$?
    PARTS+=(--part "$name:$status:$((SECONDS - started))")
    echo "gpu_suite: $name finished with status $status after $((SECONDS - started)) s"
}

SECONDS=0
PARTS=()
START_MARK=$(mktemp /tmp/gpu_suite_start.XXXXXX)  # result files newer than this are this run's
JUNIT=/tmp/gpu-suite-tests.xml
rm -f "$JUNIT"
# STATETAP_NO_EXTENSION=1: no statetap._C here (the CPU kernels are measured on the CPU machine).
run_part install "${LIMIT_INSTALL:-120}" env STATETAP_NO_EXTENSION=1 \
    "$PY" -m pip install -q --no-deps --no-build-isolation -e .
run_part check "${LIMIT_CHECK:-90}" "$PY" -m statetap.cli check --device cuda
# The benchmarks before the tests: a lent GPU's minutes should yield numbers first.
run_part bench_mamba "${LIMIT_BENCH:-120}" "$PY" benchmarks/bench_mamba.py $QUICK
run_part bench_rwkv "${LIMIT_BENCH:-120}" "$PY" benchmarks/bench_rwkv.py $QUICK

# The kernel tests (every Triton test module, the AOT harness, the modules with `gpu` tests) on
# CUDA tensors; FULL=1: the whole suite. In parallel when pytest-xdist is there (the image has it).
if [[ "${FULL:-0}" == 1 ]]; then
    TESTS=(tests)
else
    mapfile -t TESTS < <( (ls tests/test_triton_*.py tests/test_aot*.py; grep -l "mark.gpu" tests/test_*.py) | sort -u)
fi
PYTEST_ARGS=(-q -p no:cacheprovider --junitxml="$JUNIT")
"$PY" -c "import xdist" 2>/dev/null && PYTEST_ARGS+=(-n 8)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS+=(--timeout 90)
run_part tests "${LIMIT_TESTS:-240}" env TRITON_INTERPRET=0 "$PY" -m pytest "${PYTEST_ARGS[@]}" "${TESTS[@]}"

status=0
"$PY" benchmarks/gpu_suite_report.py --junit "$JUNIT" "${PARTS[@]}" || status=$?
if [[ -n "${OUT:-}" ]]; then
    mkdir -p benchmarks/results
    find benchmarks/results -name '*.json' -newer "$START_MARK" -exec cp {} "$OUT"/ \;
    [[ -f "$JUNIT" ]] && cp "$JUNIT" "$OUT"/
fi
rm -f "$START_MARK"
exit $status
