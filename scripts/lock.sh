#!/usr/bin/env bash
# Write constraints.txt, the lock: the exact version of every package in a CPU virtualenv that
# bootstrap.sh made (runtime and dev dependencies, transitive ones, mamba-ssm, setuptools, wheel).
#
#   scripts/lock.sh                       # freeze ./.venv               (make lock)
#   VENV=/tmp/v scripts/lock.sh           # freeze another virtualenv
#   scripts/lock.sh runs/upgrade-check/<stamp>.freeze.txt
#                                         # lock what an upgrade check installed and passed with
#
# Taken from `pip freeze --all --exclude-editable`, minus pip and statetap itself (editable or
# not). A local version label is dropped (torch==2.13.0+cpu -> torch==2.13.0: that pin picks the
# CPU wheel from this machine's local wheel folder, see shared/research/env.md). Refuses a venv
# that sees the system site-packages or holds nvidia-* packages (a CUDA torch's set is no lock).
# After locking: run scripts/bootstrap.sh (it re-installs, since the lock is part of its stamp),
# and move setup.py's upper bounds to the newly locked versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOCK="${LOCK:-constraints.txt}"
VENV="${VENV:-.venv}"
die() { echo "lock: $*" >&2; exit 1; }

tmp="$(mktemp)"
trap 'rm -f "$tmp" "$tmp.body"' EXIT

if [[ $# -ge 1 ]]; then
    [[ -f "$1" ]] || die "no such freeze file: $1"
    source_desc="the freeze file $1"
    python_desc="$(sed -nE 's/^# *python: *//p' "$1" | head -n1)"
    python_desc="${python_desc:-Python of that run}"
    cp "$1" "$tmp"
else
    PY="$VENV/bin/python"
    [[ -x "$PY" ]] || die "no virtualenv at $VENV (run scripts/bootstrap.sh, or set VENV=)"
    if grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null; then
        die "$VENV sees the system site-packages (a GPU machine's venv); lock a CPU venv instead"
    fi
    source_desc="$VENV"
    python_desc="$("$PY" -c 'import platform, sys; print(f"Python {platform.python_version()}, {sys.platform}")')"
    "$PY" -m pip freeze --all --exclude-editable --disable-pip-version-check > "$tmp"
fi

# keep name==version lines; drop pip, statetap, editables and comments; drop local version labels
grep -vE '^[[:space:]]*(#|$|-e )' "$tmp" \
    | grep -viE '^(pip|statetap)[[:space:]]*(==|@)' \
    | sed -E 's/^([^=[:space:]]+==[^+[:space:]]+)\+[^[:space:]]*$/\1/' > "$tmp.body" || true
if bad="$(grep -vE '^[A-Za-z0-9][A-Za-z0-9._-]*==[^[:space:]]+$' "$tmp.body")"; then
    die "lines that are not NAME==VERSION (direct URLs cannot be locked):"$'\n'"$bad"
fi
if grep -qiE '^nvidia[-_.]' "$tmp.body"; then
    die "nvidia-* packages found: that is a CUDA torch's environment, not the CPU lock"
fi
for need in torch triton mamba-ssm setuptools wheel; do
    grep -qiE "^${need//-/[-_.]}==" "$tmp.body" || die "no $need in the freeze (bootstrap installs it from the lock)"
done

{
    echo "# statetap's lock: the exact version (NAME==VERSION) of every package a CPU install holds:"
    echo "# runtime and dev dependencies (setup.py's install_requires and [dev]), their transitive"
    echo "# dependencies, mamba-ssm (installed --no-deps by scripts/bootstrap.sh) and the build tools"
    echo "# setuptools and wheel."
    echo "#"
    echo "# Produced by scripts/lock.sh (make lock) on $(date -u +%Y-%m-%d) from $source_desc"
    echo "# ($python_desc): pip freeze --all --exclude-editable, minus pip and statetap; local"
    echo "# version labels dropped (torch 2.13.0+cpu is locked as torch==2.13.0, which picks the local"
    echo "# CPU wheel -- never install an unpinned torch: it resolves to a multi-GB CUDA build)."
    echo "#"
    echo "# Used by scripts/bootstrap.sh as pip constraints (pip install -c constraints.txt ...), so every"
    echo "# fresh .venv holds exactly this set; bootstrap also reads its torch, triton and mamba-ssm pins"
    echo "# here, and on a machine with a CUDA torch drops the torch, triton and nvidia-* lines. The GPU"
    echo "# suite refuses to run unless its transformers is the one locked here (scripts/gpu_wheels.sh)."
    echo "#"
    echo "# To regenerate: make upgrade-check (newest versions, tests run); if it passes, scripts/lock.sh"
    echo "# runs/upgrade-check/<stamp>.freeze.txt -- or bring .venv to the wanted set and run"
    echo "# scripts/lock.sh. Then move setup.py's upper bounds to the new versions. Do not edit by hand."
    cat "$tmp.body"
} > "$tmp"
cat "$tmp" > "$LOCK"
echo "lock: wrote $LOCK ($(grep -cvE '^#' "$LOCK") packages)"
