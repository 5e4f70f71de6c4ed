"""RWKV-7 chunked prefill, stage 2: the serial pass over chunks, outputs and instrumentation.

One program per ``(V tile, batch row and head)`` carries the fp32 state tile ``S`` ``[K, BV]``
(all of K: the removal ``a^T S`` reads every key row) from chunk to chunk, reading the factors
of :mod:`.chunk_factors`::

    y_chunk = y_local + q_eff S          ([BT, K] x [K, BV] on tensor cores)
    S      <- M S + D                    ([K, K] x [K, BV])

and applies the state contract (docs/semantics.md) on that walk:

* an emission on a chunk's last token, the final state: the state after the chunk (free);
* an emission at ``t`` inside a chunk: ``S_t = P_t S + Q_t`` from the factors stage 1 stored at
  the emission's index in the row's sorted schedule (one product per emission; ``y`` is the
  same with and without it);
* an injection on a chunk's last token acts on the state after the chunk; a chunk with an
  injection before its last token (rare: steering) runs token by token with the exact
  recurrence ``S <- diag(e^{w_t}) S + b_t (a_t^T S) + k_t v_t^T``, injecting and emitting at
  each step, and ignores its factors.

Per-row positions stay per row: the cursors of the row's sorted schedules decide, on device.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import close_matrix_row, emit_next, end_of_step, open_matrix_row

__all__ = ["wkv7_chunk_state_kernel"]


@triton.jit
def _walk_chunk(
    S, c0, end, row, cursors, emit, inject, tile, inputs, y_ptr, scale, H, K, V, o_k, o_v, m_k, m_v
):
    """The chunk ``[c0, end)`` one token at a time (exact, fp32), with the contract's injection
    and emission after each token.  ``inputs = (r, w, k, v, a, b)`` pointers, ``row`` the
    (batch row, head) index of token 0.  Returns ``S, cursors``."""
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr = inputs
    for t in range(c0, end):
        at = row + (row * 0 + t) * H  # int64
        p_k = at * K + o_k
        p_v = at * V + o_v
        r = tl.load(r_ptr + p_k, mask=m_k, other=0.0).to(tl.float32) * scale
        w = tl.load(w_ptr + p_k, mask=m_k, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + p_k, mask=m_k, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + p_k, mask=m_k, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + p_k, mask=m_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + p_v, mask=m_v, other=0.0).to(tl.float32)
        removed = tl.sum(a[:, None] * S, 0)  # [BV]: a^T S_{t-1}
        S = S * tl.exp(w)[:, None] + b[:, None] * removed[None, :] + k[:, None] * v[None, :]
        y = tl.sum(r[:, None] * S, 0)
        tl.store(y_ptr + p_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
        S, cursors = end_of_step(S, t, cursors, emit, inject, tile, H * K * V)
    return S, cursors


@triton.jit
def _chunk_from_factors(
    S,
    i_c,
    c0,
    end,
    row,
    cursors,
    emit,
    inject,
    tile,
    factors,
    y_ptr,
    L,
    H,
    K,
    V,
    P,
    NT,
    at,
    BT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The chunk ``[c0, end)`` from stage 1's factors: its outputs, its emissions before its last
    token, the state after it, then the contract's injection and emission on its last token.
    Returns ``S, cursors``."""
    q_eff_ptr, y_local_ptr, trans_ptr, drive_ptr, snap_p_ptr, snap_q_ptr = factors
    i_b, i_h, o_k, o_v, m_k, m_v = at
    chunk = (i_b.to(tl.int64) * H + i_h) * NT + i_c  # the chunk's index in the factor buffers
    o_t = tl.arange(0, BT)
    m_t = c0 + o_t < L
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    m_kk = m_k[:, None] & m_k[None, :]
    m_kv = tile[1]
    q_eff = tl.load(
        q_eff_ptr + chunk * BT * K + (o_t[:, None] * K + o_k[None, :]), mask=m_tk, other=0.0
    )
    y = tl.load(
        y_local_ptr + chunk * BT * V + (o_t[:, None] * V + o_v[None, :]), mask=m_tv, other=0.0
    )
    y = tl.dot(q_eff, S, y, input_precision=PRECISION)
    p_y = y_ptr + (row + c0.to(tl.int64) * H) * V + (o_t[:, None] * (H * V) + o_v[None, :])
    tl.store(p_y, y.to(y_ptr.dtype.element_ty), mask=m_tv)
    square_kk = o_k[:, None] * K + o_k[None, :]
    square_kv = o_k[:, None] * V + o_v[None, :]
    trans = tl.load(trans_ptr + chunk * K * K + square_kk, mask=m_kk, other=0.0)
    drive = tl.load(drive_ptr + chunk * K * V + square_kv, mask=m_kv, other=0.0)
    S_end = tl.dot(trans, S, drive, input_precision=PRECISION)
    if emit[3]:  # HAS_EMIT
        while cursors[1] < end - 1:
            snap = (i_b.to(tl.int64) * P + cursors[0]) * H + i_h
            p_t = tl.load(snap_p_ptr + snap * K * K + square_kk, mask=m_kk, other=0.0)
            q_t = tl.load(snap_q_ptr + snap * K * V + square_kv, mask=m_kv, other=0.0)
            S_t = tl.dot(p_t, S, q_t, input_precision=PRECISION)
            cursors = emit_next(S_t, cursors, emit, H * K * V, tile)
    return end_of_step(S_end, end - 1, cursors, emit, inject, tile, H * K * V)


