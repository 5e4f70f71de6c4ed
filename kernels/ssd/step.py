"""Mamba-2 decode step (one token, state ``[B, H, P, N]`` updated in place), Triton and reference.

The Triton path launches the decode kernel shared with Mamba-1
(:func:`statetap.kernels.selective_scan.step.launch_state_update`): ``dt``, ``A`` and ``dt_bias``
per head are broadcast over ``P`` (and ``N``) with stride 0, nothing is copied.
"""

from __future__ import annotations

import math

import torch

from .. import _triton
from .._contract import check_tensor
from ..selective_scan.step import (
    StepOutput,
    check_step_injection,
    emit_buffer,
    launch_state_update,
    step_via_sequence,
)
from .reference import ssd_sequential


def _check_step(state, x, dt, A, B, C, D, z, dt_bias):
    check_tensor("state", state, (None, None, None, None), ("B", "H", "P", "N"))
    batch, heads, head_dim, n = state.shape
    device = state.device
    check_tensor("x", x, (batch, heads, head_dim), ("B", "H", "P"), device=device)
    check_tensor("dt", dt, (batch, heads), ("B", "H"), device=device)
    check_tensor("A", A, (heads,), ("H",), device=device)
    check_tensor("B", B, (batch, None, n), ("B", "G", "N"), device=device)
    check_tensor("C", C, (batch, B.shape[1], n), ("B", "G", "N"), device=device)
    if heads % B.shape[1]:
        raise ValueError(f"B and C have G={B.shape[1]} groups, which must divide H={heads}")
    if D is not None and D.dim() == 2:
        check_tensor("D", D, (heads, head_dim), ("H", "P"), device=device)
    elif D is not None:
        check_tensor("D", D, (heads,), ("H",), device=device)
    if z is not None:
        check_tensor("z", z, (batch, heads, head_dim), ("B", "H", "P"), device=device)
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, (heads,), ("H",), device=device)


def check_dt_limit(dt_limit) -> bool:
    """Validate ``dt_limit``; whether it clamps (anything but the default ``(0, inf)``)."""
    if not (isinstance(dt_limit, tuple) and len(dt_limit) == 2 and dt_limit[0] <= dt_limit[1]):
        raise ValueError(f"dt_limit must be a (low, high) tuple with low <= high, got {dt_limit!r}")
    return tuple(dt_limit) != (0.0, math.inf)


def ssd_step_triton(
    state,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    *,
    inject_value=None,
    inject_mode="add",
    inject_scale=None,
    emit=False,
) -> StepOutput:
    """Mamba-2 decode step in Triton; same arguments and result as :func:`ssd_step`."""
    _check_step(state, x, dt, A, B, C, D, z, dt_bias)
    check_dt_limit(dt_limit)
    value, scale = check_step_injection(inject_value, inject_mode, inject_scale, state)
    _triton.check_launchable(state.device, "ssd_step")
    batch, heads, head_dim, n = state.shape
    f32 = torch.float32

    def per_head(t, rank):  # [.., H] read as [.., H, P(, N)]: stride 0, no view
        return None if t is None else (t, (*t.stride(), *(0,) * rank))

    A, D, dt_bias = (None if t is None else t.to(f32) for t in (A, D, dt_bias))
    out = emit_buffer(emit, state)
    y = _triton.empty((batch, heads, head_dim), x.dtype, x.device)
    launch_state_update(
        (state, state.stride()),
        (batch, heads, head_dim, n, B.shape[1]),
        (x, x.stride()),
        per_head(dt, 1),
        per_head(A, 2),
        (B, B.stride()),
        (C, C.stride()),
        None if D is None else (D, D.stride()) if D.dim() == 2 else per_head(D, 1),
        None if z is None else (z, z.stride()),
        per_head(dt_bias, 1),
        dt_softplus,
        dt_limit,
        value,
        scale,
        inject_mode == "set",
        out,
        y,
    )
    return StepOutput(y, out)


def ssd_step_reference(
    state,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    *,
    inject_value=None,
    inject_mode="add",
    inject_scale=None,
    emit=False,
) -> StepOutput:
    """Mamba-2 decode step: one token, ``state`` updated in place (mamba-ssm's
    ``selective_state_update`` for Mamba-2, plus the state contract).

    It is :func:`ssd_sequential` with ``L = 1`` and ``initial_state=state``: the state is
    updated, ``y`` is read from it, then the injection (if any) changes the state, which is
    written back into ``state`` and, with ``emit``, returned.

    Args:
        state: ``[B, H, P, N]`` (float32; float16/bfloat16 are rounded on every write), in place.
        x: ``[B, H, P]``; dt: ``[B, H]``; A: ``[H]``; B, C: ``[B, G, N]``.
        D: ``[H]`` or ``[H, P]``; z: ``[B, H, P]``; dt_bias: ``[H]``; dt_softplus: False;
        dt_limit: ``(0, inf)``.
        inject_value: broadcastable to ``[B, H, P, N]``, applied after ``y`` (None: none).
        inject_mode: ``"add"`` (``S += scale * value``) or ``"set"`` (``S = value``).
        inject_scale: float or ``[B]`` (add only; None means 1).
        emit: True returns a float32 copy of the new state; a contiguous float32
            ``[B, H, P, N]`` tensor receives it instead (and is returned).

    Returns:
        ``StepOutput(y [B, H, P] in x.dtype, state [B, H, P, N] float32 or None)``.

    Example:
        >>> state = torch.zeros(2, 4, 3, 8)
        >>> x, dt, A = torch.randn(2, 4, 3), torch.rand(2, 4), -torch.rand(4)
        >>> B, C = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
        >>> out = ssd_step_reference(state, x, dt, A, B, C, inject_value=torch.ones(8), emit=True)
        >>> out.y.shape, torch.equal(out.state, state)
        (torch.Size([2, 4, 3]), True)
    """
    _check_step(state, x, dt, A, B, C, D, z, dt_bias)

    def run(**instrumentation):
        return ssd_sequential(
            x[:, None],
            dt[:, None],
            A,
            B[:, None],
            C[:, None],
            D=D,
            z=None if z is None else z[:, None],
            dt_bias=dt_bias,
            dt_softplus=dt_softplus,
            dt_limit=dt_limit,
            **instrumentation,
        )

    out, emitted = step_via_sequence(state, inject_value, inject_mode, inject_scale, emit, run)
    return StepOutput(out.y[:, 0], emitted)
