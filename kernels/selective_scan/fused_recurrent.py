"""Mamba-1 selective scan forward in Triton, with fused state emission and injection.

Algorithm: **a thread per channel, walking coalesced time tiles**.  One program of one warp owns
``BLOCK_D = 32`` channels of one batch row; each thread keeps its channel's whole fp32 state
``[N]`` in registers, so the recurrence

    ``S_t = exp2(dt_t * A * log2 e) * S_{t-1} + dt_t * u_t * B_t``,   ``y_t = S_t . C_t``

is ``N`` independent in-thread FMA chains and ``y_t`` an in-thread sum: no shuffle, no barrier.
The sequence is read in tiles of ``BLOCK_T`` tokens (16 bytes of each ``[B, D, L]`` row: one
vector load per thread for ``u``, ``delta``, ``z`` and one vector store for ``y``); the
per-token elementwise work (bias, softplus, ``dt * u``, the ``D`` skip, ``silu(z)``) is done on
the whole tile, and the ``BLOCK_T`` tokens of the tile are unrolled, each token's column picked
out of the thread's registers at compile time (:func:`_column`).  ``B_t`` and ``C_t`` are read
by every thread of the program; a small first kernel (:func:`_token_major_kernel`) lays them out
token-major in fp32 (``[B, G, L, BLOCK_N]``), so each token's ``[N]`` is a few vector loads that
the whole warp shares.  The last, partial tile runs the same code with masks.

Instrumentation is compile-time and per token, exactly as the contract orders it: ``y_t`` is
computed from ``S_t``, then with ``HAS_INJECT`` an injection at ``t`` adds ``scale * value``
(or writes ``value``, ``INJECT_SET``), then with ``HAS_EMIT`` an emission at ``t`` stores the
(injected) state into ``states[b, slot]``.  Each is one compare of ``t`` with the row's next
scheduled time (:class:`~.._schedule.Schedule`, a cursor per row) and a branch the whole warp
takes together.  Without them the kernel is the plain scan.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .. import _triton
from .._contract import ScanOutput, float64_runs
from .._triton import (
    LOG2E,
    KernelInstrumentation,
    emit_tile,
    inject_tile,
    open_schedules,
    softplus,
)
from .reference import selective_scan as selective_scan_reference
from .reference import validate

INTERPRETING = tl.constexpr(_triton.INTERPRETING)


@triton.jit
def _silu(z):
    """``z * sigmoid(z)``, with a fast division."""
    return tl.fdiv(z, 1.0 + tl.exp2(-z * LOG2E))


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _column(tile, offs, j: tl.constexpr):
    """Row ``j`` of a ``[R, BLOCK_D]`` (or ``[R, 1]``) fp32 tile whose columns each live in one
    thread: ``[BLOCK_D]``.  The select is known per register at compile time and OR with zero
    folds, so this is a register rename, not arithmetic."""
    bits = tl.where(offs[:, None] == j, tile.to(tl.int32, bitcast=True), 0)
    return tl.reduce(bits, 0, _bit_or).to(tl.float32, bitcast=True)


@triton.jit
def _dot_over_n(state, C):
    """``sum_n state[n, :] * C[n, :]`` as one in-thread chain of FMAs, ``[BLOCK_D]``
    (``tl.sum`` adds the products as a tree: a multiply and an add for half of them)."""
    if INTERPRETING:  # one operation, not BLOCK_N: the interpreter pays per operation
        return tl.sum(state * C, axis=0)
    BLOCK_N: tl.constexpr = state.shape[0]
    offs_n = tl.arange(0, BLOCK_N)
    C = tl.broadcast_to(C, state.shape)
    y = _column(state, offs_n, 0) * _column(C, offs_n, 0)
    for n in tl.static_range(1, BLOCK_N):
        y += _column(state, offs_n, n) * _column(C, offs_n, n)
    return y


@triton.jit
def _token_major_kernel(
    src_ptr,  # [B, G, N, L], any strides, float
    dst_ptr,  # [B, G, L, BLOCK_N] fp32 contiguous
    s_b,
    s_g,
    s_n,
    s_l,
    L,
    N,
    BLOCK_L: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``dst[b, g, t, n] = src[b, g, n, t]`` in fp32, zero for ``n >= N``."""
    pid_l = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    mask_l = offs_l < L
    src = src_ptr + b * s_b + g * s_g + offs_n[None, :] * s_n + offs_l[:, None] * s_l
    tile = tl.load(src, mask=mask_l[:, None] & (offs_n < N)[None, :], other=0.0)
    row = (b * tl.num_programs(1) + g) * L + offs_l  # [BLOCK_L] token rows of dst
    dst = dst_ptr + row[:, None] * BLOCK_N + offs_n[None, :]
    tl.store(dst, tile.to(tl.float32), mask=mask_l[:, None])


