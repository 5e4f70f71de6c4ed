"""Mamba-1 selective scan forward in Triton, with fused state emission and injection.

Algorithm (the recurrent form, as mamba-ssm's decode kernel, run over the whole sequence): one
program per (block of ``BLOCK_D`` channels, batch row).  The state ``[BLOCK_D, N]`` float32 stays
in registers while the program walks ``t = 0 .. L-1``; per token it loads ``u_t``, ``delta_t``
(and ``B_t``, ``C_t``, ``z_t`` where they vary), updates the state
``S = exp2(dt * A * log2 e) * S + dt * u * B_t``, and stores ``y_t = S C_t + D u_t`` (gated by
``silu(z_t)``) from the post-update state.

Instrumentation is compile-time: with ``HAS_EMIT`` the program keeps a cursor into its row's
time-sorted emission times (:class:`~.._schedule.Schedule`) and, when ``t`` reaches the next
one, stores the state into ``states[b, slot]`` and loads the following time; ``HAS_INJECT``
likewise adds ``scale * value[b, slot]`` (or writes ``value``, ``INJECT_SET``) after ``y_t`` was
stored and before the emission at ``t``.  Without them the kernel is the plain scan.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .. import _triton
from .._contract import ScanOutput, float64_runs
from .._triton import KernelInstrumentation, emit_tile, inject_tile, open_schedules, softplus
from .reference import selective_scan as selective_scan_reference
from .reference import validate


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr,  # [B, D, L]
    delta_ptr,  # [B, D, L]
    A_ptr,  # [D, N] fp32
    B_ptr,  # [B, G, N, L] (B_VARYING) or [D, N]
    C_ptr,  # [B, G, N, L] (C_VARYING) or [D, N]
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
    BLOCK_N: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    mask = mask_d[:, None] & mask_n[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]  # [BLOCK_D, BLOCK_N]

    A = tl.load(A_ptr + dn, mask=mask, other=0.0) * 1.4426950408889634
    row = b * dim * L + offs_d * L  # [BLOCK_D] offsets of (b, d, t=0)
    if ONE_GROUP:
        g = (pid_d * BLOCK_D) // group_size
        bc = ((b * n_groups + g) * N + offs_n) * L  # [BLOCK_N]
        bc_mask = mask_n
    else:
        g = offs_d // group_size
        bc = ((b * n_groups + g[:, None]) * N + offs_n[None, :]) * L  # [BLOCK_D, BLOCK_N]
        bc_mask = mask
    if not B_VARYING:
        Bt = tl.load(B_ptr + dn, mask=mask, other=0.0).to(tl.float32)
    if not C_VARYING:
        Ct = tl.load(C_ptr + dn, mask=mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_INITIAL:
        state = tl.load(h0_ptr + b * dim * N + dn, mask=mask, other=0.0)
    else:
        state = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    emit = (emit_t_ptr, emit_s_ptr, states_ptr + b * P * dim * N, HAS_EMIT)
    inj_v_ptr += b * sv_b
    inject = (
        inj_t_ptr,
        inj_s_ptr,
        inj_v_ptr,
        sv_q,
        inj_scale_ptr,
        HAS_INJECT,
        INJECT_SET,
        HAS_SCALE,
    )
    emit, inject, cursors = open_schedules(emit, inject, tl.program_id(1), L, P, Q)  # int32 row
    e_cur, e_next, i_cur, i_next = cursors
    v_off = offs_d[:, None] * sv_d + offs_n[None, :] * sv_n

    for t in range(L):
        u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = softplus(dt)
        if B_VARYING:
            Bt = tl.load(B_ptr + bc + t, mask=bc_mask, other=0.0).to(tl.float32)
        if C_VARYING:
            Ct = tl.load(C_ptr + bc + t, mask=bc_mask, other=0.0).to(tl.float32)
        if ONE_GROUP and B_VARYING:
            dBu = (dt * u)[:, None] * Bt[None, :]
        else:
            dBu = (dt * u)[:, None] * Bt
        state = tl.exp2(dt[:, None] * A) * state + dBu
        if ONE_GROUP and C_VARYING:
            y = tl.sum(state * Ct[None, :], axis=1)
        else:
            y = tl.sum(state * Ct, axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            z = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(y_ptr + row + t, y.to(y_ptr.dtype.element_ty), mask=mask_d)
        if HAS_INJECT:
            state, i_cur, i_next = inject_tile(state, t, i_cur, i_next, inject, v_off, mask)
        if HAS_EMIT:
            e_cur, e_next = emit_tile(state, t, e_cur, e_next, emit, dim * N, dn, mask)

    if STORE_FINAL:
        tl.store(hT_ptr + b * dim * N + dn, state, mask=mask)


NUM_STAGES = 2


@functools.cache  # a pure function of ints, called on every launch
def block_sizes(
    dim: int, state_size: int, interpreter: bool = _triton.INTERPRETING
) -> tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_N, num_warps)``: the whole ``N`` per program and about 512 state
    elements on a GPU, 4 per thread, or 2 per thread from ``N = 64`` on (with 4 there the
    kernel took 110 registers, and triton 3.9's code for sm_90a spilled; with 2, 59); under
    the interpreter few, large programs."""
    block_n = _triton.next_power_of_2(state_size)
    per_program = 4096 if interpreter else 512
    block_d = max(1, min(_triton.next_power_of_2(dim), per_program // block_n))
    return block_d, block_n, 8 if block_n >= 64 else 4


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
        B.contiguous(),
        C.contiguous(),
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
        BLOCK_N=block_n,
        num_warps=warps,
        num_stages=NUM_STAGES,
    )
    return launch.output(y)
