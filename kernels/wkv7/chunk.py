"""RWKV-7 WKV, chunked Triton forward for prefill (the generalised delta rule in WY form).

One program per ``(V block, batch row, head)`` carries the fp32 state ``S`` ``[K, BV]`` on chip
from piece to piece.  A piece is ``BT`` tokens, cut short right after an injection time (an
injection, ``add`` or ``set``, then acts on a piece's end state).  With ``g_i = w_0 + .. + w_i``
summed over the piece, ``S0`` the state entering it and ``removed_j = a_j^T S_{j-1}``::

    D_ij  = e^{g_i - g_j}  (j <= i),    D'_ij = e^{g_{i-1} - g_j}  (j < i)     (exponents <= 0)
    (I - Lab) removed = (a e^{g_{i-1}}) S0 + Lak v,   Lab_ij = sum_c a_ic D'_ijc b_jc  (Lak: k)
    y_i   = (r_i e^{g_i}) S0 + sum_{j<=i} (Arb_ij removed_j + Ark_ij v_j),  Arb_ij = r_i D_ij b_j
    S_end = e^{g_last} S0 + (b e^{g_last - g})^T removed + (k e^{g_last - g})^T v
    S_i   = the same with g_i for g_last over j <= i         (only where a row emits)

The four ``[BT, BT]`` pair matrices are built one column ``j`` at a time (no factorised
``e^{g} e^{-g}``, so no exponent is ever positive), ``(I - Lab)^{-1}`` by forward substitution
over the ``BT`` rows, and the small products run in fp32 (see :data:`PRECISION`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import _triton
from .._triton import close_matrix_row, emit_next, end_of_step, open_matrix_row, piece_end
from ..wkv6.chunk import CHUNK, STAGES
from ..wkv6.chunk import chunk_blocks as wkv6_chunk_blocks

__all__ = ["CHUNK", "PRECISION", "STAGES", "chunk_blocks", "launch_chunked", "wkv7_chunk_kernel"]

#: ``tl.dot`` precision: fp32 FMA.  With ``M = BT = 16`` every warp holds a whole ``[16, K]``
#: operand; 3xTF32 splits it twice more and spills, so these small products stay on FP32 cores.
PRECISION = "ieee"


@triton.jit
def _pair_matrices(
    r,  # [BT, BK] fp32, scale applied
    a,  # [BT, BK]
    g,  # [BT, BK] g_i
    g_prev,  # [BT, BK] g_{i-1}
    k_ptr,  # row `start` of k (scalar pointer)
    b_ptr,  # row `start` of b
    w_ptr,  # row `start` of w
    n,  # tokens in the piece
    stride,  # elements between tokens of k, b, w
    o_k,
    m_k,
    BT: tl.constexpr,
):
    """``Lab, Lak`` (strictly lower, ``D'``) and ``Arb, Ark`` (lower with diagonal, ``D``),
    ``[BT, BT]`` each, one column ``j`` a step."""
    o_t = tl.arange(0, BT)
    lab = tl.zeros([BT, BT], dtype=tl.float32)
    lak = tl.zeros([BT, BT], dtype=tl.float32)
    arb = tl.zeros([BT, BT], dtype=tl.float32)
    ark = tl.zeros([BT, BT], dtype=tl.float32)
    g_j = tl.sum(g, 0) * 0.0  # [BK] zeros in g's layout
    for j in range(0, n):
        k_j = tl.load(k_ptr + j * stride + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_j = tl.load(b_ptr + j * stride + o_k, mask=m_k, other=0.0).to(tl.float32)
        g_j += tl.load(w_ptr + j * stride + o_k, mask=m_k, other=0.0).to(tl.float32)
        ad = a * tl.exp(tl.minimum(g_prev - g_j[None, :], 0.0))
        rd = r * tl.exp(tl.minimum(g - g_j[None, :], 0.0))
        col = o_t[None, :] == j
        after = (o_t > j)[:, None]
        upto = (o_t >= j)[:, None]
        lab = tl.where(col & after, tl.sum(ad * b_j[None, :], 1)[:, None], lab)
        lak = tl.where(col & after, tl.sum(ad * k_j[None, :], 1)[:, None], lak)
        arb = tl.where(col & upto, tl.sum(rd * b_j[None, :], 1)[:, None], arb)
        ark = tl.where(col & upto, tl.sum(rd * k_j[None, :], 1)[:, None], ark)
    return lab, lak, arb, ark


@triton.jit
def _unit_lower_inverse(lab, n, BT: tl.constexpr):
    """``(I - lab)^{-1}`` for a strictly lower ``[BT, BT]`` ``lab`` (zero past row ``n``):
    row ``i`` of the inverse is ``e_i + lab_i @ (rows above)``, by forward substitution."""
    o_t = tl.arange(0, BT)
    inv = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    for i in range(1, n):
        here = o_t[:, None] == i
        lab_i = tl.sum(tl.where(here, lab, 0.0), 0)  # [BT]: lab[i, :]
        inv = tl.where(here, inv + tl.sum(lab_i[:, None] * inv, 0)[None, :], inv)
    return inv


@triton.jit
def _state_at(
    i,  # position in the piece
    S0,  # [BK, BV] state entering the piece
    g,  # [BT, BK]
    b,  # [BT, BK]
    k,  # [BT, BK]
    removed,  # [BT, BV]
    v,  # [BT, BV]
    BT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``S_i = e^{g_i} S0 + sum_{j<=i} e^{g_i - g_j} (b_j removed_j^T + k_j v_j^T)``."""
    o_t = tl.arange(0, BT)
    g_i = tl.sum(tl.where(o_t[:, None] == i, g, 0.0), 0)  # [BK]
    decay = tl.where(o_t[:, None] <= i, tl.exp(tl.minimum(g_i[None, :] - g, 0.0)), 0.0)
    S = tl.exp(g_i)[:, None] * S0
    S = tl.dot(tl.trans(b * decay), removed, S, input_precision=PRECISION)
    return tl.dot(tl.trans(k * decay), v, S, input_precision=PRECISION)


@triton.jit
def wkv7_chunk_kernel(
    r_ptr,  # [B, L, H, K]
    w_ptr,  # [B, L, H, K] log-decay
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
    row = i_b.to(tl.int64) * L * H + i_h

    start = cursors[0] * 0
    while start < L:
        end = piece_end(start, L, cursors, inject, BT)
        t = start + o_t
        m_t = t < end
        p_k = (row + t.to(tl.int64) * H)[:, None] * K + o_k[None, :]  # [BT, BK]
        p_v = (row + t.to(tl.int64) * H)[:, None] * V + o_v[None, :]  # [BT, BV]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        r = tl.load(r_ptr + p_k, mask=m_tk, other=0.0).to(tl.float32) * scale
        w = tl.load(w_ptr + p_k, mask=m_tk, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + p_k, mask=m_tk, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + p_k, mask=m_tk, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + p_v, mask=m_tv, other=0.0).to(tl.float32)
        g = tl.cumsum(w, 0)  # [BT, BK]; rows past the piece add 0
        g_prev = tl.minimum(g - w, 0.0)
        first = row * K + start.to(tl.int64) * H * K
        lab, lak, arb, ark = _pair_matrices(
            r,
            a,
            g,
            g_prev,
            k_ptr + first,
            b_ptr + first,
            w_ptr + first,
            end - start,
            H * K,
            o_k,
            m_k,
            BT,
        )
        inv = _unit_lower_inverse(lab, end - start, BT)
        rhs = tl.dot(a * tl.exp(g_prev), S, input_precision=PRECISION)
        rhs = tl.dot(lak, v, rhs, input_precision=PRECISION)
        removed = tl.dot(inv, rhs, input_precision=PRECISION)  # [BT, BV]: a_j^T S_{j-1}

        y = tl.dot(r * tl.exp(g), S, input_precision=PRECISION)
        y = tl.dot(arb, removed, y, input_precision=PRECISION)
        y = tl.dot(ark, v, y, input_precision=PRECISION)
        tl.store(y_ptr + p_v, y.to(y_ptr.dtype.element_ty), mask=m_tv)

        if HAS_EMIT:
            while cursors[1] < end - 1:  # inside the piece: before the state moves on
                S_t = _state_at(cursors[1] - start, S, g, b, k, removed, v, BT, PRECISION)
                cursors = emit_next(S_t, cursors, emit, H * K * V, tile)
        S = _state_at(end - 1 - start, S, g, b, k, removed, v, BT, PRECISION)
        S, cursors = end_of_step(S, end - 1, cursors, emit, inject, tile, H * K * V)
        start = end

    close_matrix_row(sT_ptr, S, tile, STORE_FINAL)


def chunk_blocks(key_dim: int, value_dim: int) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)``: all of K in one program; ``BK * BV <= 1024`` on 8 warps (no
    spills on sm_80/sm_90 up to ``K = 64``)."""
    bk = wkv6_chunk_blocks(key_dim, value_dim)[0]  # raises past K = 64
    bv = min(max(16, _triton.next_power_of_2(value_dim)), 1024 // bk, 32)
    return bk, bv, 8 if bk * bv >= 1024 else 4


def launch_chunked(launch) -> None:
    """Run :func:`wkv7_chunk_kernel` on a prepared :class:`~.launch.Launch7` (``K <= 64``)."""
    batch, _, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = chunk_blocks(key_dim, value_dim)
    wkv7_chunk_kernel[(_triton.cdiv(value_dim, bv), batch * heads)](
        *launch.kernel_args(),
        BK=bk,
        BV=bv,
        BT=CHUNK,
        PRECISION=PRECISION,
        num_warps=warps,
        num_stages=STAGES,
        **launch.instr.flags(),
    )
