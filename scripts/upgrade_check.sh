#!/usr/bin/env bash
# The upgrade check: does statetap still pass its tests with the newest versions of its
# dependencies, and with every transformers it supports? One command, not part of CI:
#
#   make upgrade-check                                   # newest everything (torch stays pinned)
#   make upgrade-check PINS="transformers==5.23.0"       # with overrides
#   scripts/upgrade_check.sh transformers==5.23.0 peft==0.21.2
#   make upgrade-matrix                                  # scripts/upgrade_check.sh --matrix
#
# In a throwaway virtualenv (a temporary folder, removed at the end, on failure and on interrupt):
#  1. the lock's CPU torch (kept as a constraint, so nothing upgrades it: PyPI's Linux torch is a
#     multi-GB CUDA build), and triton: the newest release (the Triton kernels' interpreter
#     tests and ahead-of-time compiles run on it), or the lock's with --matrix;
#  2. statetap, non-editable, built from a copy of this checkout (so nothing is written into it);
#  3. the newest versions pip resolves of everything else: setup.py's install_requires and [dev]
#     with their upper bounds dropped (they are the locked versions), no lock; a PIN replaces its
#     package's requirement. Then mamba-ssm's python code the way bootstrap.sh installs it
#     (newest, or a mamba-ssm PIN).
#     With --matrix: the lock instead, with transformers replaced by the oldest, then the newest
#     release statetap supports (TESTED_TRANSFORMERS in statetap/adapters/upstream.py), or by
#     each release of MATRIX_RELEASES="5.23.0 5.24.0 5.25.0".
#  4. the test files that use transformers or peft (TESTS below; override with TESTS="..."), and
#     without --matrix the Triton kernels' tests (TRITON_TESTS), run from the checkout with that
#     venv's python: PYTHONSAFEPATH=1 TRITON_INTERPRET=1 pytest -n 2; with --matrix the model
#     tests once per transformers release.
# Prints, per direct dependency (install_requires, [dev], mamba-ssm), the locked version, the one
# tried and whether it changed; then pytest's result line and PASS/FAIL, and writes the same to
# runs/upgrade-check/<stamp>.txt beside the venv's freeze (<stamp>.freeze.txt, which
# `scripts/lock.sh runs/upgrade-check/<stamp>.freeze.txt` turns into the lock) and pytest's log.
# --matrix writes runs/upgrade-check/<stamp>-matrix.txt: a row per transformers release, and a
# pytest log for each. Exits non-zero on FAIL (failed or erroring tests, no tests run, or an
# install that failed). Extra pytest arguments: PYTEST_ARGS="-x". A torch PIN other than the
# lock's pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd -P)"
LOCK="$ROOT/constraints.txt"
PYTHON="${PYTHON:-python3}"
MATRIX=0
PINS=()
for arg in "$@"; do
    case "$arg" in
        --matrix) MATRIX=1 ;;
        -*) echo "usage: $0 [--matrix | PIN...]" >&2; exit 2 ;;
        *) PINS+=("$arg") ;;
    esac
