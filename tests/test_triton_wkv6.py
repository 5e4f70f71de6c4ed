"""RWKV-5/6 Triton kernels (recurrent, chunked, decode step) against the float64 definition.

The launchers are called directly (the public op sends CPU tensors to the reference), on
``DEVICE``: CPU tensors under the Triton interpreter, CUDA tensors with it off.  The float64
definition runs on the same device.  Outputs are poisoned with NaN before each run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _device import DEVICE, needs_kernel_device, on_device

from statetap.kernels.examples import rel_error
from statetap.kernels.wkv5.fused_recurrent import wkv5_triton
from statetap.kernels.wkv5.reference import wkv5_sequential
from statetap.kernels.wkv6.chunk import CHUNK_SIZE as CHUNK
from statetap.kernels.wkv6.launch import choose_form, prepare, run
from statetap.kernels.wkv6.reference import wkv6_sequential
from statetap.kernels.wkv6.step import wkv6_step_triton

TOL = {torch.float32: 1e-5, torch.float16: 5e-3}
FORMS = ["recurrent", "chunked"]
pytestmark = needs_kernel_device


def make(B, L, H, K, V, dtype=torch.float32, decay=1.0):
    """Fresh inputs on DEVICE; ``decay`` divides ``logsigmoid(randn)`` (0.1: strong, 10: weak)."""
    inputs = dict(
        r=torch.randn(B, L, H, K).to(dtype),
        k=torch.randn(B, L, H, K).to(dtype),
        v=torch.randn(B, L, H, V).to(dtype),
        w=(F.logsigmoid(torch.randn(B, L, H, K)) / decay).to(dtype),
        u=torch.randn(H, K).to(dtype),
    )
    return on_device(inputs)


def double(value):
    return (
        value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
    )


def reference(fn, inputs, scale, **instrumentation):
    args = [double(inputs[n]) for n in "rkvwu"]
    instrumentation = on_device(instrumentation)
    return fn(*args, scale, **{n: double(x) for n, x in instrumentation.items()})


def poisoned_run(inputs, scale, form, **instrumentation):
    """Prepare a launch, fill every output with NaN, run, and check all of it was written."""
    instrumentation = on_device(instrumentation)
    launch = prepare(*(inputs[n] for n in "rkvwu"), scale, instrumentation)
    launch.y.fill_(float("nan"))
    if launch.instr.final is not None:
        launch.instr.final.fill_(float("nan"))
    out = run(launch, form)
    assert not out.y.isnan().any(), "unwritten y"
    if out.final_state is not None:
        assert not out.final_state.isnan().any(), "unwritten final state"
    return out


def assert_close(ref, out, dtype=torch.float32):
    for name in ("y", "final_state", "states"):
        a, b = getattr(ref, name), getattr(out, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape, (name, a.shape, b.shape)
            err = rel_error(a, b)
            assert err <= TOL[dtype], f"{name}: relative error {err:.2e}"
    if out.states is not None:
        assert out.states.dtype == torch.float32


def emit_positions(L, B):
    """Emission at 0, the chunk boundaries, L-1, plus an unused slot; per row, shuffled."""
    times = sorted({t for t in (0, CHUNK - 1, CHUNK, CHUNK + 1, L - 1) if t < L})
    rows = [torch.tensor(times + [-1])[torch.randperm(len(times) + 1)] for _ in range(B)]
    return torch.stack(rows)


CASES = [  # B, L, H, K, V, dtype, decay divisor
    (2, 1, 1, 16, 16, torch.float32, 1.0),
    (1, 15, 2, 32, 32, torch.float32, 0.1),
    (2, CHUNK + 1, 1, 64, 64, torch.float32, 10.0),
    (1, CHUNK, 1, 16, 32, torch.float16, 1.0),
    (1, 63, 1, 32, 16, torch.float32, 1.0),
    (2, 2 * CHUNK - 1, 1, 64, 64, torch.float16, 0.1),
]
case_ids = [f"B{c[0]}-L{c[1]}-K{c[3]}-V{c[4]}-{str(c[5])[6:]}-decay{c[6]}" for c in CASES]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_add_injection_emission_initial_state(form, case):
    B, L, H, K, V, dtype, decay = case
    inputs = make(B, L, H, K, V, dtype, decay)
    instrumentation = dict(
        initial_state=torch.randn(B, H, K, V),
        output_final_state=True,
        emit_at=emit_positions(L, B),
        inject_at=torch.tensor([[L // 2, -1]] * B),
        inject_value=torch.randn(B, 2, H, K, V),
        inject_scale=torch.linspace(-2.0, 2.0, B),  # a sweep: one multiplier per row
    )
    ref = reference(wkv6_sequential, inputs, 1.0, **instrumentation)
    assert_close(ref, poisoned_run(inputs, 1.0, form, **instrumentation), dtype)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("K", [16, 32, 64])
def test_set_injection_at_chunk_edges(form, K):
    B, L, H = 2, 2 * CHUNK + 3, 1
    inputs = make(B, L, H, K, K, decay=1.0)
    instrumentation = dict(
        output_final_state=True,
        emit_at=torch.tensor([CHUNK - 1, CHUNK, L - 1]),
        inject_at=torch.tensor([[0, CHUNK - 1, CHUNK + 4], [CHUNK, -1, L - 1]]),
        inject_value=torch.randn(1, 3, H, K, K),  # broadcast over the batch, never copied
        inject_mode="set",
    )
    ref = reference(wkv6_sequential, inputs, None, **instrumentation)
    assert_close(ref, poisoned_run(inputs, None, form, **instrumentation))


@pytest.mark.parametrize("form", FORMS)
def test_inject_scale_zero_is_the_unsteered_row(form):
    B, L, H, K = 3, 20, 1, 16
    inputs = make(B, L, H, K, K)
    plain = poisoned_run(inputs, 1.0, form, output_final_state=True)
    out = poisoned_run(
        inputs,
        1.0,
        form,
        output_final_state=True,
        inject_at=torch.tensor([4, 11]),
        inject_value=torch.randn(H, K, K),
        inject_scale=torch.tensor([0.0, 1.0, -3.0]),
    )
    # Recurrent: bit-identical.  Chunked: the state pass walks a chunk with an injection in two
    # pieces (and adds zero corrections to y), so only rounding differs.
    tol = 0.0 if form == "recurrent" else TOL[torch.float32]
    assert rel_error(plain.y[0], out.y[0]) <= tol
    assert rel_error(plain.final_state[0], out.final_state[0]) <= tol
    assert not torch.equal(plain.y[1], out.y[1]) and not torch.equal(plain.y[2], out.y[2])


@pytest.mark.parametrize("form", FORMS)
def test_empty_instrumentation_is_bit_identical(form):
    B, L, H, K = 2, 21, 2, 16
    inputs = make(B, L, H, K, K)
    plain = poisoned_run(inputs, None, form, output_final_state=True)
    empty = poisoned_run(
        inputs,
        None,
        form,
        output_final_state=True,
        emit_at=torch.full((B, 2), -1),
        inject_at=torch.zeros(B, 0, dtype=torch.long),
        inject_value=torch.zeros(B, 0, H, K, K),
    )
    assert torch.equal(plain.y, empty.y) and torch.equal(plain.final_state, empty.final_state)
    assert torch.equal(empty.states, torch.zeros_like(empty.states))


def test_chunked_equals_recurrent():
    B, L, H, K, V = 1, 3 * CHUNK + 5, 2, 32, 16
    inputs = make(B, L, H, K, V, decay=0.1)
    instrumentation = dict(
        output_final_state=True,
        emit_at=torch.tensor([3, CHUNK + 7, L - 2]),
        inject_at=torch.tensor([CHUNK + 2]),
        inject_value=torch.randn(B, 1, H, K, V),
    )
    chunked = poisoned_run(inputs, 1.0, "chunked", **instrumentation)
    assert_close(poisoned_run(inputs, 1.0, "recurrent", **instrumentation), chunked)


@pytest.mark.parametrize("form", FORMS)
def test_wkv5_static_decay(form):
    B, L, H, K = 2, CHUNK + 3, 2, 32
    inputs = make(B, L, H, K, K) | dict(w=F.logsigmoid(torch.randn(H, K, device=DEVICE)) / 0.1)
    instrumentation = dict(
        initial_state=torch.randn(B, H, K, K),
        output_final_state=True,
        emit_at=torch.tensor([[0, L - 1], [CHUNK, -1]]),
        inject_at=torch.tensor([2]),
        inject_value=torch.randn(H, K, K),
        inject_scale=0.5,
    )
    ref = reference(wkv5_sequential, inputs, 1.0, **instrumentation)
    out = wkv5_triton(*(inputs[n] for n in "rkvwu"), 1.0, form=form, **on_device(instrumentation))
    assert_close(ref, out)


@pytest.mark.parametrize("mode", ["add", "set"])
def test_decode_step_in_place(mode):
    B, H, K, V = 3, 2, 32, 16
    inputs = {n: x[:, 0] if x.dim() == 4 else x for n, x in make(B, 1, H, K, V).items()}
    state = torch.randn(B, H, K, V, device=DEVICE)
    instrumentation = on_device(
        dict(
            emit_at=torch.tensor([[0], [-1], [0]]),
            inject_at=torch.tensor([[0], [0], [-1]]),
            inject_value=torch.randn(B, 1, H, K, V),
            inject_mode=mode,
        )
    )
    one = {n: x[:, None] if x.dim() == 3 else x for n, x in inputs.items()}
    ref = reference(
        wkv6_sequential, one, None, initial_state=state, output_final_state=True, **instrumentation
    )
    out = wkv6_step_triton(*(inputs[n] for n in "rkvwu"), state, **instrumentation)
    assert out.final_state is state
    assert rel_error(ref.y[:, 0], out.y) <= TOL[torch.float32]
    assert rel_error(ref.final_state, state) <= TOL[torch.float32]
    assert rel_error(ref.states, out.states) <= TOL[torch.float32]


@pytest.mark.parametrize("mode", ["add", "set"])
def test_chunked_events_inside_chunks_odd_dims(mode):
    """Several injections inside one chunk, at its edges, at 0 and L - 1, per-row positions and
    scales, odd K and V (masked tiles), V over one value tile; emissions around every one."""
    B, L, H, K, V = 2, 2 * CHUNK + 9, 1, 24, 72
    inputs = make(B, L, H, K, V, decay=0.5)
    inject = [
        [0, 5, 6, CHUNK - 1, CHUNK + 30, L - 1],
        [CHUNK, CHUNK + 1, 2 * CHUNK + 3, -1, -1, 40],
    ]
    emit = [[0, 5, 6, 7, CHUNK - 1, CHUNK, L - 1], [1, CHUNK, CHUNK + 1, 41, L - 2, -1, 2 * CHUNK]]
    instrumentation = dict(
        initial_state=torch.randn(B, H, K, V),
        output_final_state=True,
        emit_at=torch.tensor(emit),
        inject_at=torch.tensor(inject),
        inject_value=torch.randn(B, 6, H, K, V),
        inject_mode=mode,
        **({"inject_scale": torch.rand(B, 6) + 0.5} if mode == "add" else {}),
    )
    ref = reference(wkv6_sequential, inputs, 1.0, **instrumentation)
    assert_close(ref, poisoned_run(inputs, 1.0, "chunked", **instrumentation))


def test_chunked_emission_leaves_y_bit_identical():
    B, L, H, K = 2, CHUNK + 17, 2, 16
    inputs = make(B, L, H, K, K, decay=0.1)
    plain = poisoned_run(inputs, 1.0, "chunked")
    emitting = poisoned_run(inputs, 1.0, "chunked", emit_at=torch.tensor([[0, 30, L - 1]] * B))
    assert torch.equal(plain.y, emitting.y)


def test_auto_form_is_recurrent_for_short_rows_wide_keys_and_batches_that_fill_the_gpu():
    """The documented rule: recurrent for L <= 64, K above the chunked kernel's limit, or
    B * H * ceil(V / 16) >= 1056 warps (two per H100 scheduler); chunked otherwise."""
    assert choose_form("auto", (1, 64, 64, 64, 64), 64) == "recurrent"
    assert choose_form("auto", (1, 65, 64, 64, 64), 64) == "chunked"
    assert choose_form("auto", (1, 4096, 8, 128, 64), 64) == "recurrent"
    assert choose_form("auto", (32, 2048, 8, 64, 64), 64) == "chunked"  # 1024 warps
    assert choose_form("auto", (33, 2048, 8, 64, 64), 64) == "recurrent"  # 1056 warps
    assert choose_form("auto", (66, 2048, 8, 64, 24), 64) == "recurrent"  # ceil(24 / 16) = 2
    assert choose_form("chunked", (64, 2048, 64, 64, 64), 64) == "chunked"
    assert choose_form("recurrent", (1, 4096, 1, 64, 64), 64) == "recurrent"
    with pytest.raises(ValueError, match="form must be one of"):
        choose_form("fast", (1, 2, 1, 4, 4), 64)
