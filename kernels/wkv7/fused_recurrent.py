"""RWKV-7 WKV, recurrent Triton forward (the generalised delta rule), with fused emit/inject.

One program per ``(V block, batch row, head)`` keeps all of K (``a^T S`` needs every key row)
and a block of values of the fp32 state ``S`` ``[K, BV]`` in registers::

    S <- diag(exp(w_t)) S + b_t (a_t^T S) + k_t v_t^T;   y_t = S^T (scale r_t)
    inject at t (S += scale * value, or S = value); emit at t (store S)

``y_t`` reads the state after the update, before the injection at ``t`` (docs/semantics.md).
Used for short sequences and for the decode step (``L = 1``, state in place); prefill runs
:mod:`.chunk`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import _triton
from .._triton import close_matrix_row, end_of_step, open_matrix_row
from ..wkv6.fused_recurrent import recurrent_blocks


@triton.jit
def wkv7_recurrent_kernel(
    r_ptr,  # [B, L, H, K]
    w_ptr,  # [B, L, H, K] log-decay
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    a_ptr,  # [B, L, H, K]
    b_ptr,  # [B, L, H, K]
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
    p_k = (i_b.to(tl.int64) * L * H + i_h) * K  # r, w, k, a, b at (b, t = 0, h)
    p_v = (i_b.to(tl.int64) * L * H + i_h) * V  # v, y
    for t in range(L):
        r = tl.load(r_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        w = tl.load(w_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + p_v + o_v, mask=m_v, other=0.0).to(tl.float32)
        sa = tl.sum(a[:, None] * S, 0)  # [BV]: a^T S_{t-1}
        S = S * tl.exp(w)[:, None] + b[:, None] * sa[None, :] + k[:, None] * v[None, :]
        y = tl.sum(r[:, None] * S, 0)  # [BV]
        tl.store(y_ptr + p_v + o_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
        S, cursors = end_of_step(S, t, cursors, emit, inject, tile, H * K * V)
        p_k += H * K
        p_v += H * V

    close_matrix_row(sT_ptr, S, tile, STORE_FINAL)


def launch_recurrent(launch) -> None:
    """Run :func:`wkv7_recurrent_kernel` on a prepared :class:`~.launch.Launch7`."""
    batch, _, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = recurrent_blocks(key_dim, value_dim)
    wkv7_recurrent_kernel[(_triton.cdiv(value_dim, bv), batch * heads)](
        *launch.kernel_args(),
        BK=bk,
        BV=bv,
        num_warps=warps,
        **launch.instr.flags(),
    )
