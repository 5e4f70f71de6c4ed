"""The Mamba-1 selective-scan kernels (Triton and cpu backends) against the float64 reference.

Runs the Triton kernels under the Triton interpreter on CPU tensors (or compiled, on CUDA, with
``TRITON_INTERPRET=0``), and the C++ kernels (``statetap._C``) with the widest ISA of this CPU and
on their scalar path; outputs start as NaN, so every element must be written.
"""

from __future__ import annotations

import pytest
import torch
from _device import DEVICE, needs_kernel_device, on_device
from _triton_mamba import (  # noqa: F401
    BACKENDS,
    as_double,
    as_dtype,
    assert_close,
    assert_outputs_close,
    implementation,
    poisoned,
)

from statetap.kernels import _triton
from statetap.kernels.examples import CASES
from statetap.kernels.selective_scan import selective_scan as public_scan
from statetap.kernels.selective_scan import selective_scan_step
from statetap.kernels.selective_scan.fused_recurrent import selective_scan_triton
from statetap.kernels.selective_scan.reference import selective_scan
from statetap.kernels.selective_scan.step import selective_scan_step_reference

pytestmark = pytest.mark.usefixtures("poisoned")


@pytest.fixture(params=BACKENDS)
def scan(request, monkeypatch):
    """The forward kernel under test (Triton, or C++ with the widest or the scalar ISA)."""
    return implementation(public_scan, request.param, monkeypatch)


@pytest.fixture(params=BACKENDS)
def step_kernel(request, monkeypatch):
    """The decode-step kernel under test."""
    return implementation(selective_scan_step, request.param, monkeypatch)


def make(batch, length, dtype=torch.float32, bc="grouped", **sizes):
    """Random inputs on DEVICE; ``bc``: "grouped" ``[B, G, N, L]``, "token" ``[B, N, L]``,
    "shared" ``[D, N]``."""
    inputs = CASES["selective_scan"].make(batch, length, torch.float32, **sizes)
    if bc == "token":
        inputs["B"], inputs["C"] = inputs["B"][:, 0], inputs["C"][:, 1 % inputs["C"].shape[1]]
    elif bc == "shared":
        dim, n = inputs["A"].shape
        inputs["B"], inputs["C"] = torch.randn(dim, n), torch.randn(dim, n)
    inputs = on_device(inputs)
    return as_dtype(inputs, dtype)


def check(scan, inputs, dtype=torch.float32, **instrumentation):
    """Run the kernel and the float64 reference on the same inputs and compare."""
    out = scan(**inputs, **instrumentation)
    oracle = selective_scan(**as_double(inputs), **as_double(instrumentation))
    assert_outputs_close(oracle, out, dtype)
    return out


