"""The state contract (docs/semantics.md), checked as identities on every op and form.

All in float64 on fresh random inputs, so an identity that holds must hold to rounding.
"""

from __future__ import annotations

import pytest
import torch

from statetap.kernels.examples import CASES, CHUNKED_OPS, OP_FORMS, rel_error

TIGHT = 1e-12
each_op_form = pytest.mark.parametrize("op,form", OP_FORMS, ids=[f"{o}-{f}" for o, f in OP_FORMS])

L = 11  # odd, not a multiple of the test chunk size (4)


def close(reference: torch.Tensor, value: torch.Tensor, tol: float = TIGHT) -> None:
    assert reference.shape == value.shape
    assert rel_error(reference, value) <= tol, rel_error(reference, value)


@each_op_form
@pytest.mark.parametrize("t", [0, 3, 4, L - 1])
def test_emit_is_final_state_of_prefix(op, form, t):
    case = CASES[op]
    inputs = case.make(2, L, torch.float64)
    out = case.call(form, inputs, emit_at=torch.tensor([t]))
    prefix = case.call(form, case.slice(inputs, 0, t + 1), output_final_state=True)
    close(prefix.final_state, out.states[:, 0])


@each_op_form
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("t", [0, 3, L - 2])
def test_inject_equals_editing_the_state_between_two_runs(op, form, mode, t):
    case = CASES[op]
    inputs = case.make(2, L, torch.float64)
    prefix = case.call(form, case.slice(inputs, 0, t + 1), output_final_state=True)
    value = torch.randn_like(prefix.final_state)[:, None]
    scale = 1.7 if mode == "add" else None
    out = case.call(
        form,
        inputs,
        inject_at=torch.tensor([t]),
        inject_value=value,
        inject_mode=mode,
        inject_scale=scale,
        output_final_state=True,
        emit_at=torch.tensor([t]),
    )
    edited = prefix.final_state + scale * value[:, 0] if mode == "add" else value[:, 0]
    rest = case.call(
        form, case.slice(inputs, t + 1, L), initial_state=edited, output_final_state=True
    )
    close(edited, out.states[:, 0])  # emission at t sees the injection at t
    close(prefix.y, case.y_slice(out.y, 0, t + 1))
    close(rest.y, case.y_slice(out.y, t + 1, L))
    close(rest.final_state, out.final_state)


@each_op_form
@pytest.mark.parametrize("mode", ["add", "set"])
def test_injection_at_t_leaves_earlier_outputs_alone(op, form, mode):
    case = CASES[op]
    inputs = case.make(3, L, torch.float64)
    plain = case.call(form, inputs, output_final_state=True)
    positions = torch.tensor([[2], [5], [L - 1]])
    value = 10 * torch.randn(3, 1, *plain.final_state.shape[1:], dtype=torch.float64)
    out = case.call(form, inputs, inject_at=positions, inject_value=value, inject_mode=mode)
    for row, t in enumerate(positions[:, 0].tolist()):
        before = case.y_slice(plain.y[row : row + 1], 0, t + 1)
        close(before, case.y_slice(out.y[row : row + 1], 0, t + 1))
        if t + 1 < L:  # the injection does reach the next output
            after = case.y_slice(plain.y[row : row + 1], t + 1, t + 2)
            assert rel_error(after, case.y_slice(out.y[row : row + 1], t + 1, t + 2)) > 1e-6


@each_op_form
def test_empty_instrumentation_is_bit_identical_to_none(op, form):
    case = CASES[op]
    inputs = case.make(2, L, torch.float64)
    plain = case.call(form, inputs)
    state_shape = case.call(form, inputs, output_final_state=True).final_state.shape[1:]
    unused = torch.full((2, 3), -1)
    empty = case.call(
        form,
        inputs,
        emit_at=unused,
        inject_at=unused,
        inject_value=torch.zeros(1, 1, *state_shape, dtype=torch.float64),
    )
    none_asked = case.call(form, inputs, emit_at=torch.empty(0, dtype=torch.long))
    assert plain.final_state is None and plain.states is None
    assert torch.equal(plain.y, empty.y) and torch.equal(plain.y, none_asked.y)
    assert empty.states.shape == (2, 3, *state_shape) and not empty.states.any()
    assert none_asked.states.shape == (2, 0, *state_shape)


@each_op_form
def test_emission_keeps_slot_order_and_zeros_unused_slots(op, form):
    case = CASES[op]
    inputs = case.make(2, L, torch.float64)
    emit_at = torch.tensor([[L - 1, -1, 0, 5], [3, 7, -1, -1]])
    out = case.call(form, inputs, emit_at=emit_at)
    for row in range(2):
        for slot, t in enumerate(emit_at[row].tolist()):
            if t < 0:
                assert not out.states[row, slot].any()
                continue
            prefix = case.call(form, case.slice(inputs, 0, t + 1), output_final_state=True)
            close(prefix.final_state[row], out.states[row, slot])
    assert out.states.dtype == torch.float64  # float64 inputs: the exact oracle


