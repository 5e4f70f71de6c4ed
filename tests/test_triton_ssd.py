"""The Mamba-2 SSD kernels (Triton and cpu backends) against the float64 sequential reference.

Runs the Triton kernels under the Triton interpreter on CPU tensors (or compiled, on CUDA, with
``TRITON_INTERPRET=0``), and the C++ kernels (``statetap._C``) with the widest ISA of this CPU and
on their scalar path; outputs start as NaN, so every element must be written.  The Triton
kernels' chunk is 16 here (``chunk_size=16``), so positions 15, 16, 17, 31, 32 are chunk edges,
and two tests run 64-token chunks of two 32-token interpreter tiles of two 16-token K-blocks
each (the cpu kernel is recurrent: every position is alike to it).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from _device import DEVICE, on_device
from _triton_mamba import (  # noqa: F401
    BACKENDS,
    as_double,
    as_dtype,
    assert_close,
    assert_outputs_close,
    implementation,
    poisoned,
)

from statetap.kernels.examples import CASES
from statetap.kernels.ssd import ssd as public_scan
from statetap.kernels.ssd import ssd_step
from statetap.kernels.ssd.reference import ssd_sequential
from statetap.kernels.ssd.step import ssd_step_reference

CHUNK = 16
pytestmark = pytest.mark.usefixtures("poisoned")


@pytest.fixture(params=BACKENDS)
def scan(request, monkeypatch):
    """The forward kernel under test (Triton, or C++ with the widest or the scalar ISA)."""
    return implementation(public_scan, request.param, monkeypatch)


@pytest.fixture(params=BACKENDS)
def step_kernel(request, monkeypatch):
    """The decode-step kernel under test."""
    return implementation(ssd_step, request.param, monkeypatch)


def make(batch, length, dtype=torch.float32, **sizes):
    inputs = CASES["ssd"].make(batch, length, torch.float32, **sizes)
    inputs = on_device(inputs)
    return as_dtype(inputs, dtype)


def positions(rows):
    return torch.tensor(rows, device=DEVICE)


def check(scan, inputs, dtype=torch.float32, **instrumentation):
    """Run the kernel and the float64 sequential definition on the same inputs and compare."""
    out = scan(**inputs, chunk_size=CHUNK, **instrumentation)
    oracle = ssd_sequential(**as_double(inputs), **as_double(instrumentation))
    assert_outputs_close(oracle, out, dtype)
    return out


@pytest.mark.parametrize(
    "batch,length,heads,head_dim,groups,n",
    [
        (2, 1, 4, 3, 2, 5),  # L = 1
        (1, 15, 2, 8, 1, 16),  # chunk - 1
        (2, 16, 3, 5, 3, 7),  # chunk, a group per head
        (1, 17, 4, 20, 2, 3),  # chunk + 1, P over 16
        (2, 63, 2, 3, 1, 5),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forward_matches_reference(batch, length, heads, head_dim, groups, n, dtype, scan):
    inputs = make(batch, length, dtype, H=heads, P=head_dim, G=groups, N=n)
    check(scan, inputs, dtype, output_final_state=True)


@pytest.mark.parametrize("variant", ["D per head", "no D z bias", "dt_limit"])
def test_optional_inputs(variant, scan):
    inputs = make(2, 20, H=2, P=4, G=1, N=6)
    if variant == "D per head":
        inputs["D"] = torch.randn(2, device=DEVICE)
    elif variant == "no D z bias":
        inputs.update(D=None, z=None, dt_bias=None)
    else:
        inputs["dt_limit"] = (0.05, 0.8)
    check(scan, inputs, output_final_state=True)


def test_emission_at_chunk_edges_with_initial_state(scan):
    length = 40
    inputs = make(2, length, H=3, P=5, G=1, N=7)
    check(
        scan,
        inputs,
        initial_states=torch.randn(2, 3, 5, 7, device=DEVICE),
        output_final_state=True,
        emit_at=positions([[0, 15, 16, 17, -1, 31, 32, length - 1], [33, 2, 17, 16, 15, 0, 1, -1]]),
    )


@pytest.mark.parametrize("mode", ["add", "set"])
def test_injection_anywhere_with_emission(mode, scan):
    length, shape = 37, (2, 4, 3, 5)
    inputs = make(2, length, H=4, P=3, G=2, N=5)
    check(
        scan,
        inputs,
        output_final_state=True,
        # injections inside a chunk, at its last token, at 0 and at L-1; emission at the same
        # times sees the injected state
        emit_at=positions([[0, 15, 16, 17, 36, 9], [3, 31, 32, 8, 7, -1]]),
        inject_at=positions([[15, 3, 36], [31, 0, 7]]),
        inject_value=torch.randn(shape[0], 3, *shape[1:], device=DEVICE),
        inject_mode=mode,
    )


@pytest.mark.parametrize("scale", ["sweep", "per-slot"])
def test_inject_scale(scale, scan):
    inputs = make(3, 21, H=2, P=3, G=1, N=4)
    value = {
        "sweep": torch.tensor([0.0, -1.0, 3.0], device=DEVICE),
        "per-slot": torch.randn(3, 2, device=DEVICE),
    }[scale]
    check(
        scan,
        inputs,
        output_final_state=True,
        emit_at=positions([5, 20]),
        inject_at=positions([5, 16]),
        inject_value=torch.randn(2, 3, 4, device=DEVICE),  # [H, P, N], broadcast
        inject_scale=value,
    )


def test_seq_idx_with_injection_and_emission(scan):
    length = 30
    inputs = make(2, length, H=2, P=3, G=1, N=5)
    seq_idx = positions([[0] * 7 + [1] * 16 + [2] * 7, [0] * 16 + [1] * 14])
    check(
        scan,
        inputs,
        seq_idx=seq_idx,
        initial_state=torch.randn(2, 2, 3, 5, device=DEVICE),
        output_final_state=True,
        emit_at=positions([[6, 7, 22, 29], [15, 16, 3, -1]]),  # the ends of sequences
        inject_at=positions([[6, 10], [15, 20]]),  # the last token of a sequence: no effect
        inject_value=torch.randn(2, 2, 2, 3, 5, device=DEVICE),
        inject_mode="set",
    )


def test_fp16_emission_and_injection(scan):
    inputs = make(2, 33, torch.float16, H=2, P=16, G=1, N=16)
    check(
        scan,
        inputs,
        torch.float16,
        output_final_state=True,
        emit_at=positions([0, 16, 20, 32]),
        inject_at=positions([[20], [4]]),
        inject_value=torch.randn(2, 1, 2, 16, 16, device=DEVICE),
    )


@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("seq_idx", [False, True], ids=["", "seq_idx"])
def test_long_chunks_with_events_in_every_tile(mode, seq_idx, scan):
    """``chunk_size=64``: a Triton chunk holds two 32-token tiles (the interpreter's), so
    emissions and injections fall in the first, a middle and the last tile of a chunk, on tile
    and chunk edges, at 0 and at L - 1 (L = 83, not a multiple of the chunk); per-row scales."""
    length, heads, head_dim, n = 83, 3, 5, 7
    inputs = make(2, length, H=heads, P=head_dim, G=1, N=n)
    instrumentation = dict(
        initial_state=torch.randn(2, heads, head_dim, n, device=DEVICE),
        output_final_state=True,
        emit_at=positions(
            [[0, 15, 16, 40, 63, 64, 70, 82, -1], [1, 17, 31, 32, 47, 62, 65, 80, 81]]
        ),
        inject_at=positions([[0, 16, 40, 62, 82], [31, 47, 63, 64, -1]]),
        inject_value=torch.randn(2, 5, heads, head_dim, n, device=DEVICE),
        inject_mode=mode,
    )
    if mode == "add":
        instrumentation["inject_scale"] = torch.randn(2, 5, device=DEVICE)
    if seq_idx:
        inputs["seq_idx"] = positions([[0] * 30 + [1] * 53, [0] * 64 + [1] * 19])
    out = scan(**inputs, chunk_size=64, **instrumentation)
    oracle = ssd_sequential(**as_double(inputs), **as_double(instrumentation))
    assert_outputs_close(oracle, out, torch.float32)
    # y and the final state do not depend on the chunk size; emission leaves y as it is
    other = scan(**inputs, chunk_size=32, **instrumentation)
    assert_outputs_close(oracle, other, torch.float32)
    plain = {k: v for k, v in instrumentation.items() if k != "emit_at"}
    assert torch.equal(scan(**inputs, chunk_size=64, **plain).y, out.y)


@pytest.mark.parametrize("initial", [False, True], ids=["", "initial_state"])
@pytest.mark.parametrize("seq_idx", [False, True], ids=["", "seq_idx"])
def test_emission_at_every_position(initial, seq_idx, scan):
    """Every state of an odd-length row (L = 77, ``chunk_size=64``): each position of each
    K-block, tile and chunk (0, block and tile edges, 63 | 64, L - 1) is emitted, with and
    without an initial state and ``seq_idx`` resets (one inside a tile, one at a chunk edge)."""
    length, heads, head_dim, n = 77, 2, 3, 5
    inputs = make(2, length, H=heads, P=head_dim, G=1, N=n)
    instrumentation = dict(output_final_state=True, emit_at=positions(list(range(length))))
    if initial:
        instrumentation["initial_state"] = torch.randn(2, heads, head_dim, n, device=DEVICE)
    if seq_idx:
        inputs["seq_idx"] = positions([[0] * 21 + [1] * 56, [0] * 64 + [1] * 13])
    out = scan(**inputs, chunk_size=64, **instrumentation)
    oracle = ssd_sequential(**as_double(inputs), **as_double(instrumentation))
    assert_outputs_close(oracle, out, torch.float32)
    plain = {k: v for k, v in instrumentation.items() if k != "emit_at"}
    assert torch.equal(scan(**inputs, chunk_size=64, **plain).y, out.y)


def test_empty_instrumentation_is_bit_identical(scan):
    inputs = make(2, 20, H=2, P=3, G=1, N=5)
    run = dict(chunk_size=CHUNK, output_final_state=True)
    plain = scan(**inputs, **run)
    empty = scan(
        **inputs,
        **run,
        emit_at=positions([-1, -1]),
        inject_at=torch.empty(0, dtype=torch.long, device=DEVICE),
        inject_value=torch.randn(2, 3, 5, device=DEVICE),
    )
    unused = scan(
        **inputs,
        **run,
        inject_at=positions([[-1], [-1]]),
        inject_value=torch.randn(2, 3, 5, device=DEVICE),
        inject_scale=2.0,
    )
    for other in (empty, unused):
        assert torch.equal(plain.y, other.y)
        assert torch.equal(plain.final_state, other.final_state)
    assert torch.equal(empty.states, torch.zeros(2, 2, 2, 3, 5, device=DEVICE))


def test_validation_is_the_reference_one(scan):
    inputs = make(1, 5, H=2, P=3, G=1, N=4)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        scan(**inputs, chunk_size=0)
    with pytest.raises(ValueError, match=r"inject_at\[0, 0\] = 7 is out of range"):
        scan(**inputs, inject_at=positions([7]), inject_value=torch.zeros(1, device=DEVICE))
    with pytest.raises(ValueError, match="dt_limit must be"):
        scan(**inputs, dt_limit=(1.0, 0.0))
    assert math.isinf(inspect.signature(scan).parameters["dt_limit"].default[1])


# ------------------------------------------------------------------ decode step


@pytest.mark.parametrize(
    "heads,head_dim,groups,n,dtype",
    [(4, 3, 2, 5, torch.float32), (2, 20, 1, 16, torch.float16)],
    ids=str,
)
@pytest.mark.parametrize("inject", ["none", "add", "add-scale", "set"])
@pytest.mark.parametrize("limit", [False, True], ids=["", "dt_limit"])
def test_step_matches_sequence_reference(
    heads, head_dim, groups, n, dtype, inject, limit, step_kernel
):
    batch = 3
    inputs = make(batch, 1, dtype, H=heads, P=head_dim, G=groups, N=n)
    step = {k: v[:, 0] if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs.items()}
    if limit:
        step["dt_limit"] = (0.1, 0.7)
    state = torch.randn(batch, heads, head_dim, n, device=DEVICE)
    kwargs = {}
    if inject != "none":
        kwargs = dict(
            inject_value=torch.randn(batch, heads, 1, n, device=DEVICE),
            inject_mode=inject.split("-")[0],
            inject_scale=torch.randn(batch, device=DEVICE) if inject == "add-scale" else None,
        )
    oracle = ssd_step_reference(state.double(), **as_double(step), **kwargs, emit=True)
    out = step_kernel(state, **step, **kwargs, emit=True)
    assert_close(oracle.y, out.y, dtype, "y")
    assert_close(oracle.state, state, dtype, "state (in place)")
    assert torch.equal(out.state, state)


def test_step_bad_input(step_kernel):
    inputs = make(2, 1, H=2, P=3, G=1, N=4)
    step = {k: v[:, 0] if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs.items()}
    state = torch.zeros(2, 2, 3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="dt must have shape"):
        step_kernel(state, **{**step, "dt": step["dt"][:, :1]})
    with pytest.raises(ValueError, match="emit buffer must be a contiguous float32"):
        step_kernel(state, **step, emit=torch.zeros(2, 2, 3, 4, dtype=torch.float16, device=DEVICE))