done
if [[ $MATRIX == 1 && ${#PINS[@]} -gt 0 ]]; then
    echo "upgrade-check: --matrix runs the lock with each supported transformers; it takes no PIN" >&2
    exit 2
fi

# Every test file that imports transformers, peft or datasets, directly or through statetap.zoo,
# statetap.models, statetap.extract, the adapters or interp.
DEFAULT_TESTS="tests/test_model_tap.py tests/test_steering.py tests/test_steering_quirky.py
    tests/test_patching.py
    tests/test_lens.py tests/test_elk_experiments.py tests/test_elk_probes.py
    tests/test_quirky_lora.py tests/test_quirky_operations.py tests/test_mamba_ssm.py
    tests/test_extract.py tests/test_zoo.py tests/test_zoo_prepare.py tests/test_demo.py
    tests/test_cost.py tests/test_cli.py tests/test_docs.py tests/test_reference_equivalence.py
    tests/test_tap_guards.py tests/test_upstream_drift.py tests/test_extract_inputs.py
    tests/test_extract_passes.py tests/test_extract_ragged.py tests/test_extract_reader.py
    tests/test_extract_resume.py tests/test_extract_torchrun.py tests/test_rwkv_models.py
    tests/test_rwkv_official.py tests/test_rwkv_tap.py tests/test_foreign_layouts.py
    tests/test_convert_rwkv.py tests/test_world_tokenizer.py tests/test_hybrid_mamba1.py
    tests/test_hybrid_zamba2_falcon_h1.py tests/test_delta_rule_models.py tests/test_hybrid_mamba2.py"
read -r -a TESTS <<< "$(echo ${TESTS:-$DEFAULT_TESTS})"
# The Triton kernels under the interpreter, and their ahead-of-time compiles for sm_80/sm_90.
TRITON_TESTS=(tests/test_triton_*.py tests/test_aot*.py)
read -r -a EXTRA_ARGS <<< "${PYTEST_ARGS:-}"

say() { echo "upgrade-check: $*"; }
die() { echo "upgrade-check: $*" >&2; exit 1; }

[[ -f "$LOCK" ]] || die "no lock at $LOCK"
for t in "${TESTS[@]}" "${TRITON_TESTS[@]}"; do [[ -f "$t" ]] || die "no test file $t"; done
# a test file that names transformers or peft but is not in the list is worth a look
for t in tests/test_*.py; do
    if grep -qE '\b(transformers|peft)\b' "$t" && [[ " ${TESTS[*]} " != *" $t "* ]]; then
        say "note: $t mentions transformers/peft but is not among the tests run"
    fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/statetap-upgrade.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'echo "upgrade-check: interrupted" >&2; exit 130' INT TERM HUP

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUTDIR="$ROOT/runs/upgrade-check"
mkdir -p "$OUTDIR"
REPORT="$OUTDIR/$STAMP.txt"
LOG="$OUTDIR/$STAMP.pytest.log"
FREEZE="$OUTDIR/$STAMP.freeze.txt"

norm() { echo "$1" | tr 'A-Z_.' 'a-z--' | tr -s '-'; }
pin_name() { norm "$(echo "$1" | sed -E 's/[[:space:]]*([<>=!~;[].*)?$//')"; }
lock_pin() {  # the lock's NAME==VERSION line for NAME (pip's name normalisation)
    local want line; want="$(norm "$1")"
    while IFS= read -r line; do
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        [[ "$(norm "${line%%==*}")" == "$want" ]] && { echo "$1==${line#*==}"; return 0; }
    done < "$LOCK"
    die "the lock has no $1"
}

TORCH_PIN="$(lock_pin torch)"
TRITON_PIN="$(lock_pin triton)"
[[ $MATRIX == 1 ]] || TRITON_PIN="triton"  # the newest, unless a PIN says otherwise
read -r OLDEST NEWEST < <(sed -nE \
    's/^TESTED_TRANSFORMERS = \("([^"]+)", "([^"]+)"\)$/\1 \2/p' statetap/adapters/upstream.py) \
    || die "statetap/adapters/upstream.py has no TESTED_TRANSFORMERS = (oldest, newest) line"
MAMBA_REQ="mamba-ssm"
OTHER_PINS=()
for p in "${PINS[@]}"; do
    case "$(pin_name "$p")" in
        torch) TORCH_PIN="$p" ;;
        triton) TRITON_PIN="$p" ;;
        mamba-ssm) MAMBA_REQ="$p" ;;
        *) OTHER_PINS+=("$p") ;;
    esac
done
printf '%s\n' "$TORCH_PIN" > "$WORK/torch-pins.txt"
if [[ "$TRITON_PIN" == *==* ]]; then echo "$TRITON_PIN" >> "$WORK/torch-pins.txt"; fi

VPY="$WORK/venv/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
say "throwaway venv in $WORK (removed at the end)"
"$PYTHON" -m venv "$WORK/venv"

say "1/4 $TORCH_PIN $TRITON_PIN (CPU) and the build tools"
"${PIP[@]}" -c "$WORK/torch-pins.txt" "$TORCH_PIN" "$TRITON_PIN" "setuptools>=70.1" wheel \
    || die "FAIL: installing torch/triton failed"

say "2/4 statetap (non-editable, from a copy of the checkout)"
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
    | "$PYTHON" -c '
import os, shutil, sys
dst = sys.argv[1]
for rel in sys.stdin.buffer.read().split(b"\0"):
    rel = os.fsdecode(rel)
    if rel and os.path.isfile(rel):
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(rel, os.path.join(dst, rel))
' "$WORK/src"
(cd "$WORK/src" && "${PIP[@]}" --no-build-isolation --no-deps -c "$WORK/torch-pins.txt" .) \
    || die "FAIL: building/installing statetap failed"

