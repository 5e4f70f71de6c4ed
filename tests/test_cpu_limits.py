"""``torch.ops.statetap.peak_rate`` (csrc/limits.cpp), the arithmetic limit the CPU benchmark
suite measures each kernel against: its arguments, and that it counts vector lanes."""

from __future__ import annotations

import pytest
from _triton_mamba import needs_cpu_kernels

from statetap.kernels import _cpu

pytestmark = needs_cpu_kernels


@pytest.mark.parametrize(
    "kind, iterations, message",
    [("flops", 10, "kind must be 'fma' or 'exp'"), ("fma", 0, "iterations must be positive")],
)
def test_bad_arguments_are_named(kind, iterations, message):
    with pytest.raises(ValueError, match=message):
        _cpu.ops().peak_rate(kind, iterations)


@pytest.mark.parametrize("kind", ["fma", "exp"])
def test_vector_rate_counts_lanes(kind, monkeypatch):
    """A vector instruction does W lanes of work: the widest ISA's rate is several times the
    scalar path's (W = 8 or 16 against 1), and both are finite and positive."""
    widest = _cpu.isa()
    if widest == "scalar":
        pytest.skip("this CPU has no vector ISA")
    vector = _cpu.ops().peak_rate(kind, 200_000)
    monkeypatch.setenv(_cpu.ISA_ENV, "scalar")
    scalar = _cpu.ops().peak_rate(kind, 200_000)
    assert 0 < scalar < float("inf") and vector > 4 * scalar, (widest, vector, scalar)
