#!/usr/bin/env bash
# The GPU suite in one command, for a lent GPU machine (the device tool runs it from the
# repository root). It installs statetap over the machine's own torch and triton, checks every
# op on the GPU against its float64 definition, runs the benchmarks (the goal shapes, peers
# included), then the kernel tests with the Triton interpreter off. A failing part does not stop
# the parts after it: each part runs under its own time limit, and at the end
# gpu_suite_report.py lists every failure and writes the suite's JSON. Each part's JSON (and the
# test report) is copied to $OUT as soon as the part ends, when $OUT is set (for the whole log:
# `set -o pipefail; bash benchmarks/gpu_suite.sh 2>&1 | tee $OUT/gpu_suite.log`).
#
#   bash scripts/gpu_wheels.sh              # here, first: the locked wheels the image lacks -> .whl/
#   bash benchmarks/gpu_suite.sh            # kernel tests + --quick grids: one call, timeout_s 420
#   FULL=1 bash benchmarks/gpu_suite.sh     # the whole test suite and the full grids (longer)
#   STATETAP_SUITE_DRY_RUN=1 OUT=/tmp/x bash benchmarks/gpu_suite.sh   # rehearsal, no GPU
#
# Limits per part in seconds (benchmarks/README.md gives the estimated times), within BUDGET=390
# counted from the script's start (so that the report and a part's 5-s kill grace fit 420 s):
# LIMIT_INSTALL=60 LIMIT_CHECK=75 LIMIT_MAMBA=100 LIMIT_RWKV6=75 LIMIT_RWKV7=100, the tests
# what is left (LIMIT_TESTS=240 at most); a limit of 0 skips its part. A part stopped by its
# limit gets SIGINT: the benchmarks then save the rows they have, pytest writes its report.
#
# Wheels in .whl/ (carry it: the device tool's `carry: [".whl"]`) are installed first, into
# /tmp/site on PYTHONPATH, ahead of the image's own packages. The suite then refuses to run unless
# the transformers python imports is the one locked in constraints.txt (the image's 5.17.0 is
# outside statetap's tested range).
#
# Dry run (STATETAP_SUITE_DRY_RUN=1): no wheels, no install, no GPU. The check and test parts
# are stubs; the benchmarks print and save rows marked "dry run" (no timing) into
# $STATETAP_RESULTS_DIR (default $OUT/tmp, never benchmarks/results/), so the parts, their
# limits and the per-part copies to $OUT can be rehearsed anywhere (tests/test_gpu_suite.py).
set -uo pipefail  # no -e: a failing part must not stop the benchmarks after it
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
export PYTHONSAFEPATH=1  # keep the repository root off sys.path: ./kernels is not the `kernels` package
QUICK=$([[ "${FULL:-0}" == 1 ]] && echo "" || echo "--quick")

SECONDS=0  # the budget counts from here
DRY=${STATETAP_SUITE_DRY_RUN:-0}
if [[ "$DRY" == 1 ]]; then
    export STATETAP_RESULTS_DIR=${STATETAP_RESULTS_DIR:-${OUT:-/tmp/gpu_suite_dry_run}/tmp}
    echo "gpu_suite: DRY RUN: nothing installed or measured; rows marked dry run go to $STATETAP_RESULTS_DIR"
elif compgen -G ".whl/*.whl" > /dev/null; then
    echo "gpu_suite: installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ "$DRY" != 1 ]]; then
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
fi
RESULTS_DIR=${STATETAP_RESULTS_DIR:-benchmarks/results}
mkdir -p "$RESULTS_DIR" ${OUT:+"$OUT"}

# Every part runs under its own limit, and never past the suite's budget.
BUDGET=${BUDGET:-390}
KILL_AFTER=5
PARTS=()
BENCH_JSON=()
JUNIT=/tmp/gpu-suite-tests.xml
[[ "$DRY" == 1 ]] && JUNIT="$RESULTS_DIR/gpu-suite-tests.xml"
rm -f "$JUNIT"

copy_out() {  # copy_out FILE: to $OUT now (when set), so that a later cut loses nothing
    [[ -n "${OUT:-}" && -f "$1" ]] || return 0
    cp "$1" "$OUT"/ && echo "gpu_suite: copied $(basename "$1") to \$OUT"
}

run_part() {  # run_part NAME LIMIT COMMAND...: time-limited; status, seconds and JSON recorded
    local name=$1 limit=$2 started=$SECONDS status=0 mark file
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
    mark=$(mktemp /tmp/gpu_suite_mark.XXXXXX)  # result files newer than this are this part's
    timeout --signal=INT --kill-after=$KILL_AFTER "$limit" "$@" || status=$?
    PARTS+=(--part "$name:$status:$((SECONDS - started))")
    echo "gpu_suite: $name finished with status $status after $((SECONDS - started)) s"
    while IFS= read -r -d '' file; do
        BENCH_JSON+=(--bench-json "$file")
        copy_out "$file"
    done < <(find "$RESULTS_DIR" -maxdepth 1 -name '*.json' -newer "$mark" -print0 | sort -z)
    rm -f "$mark"
}

# STATETAP_NO_EXTENSION=1: no statetap._C here (the CPU kernels are measured on the CPU machine).
if [[ "$DRY" == 1 ]]; then
    run_part install "${LIMIT_INSTALL:-60}" echo "dry run: install stubbed"
    run_part check "${LIMIT_CHECK:-75}" echo "dry run: statetap check --device cuda stubbed"
else
    run_part install "${LIMIT_INSTALL:-60}" env STATETAP_NO_EXTENSION=1 "$PY" -m pip install -q \
        --no-index --disable-pip-version-check --no-deps --no-build-isolation -e .
    run_part check "${LIMIT_CHECK:-75}" "$PY" -m statetap.cli check --device cuda
fi
# The benchmarks before the tests: a lent GPU's minutes should yield numbers first. RWKV is split
# in two parts (two JSON files), so that a limit hit in one keeps the other's rows whole.
run_part bench_mamba "${LIMIT_MAMBA:-100}" "$PY" benchmarks/bench_mamba.py $QUICK
run_part bench_rwkv6 "${LIMIT_RWKV6:-75}" "$PY" benchmarks/bench_rwkv.py $QUICK --ops wkv6 \
    --name rwkv6
run_part bench_rwkv7 "${LIMIT_RWKV7:-100}" "$PY" benchmarks/bench_rwkv.py $QUICK \
    --ops wkv7,wkv4,decode --name rwkv7

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
if [[ "$DRY" == 1 ]]; then
    run_part tests "${LIMIT_TESTS:-240}" "$PY" -c "open('$JUNIT', 'w').write(
        '<testsuite name=\"dry run: tests stubbed\" tests=\"0\"/>')"
else
    run_part tests "${LIMIT_TESTS:-240}" env TRITON_INTERPRET=0 "$PY" -m pytest "${PYTEST_ARGS[@]}" "${TESTS[@]}"
fi
copy_out "$JUNIT"

status=0
report_mark=$(mktemp /tmp/gpu_suite_mark.XXXXXX)
"$PY" benchmarks/gpu_suite_report.py --junit "$JUNIT" "${PARTS[@]}" "${BENCH_JSON[@]}" || status=$?
while IFS= read -r -d '' file; do copy_out "$file"; done \
    < <(find "$RESULTS_DIR" -maxdepth 1 -name '*gpu-suite.json' -newer "$report_mark" -print0)
rm -f "$report_mark"
echo "gpu_suite: done after $SECONDS s"
exit $status