# setup.py's requirements (install_requires and [dev]) minus torch/triton (installed above) and
# the packages a PIN replaces; without their upper bounds, except with --matrix.
"$VPY" - "$MATRIX" "${PINS[@]}" > "$WORK/requirements.txt" <<'PYEOF'
import importlib.metadata as md, re, sys
try:
    from packaging.requirements import Requirement
except ImportError:  # not installed yet: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
matrix = sys.argv[1] == "1"
pinned = {norm(re.split(r"[\s<>=!~;\[]", p, maxsplit=1)[0]) for p in sys.argv[2:]}
for line in md.requires("statetap") or []:
    req = Requirement(line)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", "dev")):
        continue
    if norm(req.name) in pinned | {"torch", "triton"}:
        continue
    kept = [str(s) for s in req.specifier if matrix or s.operator in (">=", ">", "!=", "~=")]
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    print(req.name + extras + ",".join(kept))
PYEOF
if [[ $MATRIX == 1 ]]; then
    # the lock without its transformers line: each run below installs the release it tests
    grep -viE '^[[:space:]]*transformers[[:space:]]*==' "$LOCK" > "$WORK/lock-but-transformers.txt"
    say "3/4 the lock's versions of: $(tr '\n' ' ' < "$WORK/requirements.txt")+ transformers==$OLDEST"
    "${PIP[@]}" -c "$WORK/lock-but-transformers.txt" -r "$WORK/requirements.txt" \
        "transformers==$OLDEST" || die "FAIL: pip could not install the lock (see above)"
    MAMBA_REQ="$(lock_pin mamba-ssm)"
else
    say "3/4 the newest versions of: $(tr '\n' ' ' < "$WORK/requirements.txt")${OTHER_PINS[*]:+ + pins: ${OTHER_PINS[*]}}"
    "${PIP[@]}" -c "$WORK/torch-pins.txt" -r "$WORK/requirements.txt" "${OTHER_PINS[@]}" \
        || die "FAIL: pip could not install the newest versions (see above)"
fi
say "    and $MAMBA_REQ (python code only, --no-deps, as bootstrap.sh does)"
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    "${PIP[@]}" --no-deps --no-build-isolation "$MAMBA_REQ" || die "FAIL: installing $MAMBA_REQ failed"

