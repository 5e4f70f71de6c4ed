"""RWKV-5/6 WKV, recurrent Triton forward: value columns in threads, one token per step.

One program (one warp) per ``(V block, batch row, head)`` keeps the fp32 state ``S``
``[K, BV]`` in registers and walks ``t = 0 .. L-1``::

    y_t = (scale r_t)^T (S + diag(u) k_t v_t^T);   S <- diag(exp(w_t)) S + k_t v_t^T
    inject at t (S += scale * value, or S = value); emit at t (store S)

Layout (:func:`column_tile`): ``BV = 16`` columns on one warp, so Triton's default blocked
layout gives each thread one value column and half of its ``K``-row (32 entries at K = 64):
``r^T S`` is in-thread FMAs and one shuffle, and the state update touches no other thread's
data (16 rather than 32 columns a warp keeps the registers under 128).  The per-token key
vectors ``r, k, w`` ``[K]`` are loaded once per program, spread over the threads (two elements
each: ``exp(w)`` and the bonus ``sum(r u k)`` are computed once per program, not once per
column) and handed to every column through shared memory (:func:`shared_vectors`).  The column
offsets carry ``max_contiguous(.., 1)`` so that no load or store of the state tile imposes a
vectorised layout on the loop; ``K`` and ``V`` are compile-time (``KD``, ``VD``), so the
tile's offsets are immediates and cost no registers.

Instrumentation: the walk is cut into segments that end at the row's next emission or
injection step (:func:`segment_end`; one segment when nothing is scheduled), so the per-token
loop carries no schedule checks; at a segment's last step come the row's injection (the value
tile's offsets built inside the taken branch), then its emission (:func:`end_of_column_step`).
Used for short sequences and for the decode step (``L = 1``, state read and written in place).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

from .. import _triton
from .._triton import injected_value, open_schedules


@triton.jit
def column_tile(i_v, KD: tl.constexpr, VD: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Key and value offsets of V block ``i_v`` (``o_k [BK]``, ``o_v [BV]``, the latter marked
    non-contiguous: one column per thread) and the tile's offsets and mask ``[BK, BV]`` in one
    ``[K, V]`` state."""
    o_k = tl.arange(0, BK)
    o_v = tl.max_contiguous(i_v * BV + tl.arange(0, BV), 1)
    mask = (o_k < KD)[:, None] & (o_v < VD)[None, :]
    o_kv = o_k.to(tl.int64)[:, None] * VD + o_v.to(tl.int64)[None, :]  # 64-bit: immediates
    return o_k, o_v, o_kv, mask


