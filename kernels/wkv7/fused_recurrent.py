"""RWKV-7 WKV, recurrent Triton forward (the generalised delta rule), with fused emit/inject.

One program per ``(V block, batch row, head)`` keeps all of K (``a^T S`` needs every key row)
and a block of values of the fp32 state ``S`` ``[K, BV]`` in registers, in the column layout of
:mod:`statetap.kernels.wkv6.fused_recurrent` (a value column on a pair of threads:
the reductions over ``K`` are in-thread FMAs plus one shuffle; ``r, w, k, a, b`` are
loaded and ``exp(w)`` computed once per program, then shared through shared memory)::

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
from ..wkv6.fused_recurrent import (
    close_column_row,
    column_tile,
    end_of_column_step,
    open_column_row,
    recurrent_blocks,
    segment_end,
    shared_vectors,
)


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
    K,  # (unused: KD)
    V,  # (unused: VD)
    P,
    Q,
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
    p_k = (i_b.to(tl.int64) * L * H + i_h) * KD  # r, w, k, a, b at (b, t = 0, h)
    p_v = (i_b.to(tl.int64) * L * H + i_h) * VD  # v, y
    t0 = i_b * 0  # int32: the first step of the segment
    while t0 < L:  # segments that end at the row's next instrumented step (or at L)
        end = segment_end(cursors, L)
        for _step in range(t0, end):
            r = tl.load(r_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
            w = tl.load(w_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
            k = tl.load(k_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + p_v + o_v, mask=m_v, other=0.0).to(tl.float32)
            r, k, a, b = shared_vectors(r, k, a, b)
            e, _r, _k, _a = shared_vectors(tl.exp(w), r, k, a)
            sa = tl.sum(a[:, None] * S, 0)  # [BV]: a^T S_{t-1}
            S = S * e[:, None] + b[:, None] * sa[None, :] + k[:, None] * v[None, :]
            y = tl.sum(r[:, None] * S, 0)  # [BV]
            tl.store(y_ptr + p_v + o_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
            p_k += H * KD
            p_v += H * VD
        S, cursors = end_of_column_step(S, end - 1, cursors, emit, inject, H, KD, VD, BK, BV)
        t0 = end

    if STORE_FINAL:
        close_column_row(sT_ptr, S, state_off, KD, VD, BK, BV)


def launch_recurrent(launch) -> None:
    """Run :func:`wkv7_recurrent_kernel` on a prepared :class:`~.launch.Launch7`."""
    batch, _, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = recurrent_blocks(key_dim, value_dim)
    wkv7_recurrent_kernel[(_triton.cdiv(value_dim, bv), batch * heads)](
        *launch.kernel_args(),
        KD=key_dim,
        VD=value_dim,
        BK=bk,
        BV=bv,
        num_warps=warps,
        **launch.instr.flags(),
    )
