"""RWKV-7 chunked prefill, stage 1: each chunk's WY factors, in parallel over chunks.

Two kernels, programs over ``(chunk, batch row and head, V tile)``:
:func:`wkv7_chunk_pairs_kernel` builds the pair matrices, :func:`wkv7_chunk_factors_kernel` the
inverse and the factors; they hand over through a per-program fp32 scratch (so each keeps few
``[BT, BT]`` tiles live).  Within a chunk of ``BT`` tokens, with ``g_i = w_0 + .. + w_i`` the
cumulative log-decay (``g_{-1} = 0``), ``S0`` the state entering the chunk and
``x_j = a_j^T S_{j-1}`` (the removed value)::

    A_qk[i, j] = sum_c r_ic e^{g_ic - g_jc} k_jc   (j <= i)     A_qb: b_j for k_j
    A_ak[i, j] = sum_c a_ic e^{g_{i-1}c - g_jc} k_jc  (j < i)   A_ab: b_j for k_j
    x = T (a e^{g_{i-1}}) S0 + T A_ak v = W S0 + U,   T = (I - A_ab)^{-1}
    y = (r e^{g} + A_qb W) S0 + (A_qb U + A_qk v)  = q_eff S0 + y_local
    S_end = (diag(e^{g_last}) + B^T W) S0 + (B^T U + K^T v) = M S0 + D,  B = b e^{g_last - g}

The four pair matrices are ``[BT, BT]`` tensor-core products of gated operands factorised
around the chunk's middle token ``c`` (``r e^{g - g_c}`` against ``k e^{g_c - g}``, as fla does
under a ``lower_bound``).  The factorisation is used only when every exponent it forms stays
within :data:`FACTOR_BOUND` (checked per chunk on the device: RWKV-7's decay,
``-exp(-0.5) sigmoid(.) >= -0.61`` a token, always passes at ``BT = 64``); a chunk with a
stronger decay (never RWKV-7's) builds them one column at a time with per-element exponentials
of non-positive sums, so no input produces inf or NaN.  ``T`` is a blocked inverse: the 16 x 16
diagonal blocks inverted by repeated squaring (``(I + N)(I + N^2)(I + N^4)(I + N^8)``), the
blocks below them combined with dots (``T_IJ = T_II sum_m A_Im T_mJ``), all in IEEE fp32.

Outputs, float32: ``q_eff`` ``[BT, K]`` and ``M`` ``[K, K]`` (V tile 0), ``y_local`` ``[BT, V]``
and ``D`` ``[K, V]`` per V tile.  Emission inside a chunk (not on its last token) at ``t``
needs ``S_t = P_t S0 + Q_t``, the same sums cut at ``t``: for each of the row's emission times
in the chunk the program stores ``P_t`` ``[K, K]`` and ``Q_t`` ``[K, V]`` at the emission's
index in the row's sorted schedule (work proportional to emissions).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["FACTOR_BOUND", "SUB", "wkv7_chunk_factors_kernel", "wkv7_chunk_pairs_kernel"]

#: Largest exponent the factorised pair products may form (``|g_i - g_c|`` per channel): the
#: gated operands stay below ``e^30``, a masked-out pair below ``e^60``, far from fp32's ``e^88``
FACTOR_BOUND = 30.0
#: Rows of the diagonal blocks of the triangular inverse
SUB = tl.constexpr(16)


@triton.jit
def _unit_lower_inverse(n):
    """``(I - n)^{-1}`` for a strictly lower ``[SUB, SUB]`` ``n`` (nilpotent: ``n^16 = 0``),
    as ``(I + n)(I + n^2)(I + n^4)(I + n^8)``, IEEE fp32 dots."""
    o = tl.arange(0, SUB)
    inv = tl.where(o[:, None] == o[None, :], 1.0, 0.0) + n
    for _ in tl.static_range(3):
        n = tl.dot(n, n, input_precision="ieee")
        inv = inv + tl.dot(inv, n, input_precision="ieee")
    return inv


@triton.jit
def _blocked_inverse(ptr, BT: tl.constexpr):
    """``(I - A)^{-1}`` ``[BT, BT]`` of a strictly lower ``A`` stored row-major at ``ptr``,
    overwritten in place block row by block row (``T_IJ = T_II sum_{J <= m < I} A_Im T_mJ``,
    ``J`` ascending: ``A_IJ`` is last read just before ``T_IJ`` replaces it), and returned
    (blocks above the diagonal read as zeros)."""
    o = tl.arange(0, SUB)
    block = o[:, None] * BT + o[None, :]  # a [SUB, SUB] block's offsets
    for i in tl.static_range(BT // SUB):
        t_ii = _unit_lower_inverse(tl.load(ptr + (i * SUB) * (BT + 1) + block))
        for j in tl.static_range(i):
            acc = tl.zeros([SUB, SUB], dtype=tl.float32)
            for m in tl.static_range(j, i):
                a_im = tl.load(ptr + (i * SUB) * BT + m * SUB + block)
                t_mj = tl.load(ptr + (m * SUB) * BT + j * SUB + block)
                acc = tl.dot(a_im, t_mj, acc, input_precision="ieee")
            t_ij = tl.dot(t_ii, acc, input_precision="ieee")
            tl.debug_barrier()  # every thread has read A_IJ
            tl.store(ptr + (i * SUB) * BT + j * SUB + block, t_ij)
        tl.debug_barrier()
        tl.store(ptr + (i * SUB) * (BT + 1) + block, t_ii)
        tl.debug_barrier()  # the next block row reads these blocks from other threads
    o_t = tl.arange(0, BT)
    lower = o_t[None, :] // SUB <= o_t[:, None] // SUB
    return tl.load(ptr + o_t[:, None] * BT + o_t[None, :], mask=lower, other=0.0)


@triton.jit
def _cumulative_decay(w_ptr, offsets, mask):
    """``g`` ``[BT, BK]``, the inclusive cumulative log-decay over the chunk (rows past it repeat
    the last), and ``w``."""
    w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return tl.cumsum(w, 0), w


@triton.jit
def _key_block(w_ptr, p_k, m_tk, o_k, kb, K):
    """Key channels ``kb .. kb + KB`` of a chunk: their ``[BT, KB]`` mask, cumulative log-decay
    ``g`` and log-decay ``w`` (:func:`_cumulative_decay`)."""
    m = m_tk & (o_k[None, :] + kb < K)
    g, w = _cumulative_decay(w_ptr + kb, p_k, m)
    return m, g, w


@triton.jit
def _pairs_exact(
    with_b_ptr,
    x_ptr,
    x_scale,
    k_ptr,
    b_ptr,
    w_ptr,
    v_ptr,
    n,
    H,
    K,
    V,
    o_k,
    o_v,
    p_k,
    m_tk,
    STRICT: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    KB: tl.constexpr,
    BV: tl.constexpr,
):
    """The pair matrices of ``x = x_scale * x_ptr[...]`` for a chunk whose decay is too strong to
    factorise, one column ``j`` a step with per-element ``e^{g_x,ic - g_jc}`` (exponent clamped
    at 0, exact for every pair kept; ``g_x = g_{i-1}`` if ``STRICT`` else ``g_i``), a block of
    ``KB`` key channels at a time: ``sum_c x_ic e^{..} b_jc`` ``[BT, BT]`` stored at
    ``with_b_ptr`` (row-major; a column at a time in one key block, over a zeroed tile) and
    ``(sum_c x_ic e^{..} k_jc) v`` ``[BT, BV]`` returned, pairs ``j < i`` (``j <= i`` unless
    ``STRICT``)."""
    o_t = tl.arange(0, BT)
    m_v = o_v < V
    with_b = tl.zeros([BT, BT], dtype=tl.float32)
    with_k_v = tl.zeros([BT, BV], dtype=tl.float32)
    for kb in tl.static_range(0, BK, KB):
        m, g, w = _key_block(w_ptr, p_k, m_tk, o_k, kb, K)
        g_x = g - w if STRICT else g
        x = tl.load(x_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32) * x_scale
        m_k = o_k + kb < K
        g_j = tl.sum(g_x, 0) * 0.0  # [KB] zeros in g's layout
        for j in range(0, n):
            k_j = tl.load(k_ptr + kb + j * H * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_j = tl.load(b_ptr + kb + j * H * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            v_j = tl.load(v_ptr + j * H * V + o_v, mask=m_v, other=0.0).to(tl.float32)
            g_j += tl.load(w_ptr + kb + j * H * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            decayed = x * tl.exp(tl.minimum(g_x - g_j[None, :], 0.0))
            if STRICT:
                kept = o_t > j
            else:
                kept = o_t >= j
            with_k = tl.where(kept, tl.sum(decayed * k_j[None, :], 1), 0.0)
            column = tl.where(kept, tl.sum(decayed * b_j[None, :], 1), 0.0)
            if BK == KB:
                tl.store(with_b_ptr + o_t * BT + j, column)
            else:
                with_b += tl.where(o_t[None, :] == j, column[:, None], 0.0)
            with_k_v += with_k[:, None] * v_j[None, :]
    if BK != KB:
        tl.store(with_b_ptr + o_t[:, None] * BT + o_t[None, :], with_b)
    return with_k_v


@triton.jit
def _factorised_pairs(
    sides,
    work,
    p_y_local,
    m_tv,
    v,
    REMOVAL: tl.constexpr,
    QUERY: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    KB: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The chunk's pair matrices from gated operands factorised around its middle token
    (``sides``: the input pointers, offsets, ``middle`` the rows up to that token, ``scale``),
    summed over blocks of ``KB`` key channels, causally masked and stored as soon as the last
    block is in: the removal side's (``a e^{g_prev}``; ``A_ab`` and ``A_ak v`` to the scratch
    ``work``) if ``REMOVAL``, the query side's (``scale r e^{g}``; ``A_qb`` to ``work``,
    ``A_qk v`` to ``y_local``) if ``QUERY``."""
    r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, p_k, m_tk, o_k, K, middle, scale = sides
    o_t = tl.arange(0, BT)
    square_t = o_t[:, None] * BT + o_t[None, :]
    square_v = o_t[:, None] * BV + tl.arange(0, BV)[None, :]
    strict = o_t[:, None] > o_t[None, :]
    inclusive = o_t[:, None] >= o_t[None, :]
    a_ab = tl.zeros([BT, BT], dtype=tl.float32)
    a_ak = tl.zeros([BT, BT], dtype=tl.float32)
    a_qb = tl.zeros([BT, BT], dtype=tl.float32)
    a_qk = tl.zeros([BT, BT], dtype=tl.float32)
    for kb in tl.static_range(0, BK, KB):
        m, g, w = _key_block(w_ptr, p_k, m_tk, o_k, kb, K)
        g_mid = tl.sum(tl.where(middle, w, 0.0), 0)
        to_mid = tl.exp(g_mid[None, :] - g)
        k_side = tl.trans(tl.load(k_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32) * to_mid)
        b_side = tl.trans(tl.load(b_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32) * to_mid)
        if REMOVAL:
            x = tl.load(a_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32)
            x = x * tl.exp(g - w - g_mid[None, :])
            a_ab = tl.dot(x, b_side, a_ab, input_precision=PRECISION)
            a_ak = tl.dot(x, k_side, a_ak, input_precision=PRECISION)
            if kb + KB >= BK:
                tl.store(work + square_t, tl.where(strict, a_ab, 0.0))
                a_ak_v = tl.dot(tl.where(strict, a_ak, 0.0), v, input_precision=PRECISION)
                tl.store(work + 2 * BT * BT + square_v, a_ak_v)
        if QUERY:
            x = tl.load(r_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32)
            x = x * (scale * tl.exp(g - g_mid[None, :]))
            a_qb = tl.dot(x, b_side, a_qb, input_precision=PRECISION)
            a_qk = tl.dot(x, k_side, a_qk, input_precision=PRECISION)
            if kb + KB >= BK:
                tl.store(work + BT * BT + square_t, tl.where(inclusive, a_qb, 0.0))
                a_qk_v = tl.dot(tl.where(inclusive, a_qk, 0.0), v, input_precision=PRECISION)
                tl.store(p_y_local, a_qk_v, mask=m_tv)