@each_op_form
def test_float32_state_for_half_inputs(op, form):
    case = CASES[op]
    inputs = {
        k: v.half() if isinstance(v, torch.Tensor) else v
        for k, v in case.make(2, 5, torch.float32).items()
    }
    out = case.call(form, inputs, emit_at=torch.tensor([2]), output_final_state=True)
    assert out.states.dtype == torch.float32 and out.final_state.dtype == torch.float32
    assert out.y.dtype == torch.float16


@each_op_form
def test_scale_per_row_equals_separate_runs(op, form):
    case = CASES[op]
    scales = torch.tensor([-2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    inputs = case.make(1, L, torch.float64)
    batched = {
        k: v.expand(4, *v.shape[1:]) if k in case.time_axes else v for k, v in inputs.items()
    }
    state_shape = case.call(form, inputs, output_final_state=True).final_state.shape[1:]
    value = torch.randn(1, 1, *state_shape, dtype=torch.float64)
    sweep = case.call(
        form,
        batched,
        inject_at=torch.tensor([4]),
        inject_value=value,
        inject_scale=scales,
        output_final_state=True,
    )
    for row, scale in enumerate(scales.tolist()):
        single = case.call(
            form,
            inputs,
            inject_at=torch.tensor([4]),
            inject_value=value,
            inject_scale=scale,
            output_final_state=True,
        )
        close(single.y[0], sweep.y[row])
        close(single.final_state[0], sweep.final_state[row])
    unsteered = case.call(form, batched).y[1]  # multiplier 0 is the unsteered model:
    if form == "sequential":  # exactly, where the injection is one more addition (of zero)
        assert torch.equal(sweep.y[1], unsteered)
    close(unsteered, sweep.y[1])


@each_op_form
def test_initial_state_is_used(op, form):
    case = CASES[op]
    inputs = case.make(2, 6, torch.float64)
    full = case.call(form, inputs, output_final_state=True)
    # Running the second half from the first half's final state is the whole run.
    first = case.call(form, case.slice(inputs, 0, 3), output_final_state=True)
    second = case.call(
        form, case.slice(inputs, 3, 6), initial_state=first.final_state, output_final_state=True
    )
    close(full.final_state, second.final_state)
    close(case.y_slice(full.y, 3, 6), second.y)


@pytest.mark.parametrize("op", CHUNKED_OPS)
@pytest.mark.parametrize(
    "chunk,length", [(4, 1), (4, 3), (4, 4), (4, 5), (4, 13), (8, 63), (16, 17)]
)
def test_chunked_equals_sequential(op, chunk, length):
    case = CASES[op]
    inputs = case.make(2, length, torch.float64)
    initial = case.call("sequential", case.slice(inputs, 0, 1), output_final_state=True).final_state
    initial = torch.randn_like(initial)
    emit_at = torch.tensor(
        sorted({0, chunk - 1, chunk, chunk + 1, length - 1} & set(range(length)))
    )
    injected = torch.randn(2, 1, *initial.shape[1:], dtype=torch.float64)
    for mode in ("add", "set"):
        kwargs = dict(
            initial_state=initial,
            output_final_state=True,
            emit_at=emit_at,
            inject_at=torch.tensor([[length // 2], [-1]]),
            inject_value=injected,
            inject_mode=mode,
        )
        ref = case.call("sequential", inputs, **kwargs)
        out = case.call("chunked", inputs, chunk_size=chunk, **kwargs)
        close(ref.y, out.y, 1e-10)
        close(ref.final_state, out.final_state, 1e-10)
        close(ref.states, out.states, 1e-10)


@each_op_form
@pytest.mark.parametrize("mode", ["add", "set"])
def test_unused_injection_slots_are_ignored_whatever_they_hold(op, form, mode):
    case = CASES[op]
    inputs = case.make(2, L, torch.float64)
    state_shape = case.call(form, inputs, output_final_state=True).final_state.shape[1:]
    value = torch.randn(2, 2, *state_shape, dtype=torch.float64)
    value[:, 1] = float("nan")  # slot 1 is unused in both rows
    out = case.call(
        form,
        inputs,
        inject_at=torch.tensor([[3, -1], [6, -1]]),
        inject_value=value,
        inject_mode=mode,
        output_final_state=True,
    )
    alone = case.call(
        form,
        inputs,
        inject_at=torch.tensor([[3], [6]]),
        inject_value=value[:, :1],
        inject_mode=mode,
        output_final_state=True,
    )
    assert torch.equal(out.y, alone.y) and torch.equal(out.final_state, alone.final_state)


def test_schedule_orders_each_row_in_time():
    from statetap.kernels._schedule import time_order

    positions = torch.tensor([[7, -1, 0, 3], [-1, -1, 2, 9]])
    times, slots = time_order(positions, length=10)
    assert times.dtype == slots.dtype == torch.int32
    assert times.tolist() == [[0, 3, 7, 10], [2, 9, 10, 10]]
    for row in range(2):  # each scheduled time points back at the slot that asked for it
        for time, slot in zip(times[row].tolist(), slots[row].tolist()):
            assert time == (10 if positions[row, slot] < 0 else positions[row, slot])
