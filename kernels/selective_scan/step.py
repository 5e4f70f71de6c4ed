"""Decode step of the Mamba recurrences (one token, state updated in place), Triton and reference.

One kernel serves Mamba-1 and Mamba-2 (as mamba-ssm's ``selective_state_update`` does): the
state is seen as ``[B, H, P, N]`` with per-``(h, p)`` ``dt`` and ``A [H, P, N]`` given by strides
(Mamba-2 broadcasts them over ``P`` and ``N`` with stride 0; Mamba-1's ``D`` channels are
``H = G`` groups of ``P = D / G``).  One program per (block of ``BLOCK_P`` rows, batch row, head)
loads its ``[BLOCK_P, N]`` state tile, updates it, stores ``y`` from the post-update state, then
injects (``HAS_INJECT``: ``S += scale * value`` or ``S = value``), writes the state back and, with
``HAS_EMIT``, a float32 copy of it.  No autotune: the kernel updates its input in place.

:func:`selective_scan_step_reference` defines the Mamba-1 step (the public, dispatched
``selective_scan_step`` is in ``__init__.py``); the SSD step
(``kernels/ssd/step.py``) launches the same kernel through :func:`launch_state_update`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .. import _triton
from .._contract import check_tensor
from .._triton import softplus
from .reference import selective_scan


class StepOutput(NamedTuple):
    """What a decode step returns.

    Attributes:
        y: the token's output, in the input dtype (``[B, D]`` or ``[B, H, P]``).
        state: float32 copy of the post-step state (after any injection) when ``emit`` was
            asked for, else None.  The state argument itself is updated in place either way.
    """

    y: torch.Tensor
    state: torch.Tensor | None


@triton.jit
def _state_update_kernel(
    state_ptr,  # [B, H, P, N], read and written in place
    s_b,
    s_h,
    s_p,
    s_n,
    x_ptr,  # [B, H, P]
    x_b,
    x_h,
    x_p,
    dt_ptr,  # [B, H, P]
    dt_b,
    dt_h,
    dt_p,
    A_ptr,  # [H, P, N]
    a_h,
    a_p,
    a_n,
    B_ptr,  # [B, G, N]
    b_b,
    b_g,
    b_n,
    C_ptr,  # [B, G, N]
    c_b,
    c_g,
    c_n,
    D_ptr,  # [H, P]
    d_h,
    d_p,
    bias_ptr,  # [H, P]
    bias_h,
    bias_p,
    z_ptr,  # [B, H, P]
    z_b,
    z_h,
    z_p,
    y_ptr,  # [B, H, P] contiguous
    emit_ptr,  # [B, H, P, N] fp32 contiguous
    inj_v_ptr,  # [B, H, P, N] fp32, strided
    v_b,
    v_h,
    v_p,
    v_n,
    inj_scale_ptr,  # [B] fp32
    sc_b,
    H,
    P,
    N,
    heads_per_group,
    dt_low,
    dt_high,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask = mask_p[:, None] & (offs_n < N)[None, :]

    x = tl.load(x_ptr + b * x_b + h * x_h + offs_p * x_p, mask=mask_p, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * dt_b + h * dt_h + offs_p * dt_p, mask=mask_p, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h * bias_h + offs_p * bias_p, mask=mask_p, other=0.0)
    if SOFTPLUS:
        dt = softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_low), dt_high)
    a_off = h * a_h + offs_p[:, None] * a_p + offs_n[None, :] * a_n
    A = tl.load(A_ptr + a_off, mask=mask, other=0.0)
    Bv = tl.load(B_ptr + b * b_b + g * b_g + offs_n * b_n, mask=offs_n < N, other=0.0)
    Cv = tl.load(C_ptr + b * c_b + g * c_g + offs_n * c_n, mask=offs_n < N, other=0.0)
    s_off = b * s_b + h * s_h + offs_p[:, None] * s_p + offs_n[None, :] * s_n
    state = tl.load(state_ptr + s_off, mask=mask, other=0.0).to(tl.float32)

    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * Bv.to(tl.float32)[None, :]
    y = tl.sum(state * Cv.to(tl.float32)[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + h * d_h + offs_p * d_p, mask=mask_p, other=0.0) * x
    if HAS_Z:
        z = tl.load(z_ptr + b * z_b + h * z_h + offs_p * z_p, mask=mask_p, other=0.0)
        z = z.to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(y_ptr + (b * H + h) * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)

    if HAS_INJECT:
        v_off = b * v_b + h * v_h + offs_p[:, None] * v_p + offs_n[None, :] * v_n
        value = tl.load(inj_v_ptr + v_off, mask=mask, other=0.0)
        if INJECT_SET:
            state = value
        elif HAS_SCALE:
            state += tl.load(inj_scale_ptr + b * sc_b) * value
        else:
            state += value
    kept = state.to(state_ptr.dtype.element_ty)
    tl.store(state_ptr + s_off, kept, mask=mask)
    if HAS_EMIT:
        e_off = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
        tl.store(emit_ptr + e_off, kept.to(tl.float32), mask=mask)


@functools.cache  # a pure function of ints, called on every launch
def block_sizes(
    head_dim: int, state_size: int, interpreter: bool = _triton.INTERPRETING
) -> tuple[int, int, int]:
    """``(BLOCK_P, BLOCK_N, num_warps)``: about 4096 state elements per program (32 per thread,
    as 16-byte loads and stores along ``N``) on a GPU, the whole head under the interpreter.
    Each program's fixed work (its row's ``x``, ``dt``, ``B``, ``C``, ``D``, ``z``, softplus,
    addresses) is then spread over 32 elements a thread: 1024 left the SSD step issue-bound at
    1.7x its bytes at HBM bandwidth (compiled model, B 64), 4096 brings it to 1.08x."""
    block_n = _triton.next_power_of_2(state_size)
    per_program = 1 << 16 if interpreter else 4096
    block_p = max(1, min(_triton.next_power_of_2(head_dim), per_program // block_n))
    return block_p, block_n, 4


def check_step_injection(inject_value, inject_mode, inject_scale, state: torch.Tensor):
    """Validate a step's injection: ``inject_value`` broadcastable to the state ``[B, *S]``,
    ``inject_mode`` "add"/"set", ``inject_scale`` a float or ``[B]`` (add only).

    Returns ``(value, scale)`` as float32 views ``[B, *S]`` and ``[B]`` (scale None if absent).
    """
    if inject_mode not in ("add", "set"):
        raise ValueError(f"inject_mode must be 'add' or 'set', got {inject_mode!r}")
    if inject_value is None:
        if inject_scale is not None:
            raise ValueError("inject_scale was given without inject_value")
        return None, None
    batch = state.shape[0]
    if not isinstance(inject_value, torch.Tensor) or not inject_value.is_floating_point():
        raise TypeError(
            f"inject_value must be a floating-point tensor broadcastable to the state "
            f"{list(state.shape)}, got {getattr(inject_value, 'dtype', type(inject_value))}"
        )
    try:
        value = torch.broadcast_to(inject_value, state.shape).to(torch.float32)
    except RuntimeError:
        raise ValueError(
            f"inject_value of shape {list(inject_value.shape)} is not broadcastable to the state "
            f"{list(state.shape)}"
        ) from None
    if inject_scale is None:
        return value, None
    if inject_mode == "set":
        raise ValueError("inject_scale applies to inject_mode='add' only")
    if isinstance(inject_scale, (int, float)):
        # a fill on the device, not a copy from the host: capturable in a CUDA graph
        inject_scale = torch.full((), float(inject_scale), device=state.device)
    if not isinstance(inject_scale, torch.Tensor) or inject_scale.dim() > 1:
        raise TypeError(f"inject_scale must be a float or a [B={batch}] tensor")
    try:
        scale = torch.broadcast_to(inject_scale, (batch,)).to(torch.float32)
    except RuntimeError:
        raise ValueError(
            f"inject_scale must be a float or a [B={batch}] tensor, got {list(inject_scale.shape)}"
        ) from None
    return value, scale


def emit_buffer(emit, state: torch.Tensor) -> torch.Tensor | None:
    """The float32 ``[B, *S]`` buffer the emitted state goes to (``emit`` True, or a buffer)."""
    if emit is False or emit is None:
        return None
    if emit is True:
        return _triton.empty(tuple(state.shape), torch.float32, state.device)
    check_tensor("emit", emit, tuple(state.shape), ("B", *("S",) * (state.dim() - 1)))
    if emit.dtype != torch.float32 or not emit.is_contiguous() or emit.device != state.device:
        raise ValueError("emit buffer must be a contiguous float32 tensor on the state's device")
    return emit


def step_via_sequence(state, inject_value, inject_mode, inject_scale, emit, run):
    """A reference decode step through a sequence op: ``run(**instrumentation)`` runs the op on
    the one token with ``initial_state=state`` and the step's injection at ``t = 0``.  Writes the
    new state into ``state`` (and the emit buffer); returns ``(ScanOutput, emitted or None)``."""
    value, scale = check_step_injection(inject_value, inject_mode, inject_scale, state)
    inject = {}
    if value is not None:
        inject = dict(
            inject_at=torch.zeros(state.shape[0], 1, dtype=torch.long, device=state.device),
            inject_value=value[:, None],
            inject_mode=inject_mode,
            inject_scale=None if scale is None else scale[:, None],
        )
    out = run(initial_state=state, output_final_state=True, **inject)
    state.copy_(out.final_state)
    target = emit_buffer(emit, state)
    if target is not None:
        target.copy_(state)
    return out, target


#: a tensor and the strides the step kernel reads it with (any view, without building it)
Strided = tuple[torch.Tensor, tuple[int, ...]]


def split_strides(t: torch.Tensor, axis: int, rows: int) -> tuple[int, ...]:
    """Strides of ``t`` with ``axis`` (size ``G * rows``) read as ``[G, rows]``."""
    strides = t.stride()
    return (*strides[:axis], strides[axis] * rows, strides[axis], *strides[axis + 1 :])


def launch_state_update(
    state4: Strided,
    dims: tuple[int, int, int, int, int],
    x3: Strided,
    dt3: Strided,
    A3: Strided,
    B3: Strided,
    C3: Strided,
    D2: Strided | None,
    z3: Strided | None,
    bias2: Strided | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    value4: torch.Tensor | None,
    scale1: torch.Tensor | None,
    set_: bool,
    emit: torch.Tensor | None,
    y: torch.Tensor,
) -> None:
    """Launch the step kernel on strided operands (each a tensor and the strides of its view, so
    no view is built): state ``[B, H, P, N]`` (``dims`` = ``(B, H, P, N, G)``),
    ``x/dt/z [B, H, P]``, ``A [H, P, N]``, ``B/C [B, G, N]``, ``D/bias [H, P]``; value
    ``[B, H, P, N]`` (a tensor of that shape, any strides), scale ``[B]``; ``emit`` and ``y``
    contiguous buffers of ``B * H * P * N`` and ``B * H * P`` elements (written)."""
    batch, heads, head_dim, n, groups = dims
    spare = _triton.dummy(y.device)
    block_p, block_n, warps = block_sizes(head_dim, n)
    limited = tuple(dt_limit) != (0.0, math.inf)

    def operand(pair, rank):
        return (spare, *(0,) * rank) if pair is None else (pair[0], *pair[1])

    grid = (_triton.cdiv(head_dim, block_p), batch, heads)
    _state_update_kernel[grid](
        *operand(state4, 4),
        *operand(x3, 3),
        *operand(dt3, 3),
        *operand(A3, 3),
        *operand(B3, 3),
        *operand(C3, 3),
        *operand(D2, 2),
        *operand(bias2, 2),
        *operand(z3, 3),
        y,
        spare if emit is None else emit,
        *operand(None if value4 is None else (value4, value4.stride()), 4),
        *operand(None if scale1 is None else (scale1, scale1.stride()), 1),
        heads,
        head_dim,
        n,
        heads // groups,
        float(dt_limit[0]),
        float(min(dt_limit[1], 3.0e38)),
        HAS_D=D2 is not None,
        HAS_Z=z3 is not None,
        HAS_BIAS=bias2 is not None,
        SOFTPLUS=bool(dt_softplus),
        HAS_LIMIT=limited,
        HAS_EMIT=emit is not None,
        HAS_INJECT=value4 is not None,
        INJECT_SET=value4 is not None and set_,
        HAS_SCALE=scale1 is not None,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        num_warps=warps,
        num_stages=1,
    )


def _check_step(state, u, delta, A, B, C, D, z, delta_bias):
    check_tensor("state", state, (None, None, None), ("B", "D", "N"))
    batch, dim, n = state.shape
    device = state.device
    check_tensor("u", u, (batch, dim), ("B", "D"), device=device)
    check_tensor("delta", delta, (batch, dim), ("B", "D"), device=device)
    check_tensor("A", A, (dim, n), ("D", "N"), device=device)
    for name, value in (("B", B), ("C", C)):
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            check_tensor(name, value, (batch, n), ("B", "N"), device=device)
        else:
            check_tensor(name, value, (batch, None, n), ("B", "G", "N"), device=device)
            if dim % value.shape[1]:
                raise ValueError(f"{name} has G={value.shape[1]} groups, which must divide D={dim}")
    for name, value, shape in (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,))):
        if value is not None:
            check_tensor(name, value, shape, ("D",), device=device)
    if z is not None:
        check_tensor("z", z, (batch, dim), ("B", "D"), device=device)


def selective_scan_step_triton(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    inject_value: torch.Tensor | None = None,
    inject_mode: str = "add",
    inject_scale: torch.Tensor | float | None = None,
    emit: bool | torch.Tensor = False,
) -> StepOutput:
    """Mamba-1 decode step in Triton; same arguments and result as :func:`selective_scan_step`."""
    _check_step(state, u, delta, A, B, C, D, z, delta_bias)
    value, scale = check_step_injection(inject_value, inject_mode, inject_scale, state)
    _triton.check_launchable(state.device, "selective_scan_step")
    batch, dim, n = state.shape
    groups = math.lcm(_groups(B), _groups(C))
    heads, rows = groups, dim // groups  # channel d = head d // rows, row d % rows
    f32 = torch.float32

    def split(t, axis):  # [.., D, ..] read as [.., G, D/G, ..]: strides only, no view
        return None if t is None else (t, split_strides(t, axis, rows))

    A, D, delta_bias = (None if t is None else t.to(f32) for t in (A, D, delta_bias))
    out = emit_buffer(emit, state)
    y = _triton.empty((batch, dim), u.dtype, u.device)
    launch_state_update(
        split(state, 1),
        (batch, heads, rows, n, groups),
        split(u, 1),
        split(delta, 1),
        split(A, 0),
        _grouped(B, groups),
        _grouped(C, groups),
        split(D, 0),
        split(z, 1),
        split(delta_bias, 0),
        delta_softplus,
        (0.0, math.inf),
        None if value is None else value.view(batch, heads, rows, n),
        scale,
        inject_mode == "set",
        out,
        y,
    )
    return StepOutput(y, out)


def _groups(t: torch.Tensor) -> int:
    """``G`` of ``B``/``C`` given as ``[B, N]`` (one group) or ``[B, G, N]``."""
    return 1 if t.dim() == 2 else t.shape[1]


def _grouped(t: torch.Tensor, groups: int) -> Strided:
    """``B``/``C`` (``[B, N]`` or ``[B, G', N]``) as ``[B, groups, N]`` operands: a ``[B, N]``
    one reads its one group with stride 0 over heads; other group counts are repeated."""
    if t.dim() == 2:
        return t, (t.stride(0), 0, t.stride(1))
    if t.shape[1] != groups:
        t = t.repeat_interleave(groups // t.shape[1], 1)
    return t, t.stride()


def selective_scan_step_reference(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    inject_value: torch.Tensor | None = None,
    inject_mode: str = "add",
    inject_scale: torch.Tensor | float | None = None,
    emit: bool | torch.Tensor = False,
) -> StepOutput:
    """Mamba-1 decode step: one token, ``state`` updated in place (mamba-ssm's
    ``selective_state_update`` plus the state contract).

    It is the sequence op :func:`selective_scan` with ``L = 1`` and ``initial_state=state``: the
    state is updated, ``y`` is read from the updated state, then the injection (if any) changes
    the state, which is written back into ``state`` and, with ``emit``, returned.

    Args:
        state: ``[B, D, N]`` (float32; float16/bfloat16 are rounded on every write), in place.
        u, delta: ``[B, D]``; A: ``[D, N]``; B, C: ``[B, N]`` or grouped ``[B, G, N]``.
        D: ``[D]``; z: ``[B, D]``; delta_bias: ``[D]``; delta_softplus: False.
        inject_value: broadcastable to ``[B, D, N]``, applied after ``y`` (None: no injection).
        inject_mode: ``"add"`` (``S += scale * value``) or ``"set"`` (``S = value``).
        inject_scale: float or ``[B]`` (add only; None means 1).
        emit: True returns a float32 copy of the new state; a contiguous float32 ``[B, D, N]``
            tensor receives it instead (and is returned).

    Returns:
        ``StepOutput(y [B, D] in u.dtype, state [B, D, N] float32 or None)``.

    Example:
        >>> state = torch.zeros(2, 8, 4)
        >>> u, delta, A = torch.randn(2, 8), torch.rand(2, 8), -torch.rand(8, 4)
        >>> B, C = torch.randn(2, 4), torch.randn(2, 4)
        >>> out = selective_scan_step_reference(state, u, delta, A, B, C, emit=True)
        >>> out.y.shape, torch.equal(out.state, state)
        (torch.Size([2, 8]), True)
    """
    _check_step(state, u, delta, A, B, C, D, z, delta_bias)

    def run(**instrumentation):
        return selective_scan(
            u[..., None],
            delta[..., None],
            A,
            B[..., None],
            C[..., None],
            D,
            None if z is None else z[..., None],
            delta_bias,
            delta_softplus,
            **instrumentation,
        )

    out, emitted = step_via_sequence(state, inject_value, inject_mode, inject_scale, emit, run)
    return StepOutput(out.y[..., 0], emitted)