@triton.jit
def _token_input(
    ptr,  # VARYING: token 0 of this program's group(s) in the token-major [B, G, L, BLOCK_N]
    #       fp32 (a pointer, or [1, BLOCK_D] of them); else the loaded [D, N] values
    t,
    VARYING: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``B_t`` or ``C_t`` (``t < L``) for this program's channels, fp32 (the shared ``[D, N]``
    values as they were loaded, when not ``VARYING``).  The token-major rows are ``BLOCK_N``
    wide and zero past ``N``: no mask."""
    value = ptr
    if VARYING:
        value = tl.load(ptr + t * BLOCK_N + tl.arange(0, BLOCK_N)[:, None])
    return value


@triton.jit
def _tile_inputs(
    t0, offs_t, rows, mask_d, channel, io, L,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """Tokens ``t0 .. t0 + BLOCK_T - 1`` of this program's rows: their ``[BLOCK_T, BLOCK_D]``
    offsets and mask, ``u``, and ``dt = softplus(delta + bias)`` (zero past ``L``, so a token
    there leaves the state as it is: ``exp2(0) = 1``, no input), fp32."""
    u_ptr, delta_ptr, z_ptr, y_ptr = io
    Dv, bias = channel
    t = t0 + offs_t
    tile = rows[None, :] + t[:, None]
    if MASKED:
        tile_mask = mask_d[None, :] & (t < L)[:, None]
    else:
        tile_mask = mask_d[None, :]
    u = tl.load(u_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += bias[None, :]
    if SOFTPLUS:
        dt = softplus(dt)
    if MASKED:
        dt = tl.where(tile_mask, dt, 0.0)
    return tile, tile_mask, u, dt


@triton.jit
def _tile_output(y, u, tile, tile_mask, channel, io, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """Store ``(y + D u) * silu(z)`` for the tile."""
    u_ptr, delta_ptr, z_ptr, y_ptr = io
    Dv, bias = channel
    if HAS_D:
        y += Dv[None, :] * u
    if HAS_Z:
        z = tl.load(z_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        y *= _silu(z)
    tl.store(y_ptr + tile, y.to(y_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def _token(
    state, A, dt, dtu, t, bc, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr
):  # fmt: skip
    """One token: ``S_t = exp2(dt A log2 e) S_{t-1} + dt u B_t`` and ``y_t = S_t . C_t``
    (``[BLOCK_D]``, before the ``D`` skip and the gate); ``dt``, ``dtu``: ``[BLOCK_D]``."""
    B_ptr, C_ptr = bc
    B_t = _token_input(B_ptr, t, B_VARYING, A.shape[0])
    C_t = _token_input(C_ptr, t, C_VARYING, A.shape[0])
    state = tl.exp2(A * dt[None, :]) * state + B_t * dtu[None, :]
    return state, _dot_over_n(state, C_t)


@triton.jit
def _plain_tile(
    t0, state, A, channel, io, rows, mask_d, bc, L,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """A whole tile with no event in it: its tokens unrolled, each one's ``dt`` and ``dt u``
    read out of the thread's registers at compile time.  Returns the state after it."""
    offs_t = tl.arange(0, BLOCK_T)
    tile, tile_mask, u, dt = _tile_inputs(
        t0, offs_t, rows, mask_d, channel, io, L, HAS_BIAS, SOFTPLUS, False
    )
    dtu = dt * u
    y = tl.zeros_like(dt)
    for j in tl.static_range(BLOCK_T):
        dt_j = _column(dt, offs_t, j)
        dtu_j = _column(dtu, offs_t, j)
        state, y_j = _token(state, A, dt_j, dtu_j, t0 + j, bc, B_VARYING, C_VARYING)
        y = tl.where(offs_t[:, None] == j, y_j[None, :], y)
    _tile_output(y, u, tile, tile_mask, channel, io, HAS_D, HAS_Z)
    return state


