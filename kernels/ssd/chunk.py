"""Mamba-2 SSD forward in Triton (chunked), with states emitted and injected at any timestep.

Algorithm.  One program per (block of ``BLOCK_P`` head channels, head, batch row) keeps the state
``S [BLOCK_P, N]`` float32 on chip and walks the row's sequence in *pieces* of at most ``BLOCK_T``
tokens.  For a piece ``[s, e)`` with ``g_i = sum_{s <= m <= i} dt_m A`` (log2 units, ``g <= 0``)::

    y_i   = sum_{j <= i} (C_i . B_j) 2^(g_i - g_j) dt_j x_j  +  2^(g_i) C_i S      (two tl.dot)
    S_end = 2^(g_{e-1}) S  +  sum_j 2^(g_{e-1} - g_j) dt_j x_j B_j^T                 (one tl.dot)

then ``y_i = (y_i + D x_i) * silu(z_i)``.  Only non-positive exponents are ever taken.  The piece
boundaries are per row and found at run time, which is what gives the state contract:

* a piece also ends right after the row's next injection time, so an ``add`` (``S += scale *
  value``) or a ``set`` (``S = value``, a segment boundary with a new initial state) acts on the
  piece's end state, exactly between ``y_t`` and ``y_{t+1}``;
* a piece also ends before the row's next ``seq_idx`` change, and the state is zeroed there;
* an emission at ``t`` inside a piece costs one more product,
  ``S_t = 2^(g_t) S + sum_{j <= t} 2^(g_t - g_j) dt_j x_j B_j^T``; at the piece's last token it is
  the (injected) end state itself.

So without instrumentation every piece is a full ``BLOCK_T`` chunk (the plain chunked kernel,
compile-time flags off); each injection or reset costs one extra, shorter piece; each emission one
``[BLOCK_P, BLOCK_T] x [BLOCK_T, N]`` product and a store.  The kernel's ``BLOCK_T`` (16..64, from
``chunk_size``, see :func:`block_sizes`) does not change the result beyond rounding.

Dots run in the input dtype (fp16/bf16 on tensor cores; the state enters ``C S`` rounded to it,
as in mamba-ssm, while it is carried and emitted in float32); with float32 inputs, and always
under the interpreter, every dot is exact IEEE float32.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .. import _triton
from .._contract import ScanOutput, float64_runs
from .._schedule import time_order, with_sentinel
from .._triton import KernelInstrumentation, emit_tile, inject_tile, open_schedules, softplus
from .reference import ssd_chunked, validate


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` in float32; exact IEEE products when ``IEEE``."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision="tf32")


@triton.jit
def _ssd_fwd_kernel(
    x_ptr,  # [B, L, H, P]
    dt_ptr,  # [B, L, H]
    A_ptr,  # [H] fp32
    B_ptr,  # [B, L, G, N]
    C_ptr,  # [B, L, G, N]
    D_ptr,  # [H, P] fp32, strided (d_h, d_p)
    d_h,
    d_p,
    bias_ptr,  # [H] fp32
    z_ptr,  # [B, L, H, P]
    y_ptr,  # [B, L, H, P]
    reset_t_ptr,  # [B, R + 1] int32 ascending, sentinel L: state zeroed before these tokens
    h0_ptr,  # [B, H, P, N] fp32
    hT_ptr,  # [B, H, P, N] fp32
    emit_t_ptr,  # [B, E + 1] int32 ascending, sentinel L
    emit_s_ptr,  # [B, E + 1] int32
    states_ptr,  # [B, E, H, P, N] fp32
    inj_t_ptr,  # [B, Q + 1] int32 ascending, sentinel L
    inj_s_ptr,  # [B, Q + 1] int32
    inj_v_ptr,  # [B, Q, H, P, N] fp32, strided
    inj_scale_ptr,  # [B, Q] fp32
    v_b,
    v_q,
    v_h,
    v_p,
    v_n,
    L,
    H,
    P,
    N,
    G,
    heads_per_group,
    R,
    E,
    Q,
    dt_low,
    dt_high,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_RESET: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    IEEE: tl.constexpr,  # exact fp32 dots (fp32 inputs, interpreter)
    DOT_DTYPE: tl.constexpr,  # operand dtype of the x/B/C dots
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_p = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    pn = offs_p[:, None] * N + offs_n[None, :]  # [BLOCK_P, BLOCK_N]
    mask_pn = mask_p[:, None] & mask_n[None, :]
    causal = offs_t[:, None] >= offs_t[None, :]  # [BLOCK_T, BLOCK_T]
    x_off = offs_t[:, None] * (H * P) + offs_p[None, :]  # [BLOCK_T, BLOCK_P] from (token, h, 0)
    bc_off = offs_t[:, None] * (G * N) + offs_n[None, :]  # [BLOCK_T, BLOCK_N] from (token, g, 0)

    A = tl.load(A_ptr + h) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + h * d_h + offs_p * d_p, mask=mask_p, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h)
    state_base = (b * H + h) * P * N
    if HAS_INITIAL:
        state = tl.load(h0_ptr + state_base + pn, mask=mask_pn, other=0.0)
    else:
        state = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if HAS_RESET:
        reset_t_ptr += b * (R + 1)
        r_cur = 0
        r_next = tl.load(reset_t_ptr)
    emit = (emit_t_ptr, emit_s_ptr, states_ptr + (b * E * H + h) * P * N, HAS_EMIT)
    inj_v_ptr += b * v_b + h * v_h
    inject = (
        inj_t_ptr,
        inj_s_ptr,
        inj_v_ptr,
        v_q,
        inj_scale_ptr,
        HAS_INJECT,
        INJECT_SET,
        HAS_SCALE,
    )
    emit, inject, cursors = open_schedules(emit, inject, tl.program_id(2), L, E, Q)  # int32 row
    e_cur, e_next, i_cur, i_next = cursors
    v_off = offs_p[:, None] * v_p + offs_n[None, :] * v_n

    start = 0
    while start < L:
        if HAS_RESET:
            if start == r_next:
                state = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
                r_cur += 1
                r_next = tl.load(reset_t_ptr + r_cur)
        end = tl.minimum(start + BLOCK_T, L)
        if HAS_INJECT:
            end = tl.minimum(end, i_next + 1)
        if HAS_RESET:
            end = tl.minimum(end, r_next)
        mask_t = start + offs_t < end
        row = b * L + start  # int64 scalar: the piece's first token; tile offsets stay int32
        dt = tl.load(dt_ptr + row * H + h + offs_t * H, mask=mask_t, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = softplus(dt)
        if HAS_LIMIT:
            dt = tl.minimum(tl.maximum(dt, dt_low), dt_high)
        dt = tl.where(mask_t, dt, 0.0)
        dA = dt * A
        cs = tl.cumsum(dA, axis=0)  # [BLOCK_T] log2 decay from the piece start to token i
        total = tl.sum(dA, axis=0)
        # [BLOCK_T, BLOCK_T] sum_{j < m <= i} dA_m, summed directly (no difference of cumsums)
        seg = tl.cumsum(tl.where(offs_t[:, None] > offs_t[None, :], dA[:, None], 0.0), axis=0)
        decay = tl.exp2(tl.where(causal, seg, float("-inf")))

        xm = mask_t[:, None] & mask_p[None, :]
        x_base = (row * H + h) * P
        x = tl.load(x_ptr + x_base + x_off, mask=xm, other=0.0)
        bc_base = (row * G + g) * N
        bcm = mask_t[:, None] & mask_n[None, :]
        Bm = tl.load(B_ptr + bc_base + bc_off, mask=bcm, other=0.0).to(DOT_DTYPE)
        Cm = tl.load(C_ptr + bc_base + bc_off, mask=bcm, other=0.0).to(DOT_DTYPE)

        zeros_tt = tl.zeros([BLOCK_T, BLOCK_T], dtype=tl.float32)
        CB = _dot(Cm, tl.trans(Bm), zeros_tt, IEEE)  # [BLOCK_T, BLOCK_T]
        scores = (CB * decay * dt[None, :]).to(DOT_DTYPE)
        Cs = (Cm.to(tl.float32) * tl.exp2(cs)[:, None]).to(DOT_DTYPE)
        y = _dot(Cs, tl.trans(state).to(DOT_DTYPE), tl.zeros([BLOCK_T, BLOCK_P], tl.float32), IEEE)
        y = _dot(scores, x.to(DOT_DTYPE), y, IEEE)  # [BLOCK_T, BLOCK_P]
        if HAS_D:
            y += Dv[None, :] * x.to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + x_base + x_off, mask=xm, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(y_ptr + x_base + x_off, y.to(y_ptr.dtype.element_ty), mask=xm)

        if HAS_EMIT:  # emissions before the piece's last token
            while e_next < end - 1:
                k = e_next - start
                cs_k = tl.sum(tl.where(offs_t == k, cs, 0.0), axis=0)
                w = tl.sum(tl.where(offs_t[:, None] == k, decay, 0.0), axis=0) * dt
                xe = (x.to(tl.float32) * w[:, None]).to(DOT_DTYPE)
                emitted = _dot(tl.trans(xe), Bm, state * tl.exp2(cs_k), IEEE)
                e_cur, e_next = emit_tile(
                    emitted, e_next, e_cur, e_next, emit, H * P * N, pn, mask_pn
                )
        to_end = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, decay, 0.0), axis=0)
        xw = (x.to(tl.float32) * (to_end * dt)[:, None]).to(DOT_DTYPE)
        new = _dot(tl.trans(xw), Bm, state * tl.exp2(total), IEEE)  # [BLOCK_P, BLOCK_N]
        if HAS_INJECT:
            new, i_cur, i_next = inject_tile(new, end - 1, i_cur, i_next, inject, v_off, mask_pn)
        if HAS_EMIT:  # at the piece's last token: the end state, after any injection
            e_cur, e_next = emit_tile(new, end - 1, e_cur, e_next, emit, H * P * N, pn, mask_pn)
        state = new
        start = end

    if STORE_FINAL:
        tl.store(hT_ptr + state_base + pn, state, mask=mask_pn)


@functools.cache  # a pure function of ints, called on every launch
def block_sizes(
    head_dim: int, state_size: int, chunk_size: int, interpreter: bool = _triton.INTERPRETING
) -> tuple[int, int, int, int]:
    """``(BLOCK_T, BLOCK_P, BLOCK_N, num_warps)``: the whole state ``N`` per program; ``BLOCK_T``
    is ``chunk_size`` rounded down to a power of two in [16, 64] under the interpreter, and 16 on
    a GPU (larger time blocks spill registers; checked ahead of time for N = 64 and 128);
    ``BLOCK_P`` 32 on a GPU, the whole head under the interpreter."""
    block_n = max(16, _triton.next_power_of_2(state_size))
    cap_t = 64 if interpreter else 16
    block_t = min(cap_t, max(16, 1 << (max(1, chunk_size).bit_length() - 1)))
    cap_p = 1 << 16 if interpreter else 32
    block_p = max(16, min(_triton.next_power_of_2(head_dim), cap_p))
    return block_t, block_p, block_n, 4 if interpreter else 8


DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@float64_runs(ssd_chunked)
def ssd_triton(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    **instrumentation,
) -> ScanOutput:
    """Mamba-2 SSD, Triton chunked forward with states emitted and injected at any timestep.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.ssd.reference.ssd_chunked` (mamba-ssm's
    ``mamba_chunk_scan_combined`` plus the instrumentation of ``docs/semantics.md``).

    Args:
        x: ``[B, L, H, P]`` (float32, float16 or bfloat16); dt: ``[B, L, H]``; A: ``[H]``;
        B, C: ``[B, L, G, N]``; chunk_size: 256 (the kernel's time block is this rounded down
            to a power of two in [16, 64]; the result does not depend on it beyond rounding).
        D: ``[H]`` or ``[H, P]``; z: ``[B, L, H, P]``; dt_bias: ``[H]``; dt_softplus: False;
        dt_limit: ``(0, inf)`` (clamp applied when different); initial_states (mamba-ssm's
            name) or initial_state: ``[B, H, P, N]``; seq_idx: ``[B, L]`` integer.
        output_final_state, emit_at, inject_at, inject_value, inject_mode, inject_scale: the
            state contract, state ``[H, P, N]``.

    Returns:
        ``ScanOutput(y [B, L, H, P] in x.dtype, final_state [B, H, P, N] fp32 or None,
        states [B, P', H, P, N] fp32 or None)``.  Float64 inputs run the reference.

    Example (CUDA, or any device under ``TRITON_INTERPRET=1``):
        >>> dev = "cuda" if torch.cuda.is_available() else "cpu"
        >>> x, dt = torch.randn(1, 10, 2, 8, device=dev), torch.randn(1, 10, 2, device=dev)
        >>> A = -torch.rand(2, device=dev)
        >>> B, C = torch.randn(1, 10, 1, 16, device=dev), torch.randn(1, 10, 1, 16, device=dev)
        >>> out = ssd_triton(x, dt, A, B, C, chunk_size=16, dt_softplus=True,
        ...                  emit_at=torch.tensor([3, 9], device=dev), output_final_state=True)
        >>> torch.equal(out.states[:, 1], out.final_state)
        True
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    instr, reset = validate(
        x, dt, A, B, C, D, z, dt_bias, dt_limit, seq_idx, initial_states, instrumentation
    )
    _triton.check_launchable(x.device, "ssd")
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2:]
    launch = KernelInstrumentation.build(instr)
    f32 = dict(dtype=torch.float32)
    spare = _triton.dummy(x.device)
    y = _triton.empty((batch, length, heads, head_dim), x.dtype, x.device)
    reset_times = _triton.dummy(x.device, torch.int32)
    if reset is not None:
        marks = torch.arange(length, device=x.device).expand(batch, -1)
        resets, _ = time_order(torch.where(reset, marks, -1), length)
        reset_times = with_sentinel(resets, length)
    if D is not None:
        D = (D[:, None].expand(heads, head_dim) if D.dim() == 1 else D).to(**f32)
    block_t, block_p, block_n, warps = block_sizes(head_dim, state_size, chunk_size)
    ieee = _triton.INTERPRETING or x.dtype == torch.float32
    grid = (_triton.cdiv(head_dim, block_p), heads, batch)
    _ssd_fwd_kernel[grid](
        x.contiguous(),
        dt.contiguous(),
        A.to(**f32).contiguous(),
        B.contiguous(),
        C.contiguous(),
        spare if D is None else D,
        *(D.stride() if D is not None else (0, 0)),
        spare if dt_bias is None else dt_bias.to(**f32).contiguous(),
        y if z is None else z.contiguous(),
        y,
        reset_times,
        *launch.pointers(spare),
        *launch.value_strides(),
        length,
        heads,
        head_dim,
        state_size,
        groups,
        heads // groups,
        reset_times.shape[1] - 1 if reset is not None else 0,
        launch.emit_count,
        launch.inject_count,
        float(dt_limit[0]),
        float(min(dt_limit[1], 3.0e38)),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus),
        HAS_LIMIT=tuple(dt_limit) != (0.0, math.inf),
        HAS_RESET=reset is not None,
        **launch.flags(),
        IEEE=ieee,
        DOT_DTYPE=tl.float32 if ieee else DOT_DTYPES[x.dtype],
        BLOCK_T=block_t,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        num_warps=warps,
        num_stages=1,
    )
    return launch.output(y)