@triton.jit
def wkv7_chunk_state_kernel(
    r_ptr,  # [B, L, H, K]
    w_ptr,  # [B, L, H, K]
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    a_ptr,  # [B, L, H, K]
    b_ptr,  # [B, L, H, K]
    y_ptr,  # [B, L, H, V]
    s0_ptr,  # [B, H, K, V] fp32
    sT_ptr,  # [B, H, K, V] fp32
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
    iv_sk,  # (unused: the state dims are dense, see _triton.dense_state_dims)
    iv_sv,  # (unused)
    q_eff_ptr,  # [B, H, NT, BT, K] fp32
    y_local_ptr,  # [B, H, NT, BT, V] fp32
    trans_ptr,  # [B, H, NT, K, K] fp32
    drive_ptr,  # [B, H, NT, K, V] fp32
    snap_p_ptr,  # [B, P, H, K, K] fp32
    snap_q_ptr,  # [B, P, H, K, V] fp32
    NT,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    emit = (emit_t_ptr, emit_s_ptr, states_ptr, HAS_EMIT)
    inj = (inj_t_ptr, inj_s_ptr, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    S, at, tile, emit, inject, cursors = open_matrix_row(
        s0_ptr, emit, inj, (iv_sb, iv_sh), L, H, K, V, P, Q, BK, BV, HAS_INITIAL
    )
    i_b, i_h, o_k, o_v, m_k, m_v = at
    row = i_b.to(tl.int64) * L * H + i_h
    factors = (q_eff_ptr, y_local_ptr, trans_ptr, drive_ptr, snap_p_ptr, snap_q_ptr)
    for i_c in range(NT):
        c0 = i_c * BT
        end = tl.minimum(c0 + BT, L)
        if HAS_INJECT:
            if cursors[3] < end - 1:  # an injection inside the chunk: token by token
                inputs = (r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr)
                S, cursors = _walk_chunk(
                    S,
                    c0,
                    end,
                    row,
                    cursors,
                    emit,
                    inject,
                    tile,
                    inputs,
                    y_ptr,
                    scale,
                    H,
                    K,
                    V,
                    o_k,
                    o_v,
                    m_k,
                    m_v,
                )
            else:
                S, cursors = _chunk_from_factors(
                    S,
                    i_c,
                    c0,
                    end,
                    row,
                    cursors,
                    emit,
                    inject,
                    tile,
                    factors,
                    y_ptr,
                    L,
                    H,
                    K,
                    V,
                    P,
                    NT,
                    at,
                    BT,
                    PRECISION,
                )
        else:
            S, cursors = _chunk_from_factors(
                S,
                i_c,
                c0,
                end,
                row,
                cursors,
                emit,
                inject,
                tile,
                factors,
                y_ptr,
                L,
                H,
                K,
                V,
                P,
                NT,
                at,
                BT,
                PRECISION,
            )

    close_matrix_row(sT_ptr, S, tile, STORE_FINAL)