@triton.jit
def _event_tokens(
    t_start, t_end, state, A, channel, io, rows, mask_d, bc, L, events, cursors,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
):  # fmt: skip
    """Tokens ``t_start .. t_end - 1`` one by one, reading and writing memory per token (a
    tile that holds an emission or injection, and the tokens past the last whole tile: rare,
    so they hold no tile in registers).  After ``y_t``, as the contract orders it: the
    injection at ``t`` (if any: ``S += scale value``, or ``S = value``), then the emission at
    ``t`` (if any: the injected state into its slot).  Returns the state and the cursors."""
    emit, inject, slot_stride, dn, v_off, mask = events
    e_cur, e_next, i_cur, i_next = cursors
    token = tl.arange(0, 1)
    for t in range(t_start, t_end):
        offsets, token_mask, u, dt = _tile_inputs(
            t, token, rows, mask_d, channel, io, L, HAS_BIAS, SOFTPLUS, False
        )  # [1, BLOCK_D]
        dt_t = tl.sum(dt, axis=0)
        dtu_t = tl.sum(dt * u, axis=0)
        state, y_t = _token(state, A, dt_t, dtu_t, t, bc, B_VARYING, C_VARYING)
        _tile_output(y_t[None, :], u, offsets, token_mask, channel, io, HAS_D, HAS_Z)
        if HAS_INJECT:
            state, i_cur, i_next = inject_tile(state, t, i_cur, i_next, inject, v_off, mask)
        if HAS_EMIT:
            e_cur, e_next = emit_tile(state, t, e_cur, e_next, emit, slot_stride, dn, mask)
    return state, (e_cur, e_next, i_cur, i_next)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr,  # [B, D, L]
    delta_ptr,  # [B, D, L]
    A_ptr,  # [D, N] fp32
    Bt_ptr,  # token-major [B, G, L, BLOCK_N] fp32 (B_VARYING) or [D, N] fp32
    Ct_ptr,  # token-major [B, G, L, BLOCK_N] fp32 (C_VARYING) or [D, N] fp32
    D_ptr,  # [D] fp32
    bias_ptr,  # [D] fp32
    z_ptr,  # [B, D, L]
    y_ptr,  # [B, D, L]
    h0_ptr,  # [B, D, N] fp32
    hT_ptr,  # [B, D, N] fp32
    emit_t_ptr,  # [B, P + 1] int32, ascending, sentinel L
    emit_s_ptr,  # [B, P + 1] int32
    states_ptr,  # [B, P, D, N] fp32
    inj_t_ptr,  # [B, Q + 1] int32, ascending, sentinel L
    inj_s_ptr,  # [B, Q + 1] int32
    inj_v_ptr,  # [B, Q, D, N] fp32, strided
    inj_scale_ptr,  # [B, Q] fp32
    sv_b,
    sv_q,
    sv_d,
    sv_n,
    L,
    dim,
    N,
    group_size,  # channels per group, D / G
    n_groups,
    P,
    Q,
    B_VARYING: tl.constexpr,
    C_VARYING: tl.constexpr,
    ONE_GROUP: tl.constexpr,  # the block's channels all read the same group of B and C
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,  # tokens per time tile: 16 bytes of u
    BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr,  # N == BLOCK_N
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    if EVEN_N:  # a constant-true mask over n: the [N, BLOCK_D] masks are mask_d alone, one
        # predicate a thread rather than one per state element, live across the scan
        mask_n = offs_n < BLOCK_N
    else:
        mask_n = offs_n < N
    mask = mask_n[:, None] & mask_d[None, :]
    # [BLOCK_N, BLOCK_D] addresses as a pointer per channel plus the constant n (the
    # per-element part folds into the instruction; addresses kept per element, live across the
    # scan, cost ~30 registers)
    n_col = offs_n[:, None]
    dn = offs_d[None, :] * N  # [1, BLOCK_D] offsets of (d, n = 0) in a [D, N] state

    A = tl.load(A_ptr + dn + n_col, mask=mask, other=0.0) * LOG2E
    rows = (b * dim + offs_d) * L  # [BLOCK_D] offsets of (b, d, t = 0)
    if ONE_GROUP:
        g = (pid_d * BLOCK_D) // group_size
        bc_row = (b * n_groups + g) * L * BLOCK_N  # offset of (b, g, t = 0)
    else:  # (channels past D read the last group)
        g = tl.minimum(offs_d, dim - 1) // group_size
        bc_row = ((b * n_groups + g) * L * BLOCK_N)[None, :]  # [1, BLOCK_D]
    Bt = Bt_ptr + bc_row
    Ct = Ct_ptr + bc_row
    if not B_VARYING:
        Bt = tl.load(Bt_ptr + dn + n_col, mask=mask, other=0.0)
    if not C_VARYING:
        Ct = tl.load(Ct_ptr + dn + n_col, mask=mask, other=0.0)
    Dv = offs_d * 0.0
    bias = Dv
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_INITIAL:
        state = tl.load((h0_ptr + (b * dim + offs_d) * N)[None, :] + n_col, mask=mask, other=0.0)
    else:
        state = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    emit = (emit_t_ptr, emit_s_ptr, (states_ptr + (b * P * dim + offs_d) * N)[None, :], HAS_EMIT)
    inject = (
        inj_t_ptr,
        inj_s_ptr,
        (inj_v_ptr + b * sv_b + offs_d * sv_d)[None, :],
        sv_q,
        inj_scale_ptr,
        HAS_INJECT,
        INJECT_SET,
        HAS_SCALE,
    )
    emit, inject, cursors = open_schedules(emit, inject, tl.program_id(1), L, P, Q)  # int32 row
    events = (emit, inject, dim * N, n_col, n_col * sv_n, mask)
    io = (u_ptr, delta_ptr, z_ptr, y_ptr)
    channel = (Dv, bias)

    bc = (Bt, Ct)
    # Whole tiles with no event run unrolled (_plain_tile); the tile of each emission or
    # injection, and the tokens past the last whole tile, run token by token (_event_tokens).
    tiles = tl.cdiv(L, BLOCK_T)
    full = L // BLOCK_T
    start = 0
    while start < tiles:
        e_cur, e_next, i_cur, i_next = cursors
        stop = tl.minimum(tl.minimum(e_next, i_next) // BLOCK_T, full)
        for tile in range(start, stop):
            state = _plain_tile(
                tile * BLOCK_T, state, A, channel, io, rows, mask_d, bc, L,
                B_VARYING, C_VARYING, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_T,
            )  # fmt: skip
        if stop < tiles:
            state, cursors = _event_tokens(
                stop * BLOCK_T, tl.minimum(stop * BLOCK_T + BLOCK_T, L), state, A, channel, io,
                rows, mask_d, bc, L, events, cursors, B_VARYING, C_VARYING, HAS_D, HAS_Z,
                HAS_BIAS, SOFTPLUS, HAS_EMIT, HAS_INJECT,
            )  # fmt: skip
        start = stop + 1

    if STORE_FINAL:
        tl.store((hT_ptr + (b * dim + offs_d) * N)[None, :] + n_col, state, mask=mask)


NUM_STAGES = 1
TOKEN_MAJOR_BLOCK_L = 64


@functools.cache  # a pure function of ints, called on every launch
def block_sizes(
    dim: int, state_size: int, interpreter: bool = _triton.INTERPRETING
) -> tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_N, num_warps)``: a thread per channel holding the whole ``N``, one warp
    of 32 channels per program (at B 8, D 1536: 384 single-warp programs, under a warp per
    SM scheduler); under the interpreter one program for up to 64 channels."""
    block_n = _triton.next_power_of_2(state_size)
    block_d = min(_triton.next_power_of_2(dim), 64) if interpreter else 32
    return block_d, block_n, 1


def time_tile(dtype: torch.dtype) -> int:
    """``BLOCK_T``: tokens per time tile, 16 bytes of a ``[B, D, L]`` row of ``dtype`` (one
    vector load per thread: 8 tokens of bf16/fp16, 4 of fp32)."""
    return 16 // dtype.itemsize


def _token_major(value: torch.Tensor, block_n: int) -> torch.Tensor:
    """Grouped ``[B, G, N, L]`` B or C as token-major fp32 ``[B, G, L, block_n]`` (zero past
    ``N``), as the scan kernel reads it: each token's ``[N]`` contiguous."""
    batch, groups, state_size, length = value.shape
    out = _triton.empty((batch, groups, length, block_n), torch.float32, value.device)
    grid = (_triton.cdiv(length, TOKEN_MAJOR_BLOCK_L), groups, batch)
    _token_major_kernel[grid](
        value,
        out,
        *value.stride(),
        length,
        state_size,
        BLOCK_L=TOKEN_MAJOR_BLOCK_L,
        BLOCK_N=block_n,
        num_warps=4,
    )
    return out


