"""RWKV-5/6 WKV, recurrent Triton forward: one token per step, the state tile on chip.

One program per ``(V block, batch row, head)`` keeps the whole key dimension and a block of
values of the fp32 state ``S`` ``[K, BV]`` in registers and walks ``t = 0 .. L-1``::

    y_t = (scale r_t)^T (S + diag(u) k_t v_t^T);   S <- diag(exp(w_t)) S + k_t v_t^T
    inject at t (S += scale * value, or S = value); emit at t (store S)

Used for short sequences and for the decode step (``L = 1``, state read and written in place).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

from .. import _triton
from .._triton import close_matrix_row, end_of_step, open_matrix_row


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
    inj_v_ptr,  # [B, Q, H, K, V] strided
    inj_scale_ptr,  # [B, Q] fp32
    scale,
    L,
    H,
    K,
    V,
    P,
    Q,
    w_sb,
    w_st,
    iv_sb,
    iv_sq,
    iv_sh,
    iv_sk,
    iv_sv,
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
    S, at, tile, emit, inject, cursors = open_matrix_row(
        s0_ptr, emit, inj, (iv_sb, iv_sh, iv_sk, iv_sv), L, H, K, V, P, Q, BK, BV, HAS_INITIAL
    )
    i_b, i_h, o_k, o_v, m_k, m_v = at
    u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    row = i_b.to(tl.int64) * L * H + i_h  # (b, t = 0, h); pointers advance one token per step
    r_ptr += row * K
    k_ptr += row * K
    v_ptr += row * V
    y_ptr += row * V
    w_ptr += i_b.to(tl.int64) * w_sb + i_h * K

    for t in range(L):
        r = tl.load(r_ptr + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + o_v, mask=m_v, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)
        kv = k[:, None] * v[None, :]  # [BK, BV]
        y = tl.sum(r[:, None] * (S + u[:, None] * kv), 0)  # [BV]
        tl.store(y_ptr + o_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
        S = S * tl.exp(w)[:, None] + kv
        S, cursors = end_of_step(S, t, cursors, emit, inject, tile, H * K * V)
        r_ptr += H * K
        k_ptr += H * K
        v_ptr += H * V
        y_ptr += H * V
        w_ptr += w_st

    close_matrix_row(sT_ptr, S, tile, STORE_FINAL)


@functools.cache  # a pure function of ints, called on every launch
def recurrent_blocks(key_dim: int, value_dim: int) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)``: all of K in one program, about 1K state elements per program
    (8 per thread: K = V = 64 runs 4 V blocks per head, a few waves at B * H = 64)."""
    bk = _triton.next_power_of_2(key_dim)
    bv = min(_triton.next_power_of_2(value_dim), max(16, 1024 // bk))
    return bk, bv, 4 if bk * bv >= 1024 else 2


def launch_recurrent(launch) -> None:
    """Run :func:`wkv6_recurrent_kernel` on a prepared :class:`~.launch.Launch`."""
    batch, _, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = recurrent_blocks(key_dim, value_dim)
    grid = (_triton.cdiv(value_dim, bv), batch * heads)
    wkv6_recurrent_kernel[grid](
        *launch.kernel_args(),
        BK=bk,
        BV=bv,
        num_warps=warps,
        **launch.instr.flags(),
    )
