"""Bad input raises ValueError/TypeError naming the argument and what was expected, per op and
backend."""

from __future__ import annotations

import re

import pytest
import torch

from statetap.kernels.examples import CASES, OP_FORMS

# the pure-torch forms and the public op, which on CPU tensors runs the cpu backend where built
FORMS = OP_FORMS + [(op, "public") for op in CASES]
each_op_form = pytest.mark.parametrize("op,form", FORMS, ids=[f"{o}-{f}" for o, f in FORMS])
L = 6


def _setup(op: str, form: str):
    case = CASES[op]
    inputs = case.make(2, L, torch.float32)
    state_shape = case.call(form, inputs, output_final_state=True).final_state.shape[1:]
    second = list(case.time_axes)[1]  # a time-varying input other than the first one
    return case, inputs, tuple(state_shape), second


def _raises(error, *patterns):
    """pytest.raises that also checks each pattern appears in the message."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{re.escape(p)})" for p in patterns))


@each_op_form
def test_wrong_shape_names_the_argument_and_expected_shape(op, form):
    case, inputs, _, name = _setup(op, form)
    bad = dict(inputs, **{name: inputs[name].narrow(-1, 0, inputs[name].shape[-1] - 1)})
    with _raises(ValueError, name, "must have shape [B"):
        case.call(form, bad)


@each_op_form
def test_wrong_dtype_or_type(op, form):
    case, inputs, _, name = _setup(op, form)
    with _raises(TypeError, name, "floating-point", "torch.int64"):
        case.call(form, dict(inputs, **{name: inputs[name].long()}))
    with _raises(TypeError, name, "torch.Tensor", "list"):
        case.call(form, dict(inputs, **{name: inputs[name].tolist()}))


@each_op_form
def test_wrong_device(op, form):
    case, inputs, _, name = _setup(op, form)
    with _raises(ValueError, name, "must be on cpu", "meta"):
        case.call(form, dict(inputs, **{name: inputs[name].to("meta")}))
    with _raises(ValueError, "emit_at", "must be on cpu"):
        case.call(form, inputs, emit_at=torch.tensor([1], device="meta"))


@each_op_form
def test_positions_out_of_range_duplicated_or_mistyped(op, form):
    case, inputs, _, _ = _setup(op, form)
    with _raises(ValueError, "emit_at[0, 1] = 6", f"[0, L={L})"):
        case.call(form, inputs, emit_at=torch.tensor([2, L]))
    with _raises(ValueError, "emit_at[1, 0] = -2", "-1 for an unused slot"):
        case.call(form, inputs, emit_at=torch.tensor([[0], [-2]]))
    with _raises(ValueError, "emit_at row 1", "position 3 twice"):
        case.call(form, inputs, emit_at=torch.tensor([[3, 1], [3, 3]]))
    with _raises(TypeError, "emit_at", "integer tensor", "torch.float32"):
        case.call(form, inputs, emit_at=torch.tensor([1.0]))
    with _raises(ValueError, "emit_at", "[B=2, P] or [P]", "[3, 1]"):
        case.call(form, inputs, emit_at=torch.zeros(3, 1, dtype=torch.long))
    with _raises(ValueError, "inject_at", f"[0, L={L})"):
        case.call(form, inputs, inject_at=torch.tensor([L + 3]), inject_value=torch.zeros(1))


@each_op_form
def test_bad_injection_arguments(op, form):
    case, inputs, state_shape, _ = _setup(op, form)
    at = torch.tensor([1])
    value = torch.zeros(2, 1, *state_shape)
    wrong = torch.zeros(2, 1, *state_shape[:-1], state_shape[-1] + 1)
    with _raises(ValueError, "inject_value", "not broadcastable", "[B, Q, *S]"):
        case.call(form, inputs, inject_at=at, inject_value=wrong)
    with _raises(ValueError, "inject_at needs inject_value"):
        case.call(form, inputs, inject_at=at)
    with _raises(ValueError, "inject_mode", "('add', 'set')", "'mul'"):
        case.call(form, inputs, inject_at=at, inject_value=value, inject_mode="mul")
    with _raises(ValueError, "inject_scale", "'add' only"):
        case.call(
            form, inputs, inject_at=at, inject_value=value, inject_mode="set", inject_scale=2.0
        )
    with _raises(ValueError, "inject_scale", "[B=2]", "[B, Q]"):
        case.call(form, inputs, inject_at=at, inject_value=value, inject_scale=torch.ones(3))
    with _raises(ValueError, "without inject_at"):
        case.call(form, inputs, inject_value=value)
    with _raises(TypeError, "inject_value", "floating-point"):
        case.call(form, inputs, inject_at=at, inject_value=value.long())


@each_op_form
def test_bad_initial_state(op, form):
    case, inputs, state_shape, _ = _setup(op, form)
    with _raises(ValueError, "initial_state", "must have shape [B=2"):
        case.call(form, inputs, initial_state=torch.zeros(1, *state_shape))
    with _raises(TypeError, "output_final_state", "bool"):
        case.call(form, inputs, output_final_state=1)
