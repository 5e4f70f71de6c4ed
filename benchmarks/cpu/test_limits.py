"""The machine's own limits, measured in the same run as the ops: a large copy's bandwidth
(bytes read + written, torch) and the float FMAs and vector exps per second that statetap's
own vector code (``csrc/limits.cpp``, the instruction set the kernels run with, every thread)
reaches.  Every op row's ``% copy bw`` and ``% compute bound`` are relative to these."""

from __future__ import annotations

import pytest
import torch
from report import LIMIT_GROUP

COPY_MIB = 256  # far past the caches: the bandwidth of memory
ITERATIONS = 2_000_000  # steps of each of the probe's 16 chains per thread: about 0.1 s


def test_copy_bandwidth(record):
    source = torch.randn(COPY_MIB * 2**20 // 4)
    target = torch.empty_like(source)
    record.benchmark.pedantic(target.copy_, args=(source,), rounds=10, warmup_rounds=2)
    seconds = record.benchmark.stats.stats.median
    gbps = 2 * source.numel() * 4 / seconds / 1e9
    record.limit(f"copy {COPY_MIB} MiB float32", "torch", seconds, 10, copy_gbps=gbps)


@pytest.mark.parametrize("kind", ["fma", "exp"])
def test_arithmetic_peak(record, kind):
    from statetap.kernels import _cpu

    if not _cpu.built():
        record.missing(LIMIT_GROUP, f"peak {kind}", "statetap cpu", "statetap._C not built")
        return
    rates = []

    def probe():
        rates.append(_cpu.ops().peak_rate(kind, ITERATIONS))

    record.benchmark.pedantic(probe, rounds=7, warmup_rounds=1)
    timed = sorted(rates[1:])  # the rounds after the warm-up
    rate = timed[len(timed) // 2]
    record.limit(
        f"{kind} peak ({_cpu.isa()}, {torch.get_num_threads()} threads)",
        "statetap simd",
        record.benchmark.stats.stats.median,
        7,
        **{f"{kind}_per_s": rate},
    )
