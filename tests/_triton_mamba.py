"""Helpers of the Mamba kernel tests (selective scan, SSD; Triton and cpu backends): the backends
under test, poisoned outputs, the float64 oracle and the tolerances of the state contract."""

from __future__ import annotations

import pytest
import torch
from _device import DEVICE, needs_kernel_device

from statetap.kernels import _cpu, _triton
from statetap.kernels.examples import rel_error

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3}


needs_cpu_kernels = pytest.mark.skipif(
    DEVICE.type != "cpu" or not _cpu.built(),
    reason="the cpu kernels need statetap._C (make venv) and run where the tests use CPU tensors",
)

#: the backends the kernel tests run: the Triton kernels, the C++ kernels with the widest ISA of
#: this CPU, and the C++ kernels on their scalar path (STATETAP_CPU_ISA=scalar)
BACKENDS = [
    pytest.param("triton", marks=needs_kernel_device),
    pytest.param("cpu", marks=needs_cpu_kernels),
    pytest.param("cpu-scalar", marks=needs_cpu_kernels),
]


def implementation(public, backend: str, monkeypatch):
    """``public``'s implementation for ``backend`` (one of :data:`BACKENDS`); ``cpu-scalar``
    sets STATETAP_CPU_ISA=scalar for the test."""
    if backend == "cpu-scalar":
        monkeypatch.setenv(_cpu.ISA_ENV, "scalar")
    return public.implementations[backend.split("-")[0]]


@pytest.fixture
def poisoned(monkeypatch):
    """Every output buffer a Triton or cpu wrapper allocates starts as NaN (each element must be
    written by the kernel)."""

    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_triton, "empty", nan_empty)
    monkeypatch.setattr(_cpu, "empty", lambda shape, dtype: nan_empty(shape, dtype, "cpu"))


def as_double(values: dict) -> dict:
    """Float64 copies of the floating-point tensors of ``values`` (the oracle's inputs)."""
    return {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in values.items()
    }


def as_dtype(values: dict, dtype: torch.dtype) -> dict:
    """``values`` with the floating-point tensors cast to ``dtype``."""
    return {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in values.items()
    }


def assert_close(reference: torch.Tensor, value: torch.Tensor, dtype: torch.dtype, what: str):
    """Same shape, every element written (no NaN) and relative error within the tolerance."""
    assert value.shape == reference.shape, (what, value.shape, reference.shape)
    assert not value.isnan().any(), f"{what}: unwritten (NaN) elements"
    err = rel_error(reference, value)
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]}"


def assert_outputs_close(reference, out, dtype: torch.dtype) -> None:
    """Compare two ``ScanOutput``; emitted states exactly zero where the reference is."""
    assert_close(reference.y, out.y, dtype, "y")
    assert out.y.dtype == dtype
    for name in ("final_state", "states"):
        ref, got = getattr(reference, name), getattr(out, name)
        assert (ref is None) == (got is None), name
        if ref is not None:
            assert got.dtype == torch.float32, name
            assert_close(ref, got, dtype, name)
    if reference.states is not None:
        unused = (reference.states == 0).flatten(2).all(-1)  # [B, P] slots never written
        assert (out.states.flatten(2)[unused] == 0).all(), "unused emission slots must be zeros"
