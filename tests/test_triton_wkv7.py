"""RWKV-7 Triton kernels (recurrent and chunked forwards, decode step) against the float64
definition.

On ``DEVICE`` (CPU tensors under the Triton interpreter, CUDA tensors with it off), outputs
poisoned with NaN before each run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _device import DEVICE, needs_kernel_device, on_device
from test_triton_wkv6 import TOL, assert_close, double, emit_positions

from statetap.kernels.examples import rel_error
from statetap.kernels.wkv7.chunk import CHUNK
from statetap.kernels.wkv7.launch import prepare7, wkv7_triton
from statetap.kernels.wkv7.reference import wkv7_sequential
from statetap.kernels.wkv7.step import wkv7_step_triton

NAMES = ("r", "w", "k", "v", "a", "b")
FORMS = ["recurrent", "chunked"]
pytestmark = needs_kernel_device


def inputs_of(B, L, H, K, V, dtype=torch.float32, decay=1.0):
    """RWKV-7-like inputs on DEVICE: ``a = -kappa``, ``b = kappa * rate`` (``|kappa| = 1``)."""
    kappa = F.normalize(torch.randn(B, L, H, K), dim=-1)
    values = dict(
        r=torch.randn(B, L, H, K),
        w=F.logsigmoid(torch.randn(B, L, H, K)) / decay,
        k=torch.randn(B, L, H, K),
        v=torch.randn(B, L, H, V),
        a=-kappa,
        b=kappa * torch.sigmoid(torch.randn(B, L, H, K)),
    )
    return {n: x.to(DEVICE, dtype) for n, x in values.items()}


def reference(inputs, scale, **instrumentation):
    args = [double(inputs[n]) for n in NAMES]
    instrumentation = on_device(instrumentation)
    return wkv7_sequential(*args, scale, **{n: double(x) for n, x in instrumentation.items()})


def poisoned_run(inputs, scale, form="auto", **instrumentation):
    """Prepare a launch, fill every output with NaN, run ``form``, check all of it was written."""
    instrumentation = on_device(instrumentation)
    launch = prepare7(*(inputs[n] for n in NAMES), scale, instrumentation)
    launch.y.fill_(float("nan"))
    if launch.instr.final is not None:
        launch.instr.final.fill_(float("nan"))
    out = launch.run(form)
    assert not out.y.isnan().any(), "unwritten y"
    if out.final_state is not None:
        assert not out.final_state.isnan().any(), "unwritten final state"
    return out


CASES = [  # B, L, H, K, V, dtype, decay divisor (0.1: strong, 10: weak)
    (2, 1, 1, 16, 16, torch.float32, 1.0),
    (1, CHUNK - 1, 2, 32, 32, torch.float32, 0.1),
    (1, CHUNK, 1, 16, 32, torch.float16, 1.0),
    (2, CHUNK + 1, 1, 64, 64, torch.float32, 10.0),
    (1, 2 * CHUNK + 1, 1, 32, 16, torch.float32, 1.0),
    (1, 4 * CHUNK - 1, 1, 64, 32, torch.float16, 0.1),
]
case_ids = [f"B{c[0]}-L{c[1]}-K{c[3]}-V{c[4]}-{str(c[5])[6:]}-decay{c[6]}" for c in CASES]
MODES = ["add", "set"]
# Every case runs on both forms; CI takes one injection mode per (case, form), alternating so
# that each form meets each mode on three cases; the other half of the product is `slow`.
MATCHES_REFERENCE = [
    pytest.param(
        case,
        mode,
        form,
        id=f"{case_id}-{mode}-{form}",
        marks=() if (i + j) % 2 == MODES.index(mode) else pytest.mark.slow,
    )
    for i, (case, case_id) in enumerate(zip(CASES, case_ids))
    for mode in MODES
    for j, form in enumerate(FORMS)
]


@pytest.mark.parametrize("case, mode, form", MATCHES_REFERENCE)
def test_matches_reference(case, mode, form):
    B, L, H, K, V, dtype, decay = case
    inputs = inputs_of(B, L, H, K, V, dtype, decay)
    instrumentation = dict(
        initial_state=torch.randn(B, H, K, V),
        output_final_state=True,
        emit_at=emit_positions(L, B),  # 0, the chunk boundaries, L-1, an unused slot
        inject_at=torch.tensor([[L // 2]] + [[-1]] * (B - 1)),
        inject_value=torch.randn(B, 1, H, K, V),
        inject_mode=mode,
    )
    if mode == "add":
        instrumentation["inject_scale"] = torch.linspace(-2.0, 2.0, B)
    ref = reference(inputs, 0.5, **instrumentation)
    assert_close(ref, poisoned_run(inputs, 0.5, form, **instrumentation), dtype)


@pytest.mark.parametrize("K", [16, pytest.param(32, marks=pytest.mark.slow), 64])
def test_chunked_set_and_add_at_chunk_edges(K):
    B, L, H, V = 2, 2 * CHUNK + 3, 1, 16
    inputs = inputs_of(B, L, H, K, V, decay=0.1)
    edges = dict(
        output_final_state=True,
        emit_at=torch.tensor([CHUNK - 1, CHUNK, L - 1]),
        inject_at=torch.tensor([[0, CHUNK - 1, CHUNK + 4], [CHUNK, -1, L - 1]]),
        inject_value=torch.randn(1, 3, H, K, V),  # broadcast over the batch, never copied
    )
    for mode in ("set", "add"):
        ref = reference(inputs, 1.0, inject_mode=mode, **edges)
        assert_close(ref, poisoned_run(inputs, 1.0, "chunked", inject_mode=mode, **edges))


@pytest.mark.parametrize("form", FORMS)
def test_inject_scale_sweep(form):
    """One launch, one multiplier per row: 0 is the unsteered row, the rest match float64."""
    B, L, H, K = 3, CHUNK + 4, 1, 16
    inputs = inputs_of(B, L, H, K, K)
    plain = poisoned_run(inputs, 1.0, form, output_final_state=True)
    steer = dict(
        output_final_state=True,
        inject_at=torch.tensor([4, CHUNK + 1]),
        inject_value=torch.randn(H, K, K),
        inject_scale=torch.tensor([0.0, 1.0, -3.0]),
    )
    out = poisoned_run(inputs, 1.0, form, **steer)
    assert_close(reference(inputs, 1.0, **steer), out)
    # Recurrent: bit-identical.  Chunked: the piece is cut after t anyway, so only rounding.
    tol = 0.0 if form == "recurrent" else 1e-6
    assert rel_error(plain.y[0], out.y[0]) <= tol
    assert rel_error(plain.final_state[0], out.final_state[0]) <= tol
    assert not torch.equal(plain.y[1], out.y[1]) and not torch.equal(plain.y[2], out.y[2])


@pytest.mark.parametrize("form", FORMS)
def test_empty_instrumentation_is_bit_identical(form):
    B, L, H, K = 2, CHUNK + 5, 2, 16
    inputs = inputs_of(B, L, H, K, K)
    plain = poisoned_run(inputs, 1.0, form, output_final_state=True)
    empty = poisoned_run(
        inputs,
        1.0,
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
    inputs = inputs_of(B, L, H, K, V, decay=0.1)
    instrumentation = dict(
        initial_state=torch.randn(B, H, K, V),
        output_final_state=True,
        emit_at=torch.tensor([3, CHUNK + 7, L - 2]),
        inject_at=torch.tensor([CHUNK + 2]),
        inject_value=torch.randn(B, 1, H, K, V),
    )
    chunked = poisoned_run(inputs, 1.0, "chunked", **instrumentation)
    assert_close(poisoned_run(inputs, 1.0, "recurrent", **instrumentation), chunked)


def test_auto_form_by_length():
    """``auto``: recurrent up to 64 tokens, chunked beyond (bit-identical to the named form)."""
    H, K = 1, 16
    for L, form in ((64, "recurrent"), (65, "chunked")):
        inputs = inputs_of(1, L, H, K, K)
        auto = wkv7_triton(*(inputs[n] for n in NAMES), output_final_state=True)
        named = poisoned_run(inputs, 1.0, form, output_final_state=True)
        assert torch.equal(auto.y, named.y) and torch.equal(auto.final_state, named.final_state)
    with pytest.raises(ValueError, match="form"):
        wkv7_triton(*(inputs[n] for n in NAMES), form="blocked")


@pytest.mark.parametrize("mode", ["add", "set"])
def test_decode_step_in_place(mode):
    B, H, K, V = 3, 2, 32, 16
    one = inputs_of(B, 1, H, K, V)
    state = torch.randn(B, H, K, V, device=DEVICE)
    instrumentation = on_device(
        dict(
            emit_at=torch.tensor([[0], [-1], [0]]),
            inject_at=torch.tensor([[0], [0], [-1]]),
            inject_value=torch.randn(B, 1, H, K, V),
            inject_mode=mode,
        )
    )
    ref = reference(one, 1.0, initial_state=state, output_final_state=True, **instrumentation)
    out = wkv7_step_triton(*(one[n][:, 0] for n in NAMES), state, **instrumentation)
    assert out.final_state is state
    for a, b in ((ref.y[:, 0], out.y), (ref.final_state, state), (ref.states, out.states)):
        assert rel_error(a, b) <= TOL[torch.float32]


def test_chunked_mixes_factorised_and_exact_chunks():
    """A chunk whose decay is too strong to factorise (built column by column) between two at
    RWKV-7's decay (tensor-core pair products), odd L; emission and injection at 0, inside
    chunks, on chunk edges and at L - 1, per-row positions and scales."""
    B, L, H, K, V = 2, 2 * CHUNK + 7, 1, 32, 16
    inputs = inputs_of(B, L, H, K, V)
    w = -0.6065 * torch.rand(B, L, H, K, device=DEVICE)  # within RWKV-7's bound
    w[:, CHUNK : 2 * CHUNK] *= 100.0  # the middle chunk: far past the factorisation's bound
    inputs["w"] = w
    emit = torch.tensor(
        [[0, 5, CHUNK - 1, CHUNK + 3, 2 * CHUNK + 2, L - 1], [1, -1, CHUNK, 7, L - 2, -1]]
    )
    steer = dict(
        initial_state=torch.randn(B, H, K, V),
        output_final_state=True,
        emit_at=emit,
        inject_at=torch.tensor([[CHUNK + 9, L - 1], [0, 2 * CHUNK - 1]]),
        inject_value=torch.randn(B, 2, H, K, V),
        inject_scale=torch.tensor([0.5, -2.0]),
    )
    assert_close(reference(inputs, 0.7, **steer), poisoned_run(inputs, 0.7, "chunked", **steer))
    plain = dict(steer, inject_at=None, inject_value=None, inject_scale=None)
    plain = {n: x for n, x in plain.items() if x is not None}
    assert_close(reference(inputs, 0.7, **plain), poisoned_run(inputs, 0.7, "chunked", **plain))


@pytest.mark.parametrize("mode", ["add", "set"])
def test_chunked_injection_inside_a_chunk_then_emission(mode):
    """An injection at 0 and one inside a chunk, each followed by emissions in the same chunk
    (that chunk runs token by token); the other chunks run from their factors."""
    B, L, H, K, V = 2, CHUNK + 11, 2, 16, 16
    inputs = inputs_of(B, L, H, K, V)
    steer = dict(
        output_final_state=True,
        emit_at=torch.tensor([[0, 2, CHUNK + 4, L - 1], [3, CHUNK - 1, CHUNK + 6, -1]]),
        inject_at=torch.tensor([[0, CHUNK + 2], [1, -1]]),
        inject_value=torch.randn(1, 2, H, K, V),
        inject_mode=mode,
    )
    assert_close(reference(inputs, 1.0, **steer), poisoned_run(inputs, 1.0, "chunked", **steer))


def test_chunked_emission_leaves_y_unchanged():
    """Emission inside chunks, at chunk edges and at L - 1 reads the factors: y and the final
    state are bit-identical to the plain run's."""
    B, L, H, K = 2, 2 * CHUNK + 1, 1, 16
    inputs = inputs_of(B, L, H, K, K)
    plain = poisoned_run(inputs, 1.0, "chunked", output_final_state=True)
    emit = torch.tensor([[0, 9, CHUNK - 1, CHUNK + 30, L - 1], [L - 2, CHUNK, 1, -1, -1]])
    out = poisoned_run(inputs, 1.0, "chunked", output_final_state=True, emit_at=emit)
    assert torch.equal(plain.y, out.y) and torch.equal(plain.final_state, out.final_state)
    ref = reference(inputs, 1.0, emit_at=emit, output_final_state=True)
    assert rel_error(ref.states, out.states) <= TOL[torch.float32]
