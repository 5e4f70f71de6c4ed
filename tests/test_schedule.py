"""``Schedule`` (positions checked once, reused by every call) and ``states_out`` (a caller's
buffer for the emitted states), against the same calls with plain position tensors."""

from __future__ import annotations

import pytest
import torch

from statetap.kernels import Schedule
from statetap.kernels.examples import CASES, OP_FORMS

B, L = 3, 11


def test_a_schedule_orders_each_row_and_ends_it_with_a_sentinel():
    positions = torch.tensor([[7, -1, 0], [-1, 9, 2], [4, 5, 6]])
    schedule = Schedule.build(positions, batch=B, length=L, device="cpu", name="emit_at")
    assert schedule.count == 3 and schedule.distinct == (0, 2, 4, 5, 6, 7, 9)
    assert schedule.times.tolist() == [[0, 7, L], [2, 9, L], [4, 5, 6]]
    assert schedule.slots.tolist() == [[2, 0, 1], [2, 1, 0], [0, 1, 2]]
    assert schedule.kernel_times.tolist() == [[0, 7, L, L], [2, 9, L, L], [4, 5, 6, L]]
    assert schedule.kernel_slots[:, :3].tolist() == schedule.slots.tolist()
    assert schedule.unused.tolist() == [[False, True, False], [True, False, False]] + [[False] * 3]
    full = Schedule.build(torch.tensor([3, 1]), batch=B, length=L, device="cpu")
    assert full.unused is None and full.positions.tolist() == [[3, 1]] * B


def test_a_schedule_refuses_bad_positions_and_a_call_it_was_not_built_for():
    with pytest.raises(ValueError, match=r"emit_at\[1, 0\] = 11 is out of range"):
        Schedule.build(
            torch.tensor([[0], [L], [1]]), batch=B, length=L, device="cpu", name="emit_at"
        )
    with pytest.raises(ValueError, match="row 0 names position 2 twice"):
        Schedule.build(torch.tensor([2, 2]), batch=B, length=L, device="cpu", name="inject_at")
    with pytest.raises(TypeError, match="integer torch.Tensor .* or a statetap.kernels.Schedule"):
        Schedule.build([1, 2], batch=B, length=L, device="cpu", name="emit_at")
    schedule = Schedule.build(torch.tensor([1]), batch=B, length=L, device="cpu")
    inputs = CASES["wkv6"].make(B, L + 1)
    with pytest.raises(ValueError, match="emit_at is a Schedule built for B=3, L=11 .* L=12"):
        CASES["wkv6"].call("sequential", inputs, emit_at=schedule)


@pytest.mark.parametrize("op,form", OP_FORMS + [(op, "public") for op in CASES])
def test_a_reused_schedule_and_buffer_give_what_plain_positions_give(op, form):
    """Two calls sharing one Schedule and one ``states_out`` match calls given the positions as
    tensors in every used slot; unused slots keep what the buffer held."""
    case = CASES[op]
    emit = torch.tensor([[0, 5, -1], [L - 1, -1, 3], [4, 2, 1]])
    inject = torch.tensor([[2], [-1], [L - 1]])
    shared = dict(
        emit_at=Schedule.build(emit, batch=B, length=L, device="cpu", name="emit_at"),
        inject_at=Schedule.build(inject, batch=B, length=L, device="cpu", name="inject_at"),
    )
    buffer = None
    for _ in range(2):
        inputs = case.make(B, L)
        plain = case.call(form, inputs, emit_at=emit, inject_at=inject, inject_value=torch.ones(1))
        if buffer is None:
            buffer = torch.full_like(plain.states, float("nan"))
        out = case.call(form, inputs, **shared, inject_value=torch.ones(1), states_out=buffer)
        assert out.states is buffer and torch.equal(out.y, plain.y)
        assert torch.equal(out.states[emit >= 0], plain.states[emit >= 0])
        assert torch.isnan(buffer[emit < 0]).all() and not plain.states[emit < 0].any()


def test_states_out_must_fit_the_emission():
    case = CASES["wkv6"]
    inputs = case.make(B, L)
    emit = torch.tensor([1, 4])
    good = case.call("sequential", inputs, emit_at=emit).states
    with pytest.raises(ValueError, match=r"states_out must have shape \[B=3, P=2"):
        case.call("sequential", inputs, emit_at=emit, states_out=good[:, :1].clone())
    with pytest.raises(TypeError, match="states_out must be a contiguous torch.float32"):
        case.call("sequential", inputs, emit_at=emit, states_out=good.double())
    with pytest.raises(TypeError, match="non-contiguous"):
        case.call(
            "sequential",
            inputs,
            emit_at=emit,
            states_out=good.transpose(-1, -2).contiguous().transpose(-1, -2),
        )
    with pytest.raises(ValueError, match="states_out was given without emit_at"):
        case.call("sequential", inputs, states_out=good)