@pytest.mark.parametrize(
    "batch,dim,n,groups,length,bc",
    [
        (2, 10, 5, 2, 13, "grouped"),  # two groups inside one channel block
        (1, 7, 16, 1, 1, "token"),  # L = 1
        (3, 12, 3, 1, 9, "shared"),
        (2, 80, 64, 4, 5, "grouped"),  # two channel blocks, aligned to the groups
    ],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forward_matches_reference(batch, dim, n, groups, length, bc, dtype, scan):
    inputs = make(batch, length, dtype, bc, D=dim, N=n, G=groups)
    check(scan, inputs, dtype, output_final_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_strided_inputs_as_transformers_passes_them(dtype, scan):
    """u, delta, z as transposed views of [B, L, D] projections (no copy made by the caller)."""
    batch, length, dim = 2, 11, 9
    inputs = make(batch, length, dtype, D=dim, N=5, G=1)
    for name in ("u", "delta", "z"):
        projected = torch.randn(batch, length, 3 * dim, device=DEVICE).to(dtype)
        inputs[name] = projected[..., dim : 2 * dim].transpose(1, 2)  # [B, D, L], stride_t = 3D
        assert not inputs[name].is_contiguous()
    check(scan, inputs, dtype, emit_at=torch.tensor([[3], [10]], device=DEVICE))


@pytest.mark.parametrize("optional", ["none", "D", "z", "bias"])
def test_optional_inputs(optional, scan):
    inputs = make(2, 7, D=9, N=4, G=1)
    for name in ("D", "z", "delta_bias"):
        if not name.startswith(optional):
            inputs[name] = None
    inputs["delta_softplus"] = optional != "none"
    if optional == "none":  # dt = delta itself: keep it positive, so the state decays
        inputs["delta"] = inputs["delta"].abs()
    check(scan, inputs)


def test_emit_inject_add_with_initial_state(scan):
    length, dim, n = 21, 11, 6
    inputs = make(2, length, D=dim, N=n, G=1)
    check(
        scan,
        inputs,
        initial_state=torch.randn(2, dim, n, device=DEVICE),
        output_final_state=True,
        # t = 0, L-1, an unused slot, positions out of slot order, rows that differ
        emit_at=torch.tensor([[0, length - 1, -1, 7, 6], [5, -1, 0, 20, 12]], device=DEVICE),
        inject_at=torch.tensor([[6, 0, -1], [5, 19, 12]], device=DEVICE),
        inject_value=torch.randn(2, 3, dim, n, device=DEVICE),
    )


@pytest.mark.parametrize("scale", ["scalar", "sweep", "per-slot"])
def test_inject_scale(scale, scan):
    length, dim, n = 9, 6, 5
    inputs = make(3, length, D=dim, N=n, G=2)
    value = {
        "scalar": -1.5,
        "sweep": torch.tensor([0.0, 1.0, 4.0], device=DEVICE),  # one multiplier per row
        "per-slot": torch.randn(3, 2, device=DEVICE),
    }[scale]
    check(
        scan,
        inputs,
        output_final_state=True,
        emit_at=torch.tensor([3, 4, length - 1], device=DEVICE),
        inject_at=torch.tensor([3, 6], device=DEVICE),
        inject_value=torch.randn(dim, n, device=DEVICE),  # broadcast over rows and slots
        inject_scale=value,
    )


def test_inject_set_fp16(scan):
    length, dim, n = 12, 8, 4
    inputs = make(2, length, torch.float16, D=dim, N=n, G=1)
    check(
        scan,
        inputs,
        torch.float16,
        output_final_state=True,
        emit_at=torch.tensor([[2, 3, 11], [0, 4, -1]], device=DEVICE),
        inject_at=torch.tensor([[3, 0], [-1, 11]], device=DEVICE),
        inject_value=torch.randn(2, 2, dim, n, device=DEVICE),
        inject_mode="set",
    )


@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_events_at_time_tile_edges(dtype, mode, scan):
    """Emission and injection at 0, at the last token of a time tile and the first of the next,
    mid-tile, among the tokens past the last whole tile and at L - 1, per row (the Triton kernel
    runs whole event-free tiles unrolled, 4 tokens in fp32 and 8 in fp16, and an event's tile and
    the tail token by token); L not a multiple of the tile, two channel blocks of which the
    second is partial, groups that split a block, N not a power of two."""
    batch, length, dim, n = 3, 37, 70, 5
    inputs = make(batch, length, dtype, D=dim, N=n, G=2)
    emit_at = torch.tensor(
        [[0, 7, 8, 19, 36, 33], [3, 4, -1, 35, 16, 15], [-1, -1, -1, -1, -1, 32]], device=DEVICE
    )
    inject_at = torch.tensor([[8, 0, 36], [4, 23, -1], [7, -1, 31]], device=DEVICE)
    check(
        scan,
        inputs,
        dtype,
        initial_state=torch.randn(batch, dim, n, device=DEVICE),
        output_final_state=True,
        emit_at=emit_at,
        inject_at=inject_at,
        inject_value=torch.randn(batch, 3, dim, n, device=DEVICE),
        inject_mode=mode,
        inject_scale=torch.randn(batch, 3, device=DEVICE) if mode == "add" else None,
    )


def test_emission_leaves_y_and_final_state_unchanged(scan):
    """Emitting (at 0, mid-tile, at tile edges and in the tail) changes neither y nor the final
    state: an event's tile runs token by token with the same arithmetic as a whole tile."""
    inputs = make(2, 29, D=9, N=16, G=1)
    plain = scan(**inputs, output_final_state=True)
    emitted = scan(
        **inputs,
        output_final_state=True,
        emit_at=torch.tensor([[0, 3, 4, 13, 28], [27, 8, 9, -1, 1]], device=DEVICE),
    )
    assert torch.equal(plain.y, emitted.y)
    assert torch.equal(plain.final_state, emitted.final_state)


def test_empty_instrumentation_is_bit_identical(scan):
    inputs = make(2, 8, D=6, N=3, G=2)
    plain = scan(**inputs, output_final_state=True)
    empty = scan(
        **inputs,
        output_final_state=True,
        emit_at=torch.full((2, 2), -1, device=DEVICE),
        inject_at=torch.empty(2, 0, dtype=torch.long, device=DEVICE),
        inject_value=torch.randn(6, 3, device=DEVICE),
    )
    unused = scan(
        **inputs,
        output_final_state=True,
        inject_at=torch.tensor([-1], device=DEVICE),
        inject_value=torch.randn(6, 3, device=DEVICE),
        inject_scale=3.0,
    )
    for other in (empty, unused):
        assert torch.equal(plain.y, other.y)
        assert torch.equal(plain.final_state, other.final_state)
    assert torch.equal(empty.states, torch.zeros(2, 2, 6, 3, device=DEVICE))


def test_validation_is_the_reference_one(scan):
    inputs = make(1, 5, D=4, N=3, G=1)
    with pytest.raises(ValueError, match=r"emit_at\[0, 0\] = 5 is out of range"):
        scan(**inputs, emit_at=torch.tensor([5], device=DEVICE))
    with pytest.raises(ValueError, match="A must have shape"):
        scan(**{**inputs, "A": inputs["A"][:, :2].T})


@needs_kernel_device
def test_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(_triton, "INTERPRETING", False)
    inputs = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in make(1, 3).items()}
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        selective_scan_triton(**inputs)


# ------------------------------------------------------------------ decode step


def step_inputs(batch, dim, n, groups, dtype=torch.float32):
    """One token of :func:`make`'s inputs as step arguments, and a random fp32 state."""
    inputs = make(batch, 1, dtype, "grouped" if groups else "token", D=dim, N=n, G=groups or 1)
    step = {k: v[..., 0] if k in ("u", "delta", "z", "B", "C") else v for k, v in inputs.items()}
    return step, torch.randn(batch, dim, n, device=DEVICE)


@pytest.mark.parametrize(
    "batch,dim,n,groups,dtype",
    [
        (3, 10, 5, 2, torch.float32),
        (2, 7, 16, 0, torch.float32),  # B, C as [B, N]
        (1, 40, 64, 4, torch.float16),
    ],
    ids=str,
)
@pytest.mark.parametrize("inject", ["none", "add", "add-scale", "set"])
def test_step_matches_sequence_reference(batch, dim, n, groups, dtype, inject, step_kernel):
    step, state = step_inputs(batch, dim, n, groups, dtype)
    kwargs = {}
    if inject != "none":
        kwargs = dict(
            inject_value=torch.randn(batch, 1, n, device=DEVICE),  # broadcast over D
            inject_mode=inject.split("-")[0],
            inject_scale=torch.randn(batch, device=DEVICE) if inject == "add-scale" else None,
        )
    oracle = selective_scan_step_reference(state.double(), **as_double(step), **kwargs, emit=True)
    before = state.clone()
    out = step_kernel(state, **step, **kwargs, emit=True)
    assert_close(oracle.y, out.y, dtype, "y")
    assert_close(oracle.state, state, dtype, "state (in place)")
    assert torch.equal(out.state, state)
    assert not torch.equal(before, state)


def test_step_emit_into_buffer_and_no_emit(step_kernel):
    step, state = step_inputs(2, 6, 4, 1)
    buffer = torch.full((2, 6, 4), float("nan"), device=DEVICE)
    twin = state.clone()
    out = step_kernel(state, **step, emit=buffer)
    assert out.state is buffer and torch.equal(buffer, state)
    plain = step_kernel(twin, **step)
    assert plain.state is None
    assert torch.equal(plain.y, out.y) and torch.equal(twin, state)


def test_step_bad_input(step_kernel):
    step, state = step_inputs(2, 6, 4, 1)
    with pytest.raises(ValueError, match="not broadcastable to the state"):
        step_kernel(state, **step, inject_value=torch.randn(3, 6, 4, device=DEVICE))
    with pytest.raises(ValueError, match="u must have shape"):
        step_kernel(state, **{**step, "u": step["u"][:1]})
    with pytest.raises(ValueError, match="applies to inject_mode='add' only"):
        step_kernel(state, **step, inject_value=state, inject_mode="set", inject_scale=2.0)
