"""Gated delta rule, recurrent Triton forward and decode step, on the models' own inputs.

The recurrent form of ``wkv7`` (:mod:`statetap.kernels.wkv7.fused_recurrent`) specialised to the
delta rule, reading ``query, key, value, g, beta`` as the models pass them instead of ``wkv7``'s
mapped ``r, w, k, v, a, b`` (:mod:`.mapping`): nothing is materialised, a query/key head is read
once for its ``HV / HK`` value heads, the L2 norm and the gate run in the kernel, and a decode
step's token inputs reach the kernel as they are (what :class:`~.._prepared_step.PreparedStep`
replays).  One program per ``(V block, batch row, value head)`` keeps all of ``K`` and ``BV``
value columns of the fp32 state ``S`` in registers, in the column layout and with the
instrumentation of :mod:`statetap.kernels.wkv6.fused_recurrent`::

    S <- diag(exp(g_t)) S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   y_t = S^T (scale q_t)
    inject at t (S += scale * value, or S = value); emit at t (store S)
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
from .reference import L2NORM_EPS


@triton.jit
def delta_rule_recurrent_kernel(
    q_ptr,  # [B, L, HK, K]
    k_ptr,  # [B, L, HK, K]
    v_ptr,  # [B, L, H, V]
    g_ptr,  # [B, L, H] or [B, L, H, K] (GATE_PER_CHANNEL) log gate
    beta_ptr,  # [B, L, H]
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
    H,  # value heads
    GROUP,  # value heads per query/key head
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
    GATE_PER_CHANNEL: tl.constexpr,
    L2NORM: tl.constexpr,
    EPS: tl.constexpr,
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
    key_heads = H // GROUP
    key_row = i_b.to(tl.int64) * L * key_heads + i_h // GROUP  # (b, t = 0, key head)
    row = i_b.to(tl.int64) * L * H + i_h  # (b, t = 0, value head)
    q_ptr += key_row * KD
    k_ptr += key_row * KD
    v_ptr += row * VD
    y_ptr += row * VD
    beta_ptr += row
    if GATE_PER_CHANNEL:
        g_ptr += row * KD
    else:
        g_ptr += row

    t0 = i_b * 0  # int32: the first step of the segment
    while t0 < L:  # segments that end at the row's next instrumented step (or at L)
        end = segment_end(cursors, L)
        for _step in range(t0, end):
            q = tl.load(q_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)
            k = tl.load(k_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)
            if L2NORM:
                q = q * tl.rsqrt(tl.sum(q * q, 0) + EPS)
                k = k * tl.rsqrt(tl.sum(k * k, 0) + EPS)
            q = q * scale
            v = tl.load(v_ptr + o_v, mask=m_v, other=0.0).to(tl.float32)
            beta = tl.load(beta_ptr).to(tl.float32)
            if GATE_PER_CHANNEL:
                e = tl.exp(tl.load(g_ptr + o_k, mask=m_k, other=0.0).to(tl.float32))
                q, k, e, _e = shared_vectors(q, k, e, e)
                S = S * e[:, None]
            else:
                q, k, _q, _k = shared_vectors(q, k, q, k)
                S = S * tl.exp(tl.load(g_ptr).to(tl.float32))
            error = (v - tl.sum(k[:, None] * S, 0)) * beta  # [BV]: beta (v - S^T k)
            S = S + k[:, None] * error[None, :]
            y = tl.sum(q[:, None] * S, 0)  # [BV]
            tl.store(y_ptr + o_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
            q_ptr += key_heads * KD
            k_ptr += key_heads * KD
            v_ptr += H * VD
            y_ptr += H * VD
            beta_ptr += H
            if GATE_PER_CHANNEL:
                g_ptr += H * KD
            else:
                g_ptr += H
        S, cursors = end_of_column_step(S, end - 1, cursors, emit, inject, H, KD, VD, BK, BV)
        t0 = end

    if STORE_FINAL:
        close_column_row(sT_ptr, S, state_off, KD, VD, BK, BV)


def launch_recurrent(launch) -> None:
    """Run :func:`delta_rule_recurrent_kernel` on a prepared :class:`~.launch.DeltaLaunch`."""
    batch, length, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = recurrent_blocks(key_dim, value_dim)
    delta_rule_recurrent_kernel[(_triton.cdiv(value_dim, bv), batch * heads)](
        *launch.inputs,
        launch.y,
        *launch.instr.pointers(launch.y),
        launch.scale,
        length,
        heads,
        launch.group,
        launch.instr.emit_count,
        launch.instr.inject_count,
        *launch.instr.value_strides(),
        KD=key_dim,
        VD=value_dim,
        BK=bk,
        BV=bv,
        GATE_PER_CHANNEL=launch.gate_per_channel,
        L2NORM=launch.l2norm,
        EPS=L2NORM_EPS,
        num_warps=warps,
        **launch.instr.flags(),
    )


__all__ = ["delta_rule_recurrent_kernel", "launch_recurrent"]