@triton.jit
def _open_chunk(ptrs, L, H, K, V, NT, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """A program's chunk (grid ``(chunk, B * H, V tile)``): ``ptrs`` ``(r, w, k, v, a, b)`` moved
    to the chunk's first token, and ``(c0, n, chunk, o_t, o_k, o_v, m_tk, m_tv, m_kk, m_kv, p_k,
    p_v)``: its first token, length, index in the factor buffers, offsets, masks, and the
    ``[BT, BK]`` / ``[BT, BV]`` int32 offsets of its tokens from ``ptrs``."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    c0 = i_c * BT
    n = tl.minimum(BT, L - c0)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.program_id(2) * BV + tl.arange(0, BV)
    m_t = o_t < n
    m_k = o_k < K
    m_v = o_v < V
    first = (i_b.to(tl.int64) * L + c0) * H + i_h  # the chunk's first (row, token, head)
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr = ptrs
    ptrs = (
        r_ptr + first * K,
        w_ptr + first * K,
        k_ptr + first * K,
        v_ptr + first * V,
        a_ptr + first * K,
        b_ptr + first * K,
    )
    at = (
        c0,
        n,
        i_bh.to(tl.int64) * NT + i_c,
        o_t,
        o_k,
        o_v,
        m_t[:, None] & m_k[None, :],
        m_t[:, None] & m_v[None, :],
        m_k[:, None] & m_k[None, :],
        m_k[:, None] & m_v[None, :],
        o_t[:, None] * (H * K) + o_k[None, :],
        o_t[:, None] * (H * V) + o_v[None, :],
    )
    return ptrs, at


@triton.jit
def _work_tile(work_ptr, chunk, BT: tl.constexpr):
    """This program's ``[3, BT, BT]`` fp32 scratch in ``work`` ``[B, H, NT, VT, 3, BT, BT]``."""
    return work_ptr + (chunk * tl.num_programs(2) + tl.program_id(2)) * 3 * BT * BT


@triton.jit
def _wy_w_block(work, kb, o_t, o_k, BT: tl.constexpr, KB: tl.constexpr):
    """Key channels ``kb .. kb + KB`` of the WY factor ``W`` ``[BT, KB]``, from the scratch slots
    stage 1b parks it in (the second and third ``[BT, BT]`` of ``work``)."""
    return tl.load(work + BT * BT + (kb // KB) * BT * BT + o_t[:, None] * KB + o_k[None, :])


@triton.jit
def _cut_transition(
    p_ptr,
    q_ptr,
    t,
    w_ptr,
    a_ptr,
    b_ptr,
    k_ptr,
    p_k,
    m_tk,
    o_k,
    K,
    work,
    v,
    wy_u,
    o_t,
    o_v,
    V,
    WITH_P,
    BT: tl.constexpr,
    BK: tl.constexpr,
    KB: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The chunk's state after its token ``t`` as ``P_t S0 + Q_t``: ``Q_t = B_t^T U + K_t^T v``
    ``[K, BV]`` stored at ``q_ptr`` (row-major ``[K, V]``) and, if ``WITH_P``,
    ``P_t = diag(e^{g_t}) + B_t^T W`` ``[K, K]`` at ``p_ptr``, with ``B_t = b e^{g_t - g}``,
    ``K_t = k e^{g_t - g}`` over tokens ``<= t``; ``KB x KB`` blocks (``t = n - 1``: ``M, D``;
    ``W`` read from ``work``, :func:`_wy_w_block`)."""
    m_v = o_v < V
    upto = o_t[:, None] <= t
    for kb in range(0, BK, KB):  # rows kb .. kb + KB of P_t and Q_t (a loop: shared memory reused)
        m, g, w = _key_block(w_ptr, p_k, m_tk, o_k, kb, K)
        g_t = tl.sum(tl.where(o_t[:, None] == t, g, 0.0), 0)
        to_t = tl.where(upto, tl.exp(tl.minimum(g_t[None, :] - g, 0.0)), 0.0)
        b_t = tl.trans(tl.load(b_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32) * to_t)
        k_t = tl.load(k_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32) * to_t
        q_t = tl.dot(b_t, wy_u, input_precision=PRECISION)
        q_t = tl.dot(tl.trans(k_t), v, q_t, input_precision=PRECISION)
        m_row = o_k + kb < K
        tl.store(
            q_ptr + (kb + o_k[:, None]) * V + o_v[None, :], q_t, mask=m_row[:, None] & m_v[None, :]
        )
        if WITH_P:
            eye = o_k[:, None] == o_k[None, :]
            for kc in range(0, BK, KB):  # columns kc .. kc + KB
                wy_w = _wy_w_block(work, kc, o_t, o_k, BT, KB)
                p_t = tl.dot(b_t, wy_w, input_precision=PRECISION)
                p_t += tl.where(eye & (kc == kb), tl.exp(g_t)[:, None], 0.0)
                m_col = o_k + kc < K
                tl.store(
                    p_ptr + (kb + o_k[:, None]) * K + kc + o_k[None, :],
                    p_t,
                    mask=m_row[:, None] & m_col[None, :],
                )


@triton.jit
def wkv7_chunk_pairs_kernel(
    r_ptr,  # [B, L, H, K]
    w_ptr,  # [B, L, H, K] log-decay
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    a_ptr,  # [B, L, H, K]
    b_ptr,  # [B, L, H, K]
    y_local_ptr,  # [B, H, NT, BT, V] fp32: A_qk v
    work_ptr,  # [B, H, NT, VT, 3, BT, BT] fp32 scratch: A_ab, A_qb, A_ak v
    scale,
    L,
    H,
    K,
    V,
    NT,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
    KB: tl.constexpr,  # key channels per block (BK a multiple of it)
    FACTOR_BOUND: tl.constexpr,
):
    """Stage 1a: the chunk's pair matrices; ``A_ab`` and ``A_qb`` to the scratch, with
    ``A_ak v``, and ``A_qk v`` to ``y_local``."""
    ptrs, at = _open_chunk((r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr), L, H, K, V, NT, BT, KB, BV)
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr = ptrs
    c0, n, chunk, o_t, o_k, o_v, m_tk, m_tv, m_kk, m_kv, p_k, p_v = at
    middle = o_t[:, None] <= (n - 1) // 2
    span = 0.0  # largest |g - g_mid| in the chunk
    for kb in tl.static_range(0, BK, KB):
        w = tl.load(w_ptr + kb + p_k, mask=m_tk & (o_k[None, :] + kb < K), other=0.0)
        w = w.to(tl.float32)
        g_mid = tl.sum(tl.where(middle, w, 0.0), 0)
        span = tl.maximum(span, tl.max(tl.maximum(-g_mid, g_mid - tl.sum(w, 0)), 0))
    work = _work_tile(work_ptr, chunk, BT)
    square_t = o_t[:, None] * BT + o_t[None, :]
    square_v = o_t[:, None] * BV + tl.arange(0, BV)[None, :]
    p_y_local = y_local_ptr + chunk * BT * V + (o_t[:, None] * V + o_v[None, :])
    v = tl.load(v_ptr + p_v, mask=m_tv, other=0.0).to(tl.float32)
    if span <= FACTOR_BOUND:
        sides = (r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, p_k, m_tk, o_k, K, middle, scale)
        out = (work, p_y_local, m_tv, v)
        if BK == KB:  # one key block: both sides in one pass, sharing the key-side operands
            _factorised_pairs(sides, *out, True, True, BT, BK, KB, BV, PRECISION)
        else:  # one side a pass: half the accumulators live
            _factorised_pairs(sides, *out, True, False, BT, BK, KB, BV, PRECISION)
            _factorised_pairs(sides, *out, False, True, BT, BK, KB, BV, PRECISION)
    else:
        tl.store(work + square_t, tl.zeros([BT, BT], dtype=tl.float32))  # columns past n
        tl.store(work + BT * BT + square_t, tl.zeros([BT, BT], dtype=tl.float32))
        tl.debug_barrier()
        rows = (k_ptr, b_ptr, w_ptr, v_ptr, n, H, K, V, o_k, o_v, p_k, m_tk)
        ak_v = _pairs_exact(work, a_ptr, 1.0, *rows, True, BT, BK, KB, BV)
        tl.store(work + 2 * BT * BT + square_v, ak_v)
        qk_v = _pairs_exact(work + BT * BT, r_ptr, scale, *rows, False, BT, BK, KB, BV)
        tl.store(p_y_local, qk_v, mask=m_tv)


@triton.jit
def wkv7_chunk_factors_kernel(
    r_ptr,  # [B, L, H, K]
    w_ptr,  # [B, L, H, K] log-decay
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    a_ptr,  # [B, L, H, K]
    b_ptr,  # [B, L, H, K]
    q_eff_ptr,  # [B, H, NT, BT, K] fp32
    y_local_ptr,  # [B, H, NT, BT, V] fp32
    trans_ptr,  # [B, H, NT, K, K] fp32: M
    drive_ptr,  # [B, H, NT, K, V] fp32: D
    work_ptr,  # [B, H, NT, VT, 3, BT, BT] fp32 scratch: A_ab (then T), A_qb, A_ak v (then W)
    emit_t_ptr,  # [B, P + 1] int32, sorted, sentinel L
    snap_p_ptr,  # [B, P, H, K, K] fp32: P_t at the emission's sorted index
    snap_q_ptr,  # [B, P, H, K, V] fp32: Q_t
    scale,
    L,
    H,
    K,
    V,
    NT,
    P,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    KB: tl.constexpr,  # key channels per block (BK a multiple of it)
    BP: tl.constexpr,  # power of two > P
    HAS_EMIT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Stage 1b: T, the WY factors, and what the state pass reads, a block of ``KB`` key
    channels at a time (``M``: ``KB x KB`` blocks)."""
    ptrs, at = _open_chunk((r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr), L, H, K, V, NT, BT, KB, BV)
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr = ptrs
    c0, n, chunk, o_t, o_k, o_v, m_tk, m_tv, m_kk, m_kv, p_k, p_v = at
    i_b = tl.program_id(1) // H
    i_h = tl.program_id(1) % H
    work = _work_tile(work_ptr, chunk, BT)
    square_v = o_t[:, None] * BV + tl.arange(0, BV)[None, :]
    p_y_local = y_local_ptr + chunk * BT * V + (o_t[:, None] * V + o_v[None, :])

    # Phase 2: T = (I - A_ab)^{-1} (in place of A_ab), U = T A_ak v, W = T (a e^{g_prev})
    inv = _blocked_inverse(work, BT)
    wy_u = tl.dot(inv, tl.load(work + 2 * BT * BT + square_v), input_precision=PRECISION)

    # Phase 3: what the state pass reads
    a_qb = tl.load(work + BT * BT + o_t[:, None] * BT + o_t[None, :])
    y_local = tl.load(p_y_local, mask=m_tv, other=0.0)
    tl.store(p_y_local, tl.dot(a_qb, wy_u, y_local, input_precision=PRECISION), mask=m_tv)
    v = tl.load(v_ptr + p_v, mask=m_tv, other=0.0).to(tl.float32)
    factor_p = tl.program_id(2) == 0  # one V tile stores the V-independent factors
    blocks = (w_ptr, a_ptr, b_ptr, k_ptr, p_k, m_tk, o_k, K, work, v, wy_u, o_t, o_v, V, factor_p)
    if factor_p:  # W, a key block at a time, into the slots of A_qb and A_ak v (read above)
        tl.debug_barrier()
        for kb in tl.static_range(0, BK, KB):
            m, g, w = _key_block(w_ptr, p_k, m_tk, o_k, kb, K)
            a = tl.load(a_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32)
            wy_w = tl.dot(inv, a * tl.exp(g - w), input_precision=PRECISION)
            r = tl.load(r_ptr + kb + p_k, mask=m, other=0.0).to(tl.float32) * scale
            q_eff = tl.dot(a_qb, wy_w, r * tl.exp(g), input_precision=PRECISION)
            p_q_eff = q_eff_ptr + chunk * BT * K + kb + (o_t[:, None] * K + o_k[None, :])
            tl.store(p_q_eff, q_eff, mask=m)
            tl.store(work + BT * BT + (kb // KB) * BT * BT + o_t[:, None] * KB + o_k[None, :], wy_w)
        tl.debug_barrier()
    cut = (trans_ptr + chunk * K * K, drive_ptr + chunk * K * V, n - 1)
    _cut_transition(*cut, *blocks, BT, BK, KB, PRECISION)  # M and D

    if HAS_EMIT:  # S_t = P_t S0 + Q_t at the row's emissions inside the chunk, before its end
        o_p = tl.arange(0, BP)
        times = tl.load(emit_t_ptr + i_b * (P + 1) + o_p, mask=o_p <= P, other=L)
        first = tl.sum((times < c0).to(tl.int32), 0)
        last = tl.sum((times < c0 + n - 1).to(tl.int32), 0)
        for e in range(first, last):
            t = tl.load(emit_t_ptr + i_b * (P + 1) + e) - c0
            snap = (i_b.to(tl.int64) * P + e) * H + i_h
            cut = (snap_p_ptr + snap * K * K, snap_q_ptr + snap * K * V, t)
            _cut_transition(*cut, *blocks, BT, BK, KB, PRECISION)
