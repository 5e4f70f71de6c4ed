#!/usr/bin/env bash
# Fetch into .whl/ the wheels the GPU suite (benchmarks/gpu_suite.sh) needs beyond the lent GPU
# machine's image, at the versions locked in constraints.txt. That machine has no package index;
# the device tool carries .whl/ (name it in `carry`), and gpu_suite.sh installs it first.
#
#   scripts/gpu_wheels.sh                 # make gpu-wheels: the wheels below (cp312, x86_64) and
#                                         # mamba-ssm's pure-Python wheel (needs .venv, ~10 s)
#   scripts/gpu_wheels.sh --no-mamba-ssm  # without mamba-ssm (bench_mamba's peer rows then
#                                         # come back "missing")
#
# What the image (Python 3.12, torch 2.11, triton 3.6) lacks, and why (see
# /work/.library/device/KINDS.md for its package list):
#   transformers     the image has 5.17.0, outside statetap's tested range (5.23.0-5.25.0)
#   huggingface-hub  transformers 5.25 needs >=2.4.0 (the image has 1.33.0), which needs httpx2,
#   hf-xet, httpx2,  httpcore2 and truststore (not in the image) and hf-xet>=1.6, click>=8.4.2,
#   httpcore2,       idna>=3.18, anyio>=4.10, h11>=0.16 (the image's versions unknown: the locked
#   truststore,      ones travel)
#   click, idna, anyio, h11
#   kernels, tomlkit transformers 5.25 requires kernels>=0.19.1 (which needs tomlkit)
#   concept-erasure  not in the image; statetap.interp.elk.probes imports it at import time
#   fla-core         the RWKV peers of bench_rwkv.py (chunk_rwkv6/7); pure Python, needs only
#                    einops (in the image)
#   mamba-ssm        the Mamba peers of bench_mamba.py (mamba_chunk_scan_combined,
#                    selective_state_update): built here without its CUDA extension; its
#                    requirements (torch, triton, einops, ninja, packaging, transformers) are there
# The image's peft, matplotlib, safetensors, tqdm, accelerate, numpy, einops, pytest* serve as they are.
# Older versions of these packages are removed from .whl/ (two versions of one package stop the
# install on the device). .whl/ is ignored by git.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOCK=constraints.txt
DEST=.whl
WHEELS=(transformers huggingface-hub hf-xet httpx2 httpcore2 truststore click idna anyio h11
    kernels tomlkit concept-erasure fla-core)
MAMBA=1
for arg in "$@"; do
    case "$arg" in
        --no-mamba-ssm) MAMBA=0 ;;
        *) echo "usage: $0 [--no-mamba-ssm]" >&2; exit 2 ;;
    esac
done

norm() { echo "$1" | tr 'A-Z_.' 'a-z--' | tr -s '-'; }
lock_version() {
    local want line; want="$(norm "$1")"
    while IFS= read -r line; do
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        [[ "$(norm "${line%%==*}")" == "$want" ]] && { echo "${line#*==}"; return 0; }
    done < "$LOCK"
    echo "gpu-wheels: $LOCK has no $1" >&2
    exit 1
}
# drop_others NAME VERSION: remove NAME's wheels of any other version from .whl/
drop_others() {
    local f base
    for f in "$DEST"/*.whl; do
        [[ -e "$f" ]] || continue
        base="$(basename "$f")"
        if [[ "$(norm "${base%%-*}")" == "$(norm "$1")" && "$(echo "$base" | cut -d- -f2)" != "$2" ]]; then
            echo "gpu-wheels: removing $f (not the locked $1 $2)"
            rm -f "$f"
        fi
    done
}

mkdir -p "$DEST"
for name in "${WHEELS[@]}"; do
    version="$(lock_version "$name")"
    drop_others "$name" "$version"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEST" "$name==$version"
done

if [[ $MAMBA == 1 ]]; then
    version="$(lock_version mamba-ssm)"
    [[ -x .venv/bin/python ]] || { echo "gpu-wheels: mamba-ssm is built with .venv (make venv), or pass --no-mamba-ssm" >&2; exit 1; }
    drop_others mamba-ssm "$version"
    # the Triton kernels and python code only; the device's CUDA extension stays unbuilt
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE .venv/bin/python -m pip wheel -q \
        --disable-pip-version-check --no-deps --no-build-isolation -w "$DEST" "mamba-ssm==$version"
fi

echo "gpu-wheels: $DEST/ now holds:"
ls -l "$DEST"/*.whl | awk '{printf "  %s (%.1f MB)\n", $NF, $5 / 1e6}'
echo "gpu-wheels: carry it with the run: carry [\"$DEST\"], command \"bash benchmarks/gpu_suite.sh\""
