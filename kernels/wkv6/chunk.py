"""RWKV-5/6 WKV, chunked Triton forward for prefill.

One program per ``(V block, batch row, head)`` carries the fp32 state ``S`` ``[K, BV]`` on chip
from piece to piece.  A piece is ``BT`` tokens, cut short right after an injection time (so an
injection, ``add`` or ``set``, acts on a piece's end state: a ``set`` is then a segment
boundary).  With ``g_i = w_0 + .. + w_i`` (log-decay summed over the piece up to ``i``) and
``S0`` the state entering the piece::

    y_i   = (r_i e^{g_{i-1}}) S0 + (r_i . u . k_i) v_i + sum_{j<i} A_ij v_j,
    A_ij  = sum_c r_ic k_jc e^{g_{i-1,c} - g_{j,c}}            (exponent <= 0)
    S_end = e^{g_last} S0 + (k e^{g_last - g})^T v
    S_i   = e^{g_i} S0 + (k e^{g_i - g} [j <= i])^T v            (only where a row emits)

``A v`` is accumulated one token ``j`` at a time (no factorised ``e^{g} e^{-g}``), so no
exponent is ever positive whatever the decay; the two state products run on tensor cores in
3xTF32 (about fp32 accuracy).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import _triton
from .._triton import close_matrix_row, emit_next, inject_step, open_matrix_row, piece_end

CHUNK = 16  # BT: tokens per piece
STAGES = 1  # the loads are consumed at once: software pipelining would only cost registers
PRECISION = "tf32x3"  # tl.dot: tensor cores at about fp32 accuracy


@triton.jit
def _intra_chunk(
    r,  # [BT, BK] fp32, scale applied
    g_prev,  # [BT, BK] g_{i-1}
    u,  # [BK]
    k_ptr,  # row `start` of k (scalar pointer)
    v_ptr,  # row `start` of v (scalar pointer)
    w_ptr,  # row `start` of w (scalar pointer)
    n,  # tokens in the piece
    stride_k,
    stride_v,
    stride_w,
    o_k,
    m_k,
    o_v,
    m_v,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    """``sum_{j<=i} A_ij v_j``: ``A_ij = sum_c r_ic k_jc e^{g_{i-1,c} - g_{j,c}}`` below the
    diagonal (exponent <= 0) and ``r_i . u . k_i`` on it (the bonus); one token ``j`` a step."""
    o_t = tl.arange(0, BT)
    y = tl.zeros([BT, BV], dtype=tl.float32)
    g_j = tl.sum(g_prev, 0) * 0.0  # [BK] zeros in g's layout
    for j in range(0, n):
        k_j = tl.load(k_ptr + j * stride_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        v_j = tl.load(v_ptr + j * stride_v + o_v, mask=m_v, other=0.0).to(tl.float32)
        g_j += tl.load(w_ptr + j * stride_w + o_k, mask=m_k, other=0.0).to(tl.float32)
        decay = tl.exp(tl.minimum(g_prev - g_j[None, :], 0.0))
        coef = tl.where((o_t > j)[:, None], decay, tl.where((o_t == j)[:, None], u[None, :], 0.0))
        y += tl.sum(r * k_j[None, :] * coef, 1)[:, None] * v_j[None, :]
    return y


@triton.jit
def wkv6_chunk_kernel(
    r_ptr,  # [B, L, H, K]
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    w_ptr,  # [B, L, H, K] log-decay, strides (w_sb, w_st, K, 1)
    u_ptr,  # [H, K]
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
    BT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    emit = (emit_t_ptr, emit_s_ptr, states_ptr, HAS_EMIT)
    inj = (inj_t_ptr, inj_s_ptr, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    S, at, tile, emit, inject, cursors = open_matrix_row(
        s0_ptr, emit, inj, (iv_sb, iv_sh, iv_sk, iv_sv), L, H, K, V, P, Q, BK, BV, HAS_INITIAL
    )
    i_b, i_h, o_k, o_v, m_k, m_v = at
    o_t = tl.arange(0, BT)
    u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    row = i_b.to(tl.int64) * L * H + i_h
    w_row = i_b.to(tl.int64) * w_sb + i_h * K

    start = cursors[0] * 0
    while start < L:
        end = piece_end(start, L, cursors, inject, BT)
        t = start + o_t
        m_t = t < end
        p_rk = (row + t.to(tl.int64) * H)[:, None] * K  # [BT, 1]
        p_v = (row + t.to(tl.int64) * H)[:, None] * V + o_v[None, :]  # [BT, BV]
        p_w = (w_row + t.to(tl.int64) * w_st)[:, None]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        r = tl.load(r_ptr + p_rk + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + p_rk + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + p_w + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + p_v, mask=m_tv, other=0.0).to(tl.float32)
        g = tl.cumsum(w, 0)  # [BT, BK]; rows past the piece add 0
        g_last = tl.sum(w, 0)  # [BK]

        y = tl.dot(r * tl.exp(g - w), S, input_precision=PRECISION)
        y += _intra_chunk(
            r,
            g - w,
            u,
            k_ptr + row * K + start.to(tl.int64) * H * K,
            v_ptr + row * V + start.to(tl.int64) * H * V,
            w_ptr + w_row + start.to(tl.int64) * w_st,
            end - start,
            H * K,
            H * V,
            w_st,
            o_k,
            m_k,
            o_v,
            m_v,
            BT,
            BV,
        )
        tl.store(y_ptr + p_v, y.to(y_ptr.dtype.element_ty), mask=m_tv)

        S0 = S
        k_end = k * tl.exp(g_last[None, :] - g)
        S = tl.exp(g_last)[:, None] * S0 + tl.dot(tl.trans(k_end), v, input_precision=PRECISION)
        S, cursors = inject_step(S, end - 1, cursors, inject, tile)
        if HAS_EMIT:
            while cursors[1] < end:  # the piece's emissions, its end state (injected) last
                if cursors[1] == end - 1:
                    S_t = S
                else:
                    here = o_t[:, None] == cursors[1] - start
                    g_t = tl.sum(tl.where(here, g, 0.0), 0)  # [BK]
                    upto = o_t[:, None] <= cursors[1] - start
                    k_t = tl.where(upto, k * tl.exp(tl.minimum(g_t[None, :] - g, 0.0)), 0.0)
                    S_t = tl.exp(g_t)[:, None] * S0 + tl.dot(
                        tl.trans(k_t), v, input_precision=PRECISION
                    )
                cursors = emit_next(S_t, cursors, emit, H * K * V, tile)
        start = end

    close_matrix_row(sT_ptr, S, tile, STORE_FINAL)


#: Largest key dimension of the chunked kernel (RWKV-5/6/7 models use 64); larger heads run the
#: recurrent kernel.
MAX_KEY_DIM = 64


def chunk_blocks(key_dim: int, value_dim: int) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)`` of the chunked kernel (all of K in one program; no spills on
    sm_80/sm_90 up to ``K = 64``)."""
    if key_dim > MAX_KEY_DIM:
        raise ValueError(
            f"the chunked kernel takes K <= {MAX_KEY_DIM}, got K={key_dim}; use the recurrent form"
        )
    bk = max(16, _triton.next_power_of_2(key_dim))
    if bk == MAX_KEY_DIM:
        return bk, 16, 8
    return bk, min(max(16, _triton.next_power_of_2(value_dim)), 32), 4


def launch_chunked(launch) -> None:
    """Run :func:`wkv6_chunk_kernel` on a prepared :class:`~.launch.Launch`."""
    batch, _, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = chunk_blocks(key_dim, value_dim)
    grid = (_triton.cdiv(value_dim, bv), batch * heads)
    wkv6_chunk_kernel[grid](
        *launch.kernel_args(),
        BK=bk,
        BV=bv,
        BT=CHUNK,
        PRECISION=PRECISION,
        num_warps=warps,
        num_stages=STAGES,
        **launch.instr.flags(),
    )