@triton.jit
def open_column_row(
    s0_ptr,  # [B, H, K, V] fp32
    emit,  # (emit_t_ptr, emit_s_ptr, states_ptr [B, P, H, K, V], HAS_EMIT)
    inject,  # (inj_t_ptr, inj_s_ptr, inj_v_ptr [B, Q, H, K, V], iv_sq, inj_scale_ptr,
    #          HAS_INJECT, INJECT_SET, HAS_SCALE)
    iv_sb,
    iv_sh,
    L,
    H,
    P,
    Q,
    KD: tl.constexpr,
    VD: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
):
    """Start a program of grid ``(V blocks, B * H)``: ``S, i_b, i_h, state_off, emit, inject,
    cursors`` (the initial tile ``[BK, BV]`` fp32, the row and head, the row's and head's offset
    in ``[B, H, K, V]``, both schedules positioned on the row with their bases on this row and
    head, see :func:`~statetap.kernels._triton.open_schedules`)."""
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    state_off = i_bh.to(tl.int64) * KD * VD
    if HAS_INITIAL:
        _, _, o_kv, m_kv = column_tile(tl.program_id(0), KD, VD, BK, BV)
        S = tl.load(s0_ptr + state_off + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    emit, inject, cursors = open_schedules(emit, inject, i_b, L, P, Q)
    e_times, e_slots, states_ptr, HAS_EMIT = emit
    states_ptr += i_b.to(tl.int64) * P * H * KD * VD + i_h * KD * VD
    i_times, i_slots, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE = inject
    inj_v_ptr += i_b.to(tl.int64) * iv_sb + i_h * iv_sh
    emit = (e_times, e_slots, states_ptr, HAS_EMIT)
    inject = (i_times, i_slots, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    return S, i_b, i_h, state_off, emit, inject, cursors


@triton.jit
def shared_vectors(a, b, c, d):
    """``a, b, c, d`` (``[BK]`` fp32) through one ``join`` (``[BK, 2, 2]``): the layout change
    that hands them to every column then moves the values as computed, once per program
    (triton 3.6 otherwise moves the raw bf16 inputs and redoes the conversions and the exps in
    every column)."""
    ab, cd = tl.split(tl.join(tl.join(a, b), tl.join(c, d)))
    a, b = tl.split(ab)
    c, d = tl.split(cd)
    return a, b, c, d


@triton.jit
def segment_end(cursors, L):
    """The end (exclusive) of the segment of steps that ends at the row's next emission or
    injection (``L`` when there is none left): the steps inside it carry no schedule checks."""
    e_cur, e_next, i_cur, i_next = cursors
    return tl.minimum(tl.minimum(e_next, i_next) + 1, L)


@triton.jit
def end_of_column_step(
    S,
    t,
    cursors,
    emit,
    inject,
    H,
    KD: tl.constexpr,
    VD: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """Steps 4 and 5 of the contract at the end of step ``t`` on the program's tile: the row's
    injection at ``t`` (``S += scale * value`` or ``S = value``), then its emission.  The
    offsets are built inside the taken branches, so the loop carries no offset registers; the
    injected value's state dims are dense (:func:`~statetap.kernels._triton.dense_state_dims`),
    so its tile has the state's compile-time offsets.  Returns ``S, cursors``."""
    e_cur, e_next, i_cur, i_next = cursors
    i_times, i_slots, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE = inject
    if HAS_INJECT:
        if t == i_next:
            _, _, o_kv, m_kv = column_tile(tl.program_id(0), KD, VD, BK, BV)
            slot = tl.load(i_slots + i_cur).to(tl.int64)
            value = injected_value(slot, inj_v_ptr, iv_sq, inj_scale_ptr, o_kv, m_kv, HAS_SCALE)
            if INJECT_SET:
                S = value
            else:
                S = S + value
            i_cur += 1
            i_next = tl.load(i_times + i_cur)
    e_times, e_slots, states_ptr, HAS_EMIT = emit
    if HAS_EMIT:
        if t == e_next:
            slot = tl.load(e_slots + e_cur).to(tl.int64)
            _, _, o_kv, m_kv = column_tile(tl.program_id(0), KD, VD, BK, BV)
            tl.store(states_ptr + slot * (H * KD * VD) + o_kv, S, mask=m_kv)
            e_cur += 1
            e_next = tl.load(e_times + e_cur)
    return S, (e_cur, e_next, i_cur, i_next)


@triton.jit
def close_column_row(sT_ptr, S, state_off, KD, VD, BK: tl.constexpr, BV: tl.constexpr):
    """Store the final tile ``S`` ``[BK, BV]`` into ``sT`` ``[B, H, K, V]``."""
    _, _, o_kv, m_kv = column_tile(tl.program_id(0), KD, VD, BK, BV)
    tl.store(sT_ptr + state_off + o_kv, S, mask=m_kv)


@triton.jit
def wkv6_recurrent_kernel(
    r_ptr,  # [B, L, H, K]
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    w_ptr,  # [B, L, H, K] log-decay, strides (w_sb, w_st, K, 1); 0, 0 for RWKV-5's [H, K]
    u_ptr,  # [H, K]
    y_ptr,  # [B, L, H, V]
    s0_ptr,  # [B, H, K, V] fp32
    sT_ptr,  # [B, H, K, V] fp32 (may be s0_ptr: in place)
    emit_t_ptr,  # [B, P + 1] int32
    emit_s_ptr,  # [B, P + 1] int32
    states_ptr,  # [B, P, H, K, V] fp32
    inj_t_ptr,  # [B, Q + 1] int32
    inj_s_ptr,  # [B, Q + 1] int32
    inj_v_ptr,  # [B, Q, H, K, V], strides (iv_sb, iv_sq, iv_sh, V, 1)
    inj_scale_ptr,  # [B, Q] fp32
    scale,
    L,
    H,
    K,  # (unused: KD)
    V,  # (unused: VD)
    P,
    Q,
    w_sb,
    w_st,
    iv_sb,
    iv_sq,
    iv_sh,
    iv_sk,  # (unused: the state dims are dense, see _triton.dense_state_dims)
    iv_sv,  # (unused)
    KD: tl.constexpr,  # K
    VD: tl.constexpr,  # V
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    emit = (emit_t_ptr, emit_s_ptr, states_ptr, HAS_EMIT)
    inj = (inj_t_ptr, inj_s_ptr, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    S, i_b, i_h, state_off, emit, inject, cursors = open_column_row(
        s0_ptr, emit, inj, iv_sb, iv_sh, L, H, P, Q, KD, VD, BK, BV, HAS_INITIAL
    )
    o_k, o_v, _, _ = column_tile(tl.program_id(0), KD, VD, BK, BV)
    m_k = o_k < KD
    m_v = o_v < VD
    u = tl.load(u_ptr + i_h * KD + o_k, mask=m_k, other=0.0).to(tl.float32)
    row = i_b.to(tl.int64) * L * H + i_h  # (b, t = 0, h); pointers advance one token per step
    r_ptr += row * KD
    k_ptr += row * KD
    v_ptr += row * VD
    y_ptr += row * VD
    w_ptr += i_b.to(tl.int64) * w_sb + i_h * KD

    t0 = i_b * 0  # int32: the first step of the segment
    while t0 < L:  # segments that end at the row's next instrumented step (or at L)
        end = segment_end(cursors, L)
        for _step in range(t0, end):
            r = tl.load(r_ptr + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
            k = tl.load(k_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + o_v, mask=m_v, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)
            bonus = tl.sum(r * u * k, 0)
            r, k, e, _e = shared_vectors(r, k, tl.exp(w), w)
            y = tl.sum(r[:, None] * S, 0) + v * bonus  # [BV]
            tl.store(y_ptr + o_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
            S = S * e[:, None] + k[:, None] * v[None, :]
            r_ptr += H * KD
            k_ptr += H * KD
            v_ptr += H * VD
            y_ptr += H * VD
            w_ptr += w_st
        S, cursors = end_of_column_step(S, end - 1, cursors, emit, inject, H, KD, VD, BK, BV)
        t0 = end

    if STORE_FINAL:
        close_column_row(sT_ptr, S, state_off, KD, VD, BK, BV)


@functools.cache  # a pure function of ints, called on every launch
def recurrent_blocks(key_dim: int, value_dim: int) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)``: all of K in one program, 16 value columns on one warp (each
    column on two threads), fewer when ``V`` is smaller; for ``K > 64`` (the delta-rule models'
    ``K = 128``) 4 columns, which keeps the ``[K, BV]`` state tile within 128 registers a thread
    with or without injection (``benchmarks/compile_check.py --ops delta_rule,delta_rule_step``
    at ``K = V = 128``: 16 columns take 206-255 registers with spills in
    ``wkv7_recurrent_kernel``; in ``delta_rule_recurrent_kernel`` 8 take up to 149 with
    injection on sm_80, 4 take 72 plain and instrumented)."""
    bk = _triton.next_power_of_2(key_dim)
    bv = min(_triton.next_power_of_2(value_dim), 16 if bk <= 64 else 4)
    return bk, bv, 1


def launch_recurrent(launch) -> None:
    """Run :func:`wkv6_recurrent_kernel` on a prepared :class:`~.launch.Launch`."""
    batch, _, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = recurrent_blocks(key_dim, value_dim)
    grid = (_triton.cdiv(value_dim, bv), batch * heads)
    wkv6_recurrent_kernel[grid](
        *launch.kernel_args(),
        KD=key_dim,
        VD=value_dim,
        BK=bk,
        BV=bv,
        num_warps=warps,
        **launch.instr.flags(),
    )