# the tests must import the installed statetap, not the checkout
where="$(cd / && PYTHONSAFEPATH=1 "$VPY" -c 'import statetap, os; print(os.path.realpath(statetap.__file__))')"
[[ "$where" == "$(realpath "$WORK")"/venv/* ]] || die "FAIL: statetap imports from $where, not the throwaway venv"

# run_tests LOG FILE...: pytest on FILEs from the checkout with the venv's python, its output
# teed to LOG; sets rc, summary (pytest's last line) and result (PASS/FAIL)
run_tests() {
    local log=$1
    shift
    set +e
    (cd "$ROOT" && PYTHONSAFEPATH=1 TRITON_INTERPRET=1 PYTHONDONTWRITEBYTECODE=1 \
        "$VPY" -m pytest -n 2 -p no:cacheprovider "${EXTRA_ARGS[@]}" "$@") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    summary="$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$log" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')"
    [[ -n "$summary" ]] || summary="(no pytest summary line; exit status $rc)"
    if [[ $rc -eq 0 ]]; then result=PASS; else result=FAIL; fi
    if [[ $rc -eq 5 ]]; then summary="$summary -- pytest exit 5: no tests ran"; fi
}
version_of() { "$VPY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo -; }

if [[ $MATRIX == 1 ]]; then
    REPORT="$OUTDIR/$STAMP-matrix.txt"
    rows=("transformers|huggingface-hub|kernels|triton|pytest|result")
    overall=PASS
    read -r -a RELEASES <<< "${MATRIX_RELEASES:-$OLDEST $NEWEST}"
    for release in "${RELEASES[@]}"; do
        if [[ "$(version_of transformers)" != "$release" ]]; then
            say "    transformers==$release (the lock for the rest)"
            "${PIP[@]}" -c "$WORK/lock-but-transformers.txt" "transformers==$release" \
                || die "FAIL: installing transformers==$release failed"
        fi
        say "4/4 transformers $release: ${#TESTS[@]} test files, from the checkout"
        run_tests "$OUTDIR/$STAMP-matrix-$release.pytest.log" "${TESTS[@]}"
        rows+=("$release|$(version_of huggingface-hub)|$(version_of kernels)|$(version_of triton)|$summary|$result")
        [[ $result == PASS ]] || overall=FAIL
    done
    {
        echo "statetap upgrade check --matrix, $STAMP (throwaway venv; the lock, torch $(version_of torch),"
        echo "with each of these transformers: ${RELEASES[*]})"
        echo
        printf '%s\n' "${rows[@]}" | column -t -s '|'
        echo
        echo "result: $overall"
    } > "$REPORT"
    echo
    cat "$REPORT"
    say "report: ${REPORT#"$ROOT"/}  (pytest logs: runs/upgrade-check/$STAMP-matrix-<release>.pytest.log)"
    [[ $overall == PASS ]]
    exit
fi

"$VPY" -m pip check --disable-pip-version-check > "$WORK/pip-check.txt" 2>&1 || true
{ echo "# python: $("$VPY" -c 'import platform, sys; print(f"Python {platform.python_version()}, {sys.platform}")')"
  "$VPY" -m pip freeze --all --disable-pip-version-check; } > "$FREEZE"

say "4/4 ${#TESTS[@]} model test files and ${#TRITON_TESTS[@]} Triton test files, from the checkout"
run_tests "$LOG" "${TESTS[@]}" "${TRITON_TESTS[@]}"

"$VPY" - "$LOCK" "$WORK/pip-check.txt" "${PINS[@]}" > "$WORK/table.txt" <<'PYEOF'
import importlib.metadata as md, re, sys
try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if "==" in line and not line.startswith("#"):
        name, version = line.split("==", 1)
        locked[norm(name)] = version
pins = sys.argv[3:]
direct = {}
for line in md.requires("statetap") or []:
    req = Requirement(line)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", "dev")):
        continue
    direct[norm(req.name)] = str(req.specifier) or "any"
direct.setdefault("mamba-ssm", "(bootstrap, --no-deps)")
rows = [("package", "setup.py range", "locked", "tried", "changed")]
for name, spec in direct.items():
    try:
        tried = md.version(name)
    except md.PackageNotFoundError:
        tried = "-"
    lock = locked.get(name, "-")
    if tried == "-":
        changed = "MISSING"
    elif lock == "-":
        changed = "new"
    elif Version(tried).public == Version(lock).public:
        changed = "no"
    else:
        changed = "UP" if Version(tried) > Version(lock) else "DOWN"
        if any(norm(re.split(r"[\s<>=!~;\[]", p, maxsplit=1)[0]) == name for p in pins):
            changed += " (pinned)"
    rows.append((name, spec, lock, tried, changed))
widths = [max(len(r[i]) for r in rows) for i in range(5)]
for i, r in enumerate(rows):
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if i == 0:
        print("  ".join("-" * w for w in widths))
others = []
for dist in md.distributions():
    name = norm(dist.metadata["Name"])
    if name in direct or name in ("pip", "statetap"):
        continue
    if locked.get(name) != dist.version.split("+")[0]:
        others.append(f"{name} {locked.get(name, '-')} -> {dist.version}")
others += [f"{n} {v} -> -" for n, v in locked.items() if n not in direct
           and n not in {norm(d.metadata['Name']) for d in md.distributions()}]
print(f"\ntransitive packages not at their locked version: {len(others)}")
for line in sorted(others):
    print(f"  {line}")
# mamba-ssm is installed --no-deps (as bootstrap.sh does): its unmet requirements are expected
check = [l for l in open(sys.argv[2]).read().splitlines()
         if l.strip() and not l.startswith("No broken requirements") and not l.startswith("mamba-ssm ")]
if check:
    print("\npip check:\n" + "\n".join("  " + l for l in check))
PYEOF

{
    echo "statetap upgrade check, $STAMP (throwaway venv; pins: ${PINS[*]:-none})"
    echo
    cat "$WORK/table.txt"
    echo
    echo "pytest: $summary"
    echo "result: $result"
} > "$REPORT"
echo
cat "$REPORT"
say "report: ${REPORT#"$ROOT"/}  (freeze: ${FREEZE#"$ROOT"/}, pytest log: ${LOG#"$ROOT"/})"
[[ $result == PASS ]]