@float64_runs(selective_scan_reference)
def selective_scan_triton(
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
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    emit_at: torch.Tensor | None = None,
    inject_at: torch.Tensor | None = None,
    inject_value: torch.Tensor | None = None,
    inject_mode: str = "add",
    inject_scale: torch.Tensor | float | None = None,
    states_out: torch.Tensor | None = None,
) -> ScanOutput:
    """Mamba-1 selective scan, Triton forward with fused emission and injection.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.selective_scan.reference.selective_scan` (mamba-ssm's
    ``selective_scan_fn`` plus the instrumentation of ``docs/semantics.md``).

    Args:
        u, delta: ``[B, D, L]`` (float32, float16 or bfloat16).
        A: ``[D, N]``; B, C: ``[D, N]`` shared, ``[B, N, L]`` or grouped ``[B, G, N, L]``.
        D: ``[D]`` or None; z: ``[B, D, L]`` or None; delta_bias: ``[D]`` or None;
        delta_softplus: False.
        initial_state ``[B, D, N]``, output_final_state (False), emit_at ``[B, P]``/``[P]``,
        inject_at ``[B, Q]``/``[Q]``, inject_value (broadcastable to ``[B, Q, D, N]``),
        inject_mode (``"add"``), inject_scale (None), states_out (None): the state contract.

    Returns:
        ``ScanOutput(y [B, D, L] in u.dtype, final_state [B, D, N] fp32 or None,
        states [B, P, D, N] fp32 or None)``.  Float64 inputs run the reference (the exact oracle).

    Tensors must be on CUDA, or anywhere under ``TRITON_INTERPRET=1``.

    Example (CUDA, or any device under ``TRITON_INTERPRET=1``):
        >>> dev = "cuda" if torch.cuda.is_available() else "cpu"
        >>> u, delta = torch.randn(2, 8, 5, device=dev), torch.randn(2, 8, 5, device=dev)
        >>> A = -torch.rand(8, 4, device=dev)
        >>> B, C = torch.randn(2, 1, 4, 5, device=dev), torch.randn(2, 1, 4, 5, device=dev)
        >>> out = selective_scan_triton(u, delta, A, B, C, delta_softplus=True,
        ...                             emit_at=torch.tensor([0, 4], device=dev))
        >>> out.states.shape
        torch.Size([2, 2, 8, 4])
    """
    instrumentation = dict(
        initial_state=initial_state,
        output_final_state=output_final_state,
        emit_at=emit_at,
        inject_at=inject_at,
        inject_value=inject_value,
        inject_mode=inject_mode,
        inject_scale=inject_scale,
        states_out=states_out,
    )
    B, C, instr = validate(u, delta, A, B, C, D, z, delta_bias, instrumentation)
    _triton.check_launchable(u.device, "selective_scan")
    batch, dim, length = u.shape
    state_size = A.shape[1]
    launch = KernelInstrumentation.build(instr)
    y = _triton.empty((batch, dim, length), u.dtype, u.device)
    f32 = dict(dtype=torch.float32)
    spare = _triton.dummy(u.device)
    B_varying, C_varying = B.dim() == 4, C.dim() == 4
    n_groups = math.lcm(B.shape[1] if B_varying else 1, C.shape[1] if C_varying else 1)
    if B_varying and B.shape[1] != n_groups:  # B and C grouped differently: common groups
        B = B.repeat_interleave(n_groups // B.shape[1], 1)
    if C_varying and C.shape[1] != n_groups:
        C = C.repeat_interleave(n_groups // C.shape[1], 1)
    group_size = dim // n_groups
    block_d, block_n, warps = block_sizes(dim, state_size)
    grid = (_triton.cdiv(dim, block_d), batch)
    _selective_scan_fwd_kernel[grid](
        u.contiguous(),
        delta.contiguous(),
        A.to(**f32).contiguous(),
        _token_major(B, block_n) if B_varying else B.to(**f32).contiguous(),
        _token_major(C, block_n) if C_varying else C.to(**f32).contiguous(),
        spare if D is None else D.to(**f32).contiguous(),
        spare if delta_bias is None else delta_bias.to(**f32).contiguous(),
        y if z is None else z.contiguous(),
        y,
        *launch.pointers(spare),
        *launch.value_strides(),
        length,
        dim,
        state_size,
        group_size,
        n_groups,
        launch.emit_count,
        launch.inject_count,
        B_VARYING=B_varying,
        C_VARYING=C_varying,
        ONE_GROUP=n_groups == 1 or group_size % block_d == 0,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        **launch.flags(),
        BLOCK_D=block_d,
        BLOCK_T=time_tile(u.dtype),
        BLOCK_N=block_n,
        EVEN_N=state_size == block_n,
        num_warps=warps,
        num_stages=NUM_STAGES,
    )
    return launch.output(y)
