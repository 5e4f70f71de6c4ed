"""The machine's own limits, measured in the same run as the ops: a large copy's bandwidth
(bytes read + written) and a vectorised exp's throughput (torch's, on a 4 MiB buffer).
Every op row's ``% copy bw`` and ``% exp bound`` are relative to these."""

from __future__ import annotations

import torch

COPY_MIB = 256  # far past the caches: the bandwidth of memory
EXP_ELEMENTS = (
    1 << 20
)  # 4 MiB of float32 per call: in cache, and long enough that threads start once


def test_copy_bandwidth(record):
    source = torch.randn(COPY_MIB * 2**20 // 4)
    target = torch.empty_like(source)
    record.benchmark.pedantic(target.copy_, args=(source,), rounds=10, warmup_rounds=2)
    seconds = record.benchmark.stats.stats.median
    gbps = 2 * source.numel() * 4 / seconds / 1e9
    record.limit(f"copy {COPY_MIB} MiB float32", seconds, 10, copy_gbps=gbps)


def test_exp_throughput(record):
    values = torch.randn(EXP_ELEMENTS)
    out = torch.empty_like(values)
    repeats = 16

    def many_exps():
        for _ in range(repeats):
            torch.exp(values, out=out)

    record.benchmark.pedantic(many_exps, rounds=10, warmup_rounds=2)
    seconds = record.benchmark.stats.stats.median
    record.limit(
        f"exp of {EXP_ELEMENTS} float32 x {repeats}",
        seconds,
        10,
        exp_per_s=repeats * EXP_ELEMENTS / seconds,
    )
