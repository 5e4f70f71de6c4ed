"""Stage 1 of the chunked SSD forward: per (batch row, chunk, head), the discretised step sizes,
their in-chunk cumulative log-decay, and the chunk's local end state.

For the chunk of tokens ``[s, s + T)`` (the last one cut at ``L``) and head ``h``::

    dt_j = clamp(softplus(dt_j + bias))                     (as asked: bias, softplus, limit)
    g_j  = sum_{s <= m <= j} dt_m A log2(e)                 (log2 decay from the chunk start)
    U    = sum_j 2^(g_end - g_j) dt_j x_j B_j^T            ([P, T] x [T, N], one tl.dot per K-block)

(``g_end - g_j`` summed from the chunk's end, not subtracted).

``dt`` and ``g`` are stored per token (``[B, H, NC * T]``, the index is the token) for the later
stages; ``U`` is what the chunk adds to the state carried into it, which the state pass
(:mod:`.state_passing`) decays and sums across chunks.  With segments (``seq_idx`` resets or
``set`` injections), only the tokens of the segment the chunk ends in reach ``U``: a token ``j``
counts when ``token_segment[j] == state_segment[end]``.  Exponents are never positive.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import softplus

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` in float32; exact IEEE products when ``IEEE`` (fp32 inputs, interpreter),
    tensor cores in the operands' dtype otherwise."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def ssd_chunk_state_kernel(
    x_ptr,  # [B, L, H, P]
    dt_ptr,  # [B, L, H]
    A_ptr,  # [H] fp32
    bias_ptr,  # [H] fp32
    B_ptr,  # [B, L, G, N]
    token_seg_ptr,  # [B, L] int32: the segment of token t's update
    state_seg_ptr,  # [B, L] int32: the segment of the state after step t
    dt_out_ptr,  # [B, H, LP] fp32: discretised dt per token
    g_out_ptr,  # [B, H, LP] fp32: in-chunk cumulative log2 decay per token
    to_end_ptr,  # [B, H, LP] fp32 scratch: log2 decay from each token to the chunk's end
    local_ptr,  # [B, NC, H, P, N] fp32: the chunk-local end state U
    L,
    H,
    P,
    N,
    G,
    heads_per_group,
    LP,  # NC * T
    dt_low,
    dt_high,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    T: tl.constexpr,  # chunk length
    BK: tl.constexpr,  # tokens per tl.dot
    BP: tl.constexpr,
    BN: tl.constexpr,
):
    pid_bc = tl.program_id(0)
    h = tl.program_id(1)
    pid_pn = tl.program_id(2)
    chunks = LP // T
    b = (pid_bc // chunks).to(tl.int64)
    c = pid_bc % chunks
    n_tiles = tl.cdiv(N, BN)
    offs_p = (pid_pn // n_tiles) * BP + tl.arange(0, BP)
    offs_n = (pid_pn % n_tiles) * BN + tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    start = c * T
    row = b * L + start  # int64: the chunk's first token; tile offsets below are int32
    valid = L - start  # tokens of this chunk that exist
    grp = h // heads_per_group
    dt_chunk = dt_out_ptr + (b * H + h) * LP + start
    g_chunk = g_out_ptr + (b * H + h) * LP + start

    # whole-chunk dt and cumulative decay, stored per token (every P/N tile of the chunk stores
    # the same values, then reads its own stores back by K-block)
    offs_t = tl.arange(0, T)
    mask_t = offs_t < valid
    dt = tl.load(dt_ptr + (row + offs_t) * H + h, mask=mask_t, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h)
    if SOFTPLUS:
        dt = softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_low), dt_high)
    dt = tl.where(mask_t, dt, 0.0)
    dA = dt * (tl.load(A_ptr + h) * LOG2E)
    tl.store(dt_chunk + offs_t, dt)
    tl.store(g_chunk + offs_t, tl.cumsum(dA, axis=0))
    # sum_{j < m} dA_m summed from the end (not g_end - g_j: no cancellation of large sums)
    to_end_chunk = to_end_ptr + (b * H + h) * LP + start
    tl.store(to_end_chunk + offs_t, tl.cumsum(dA, axis=0, reverse=True) - dA)
    tl.debug_barrier()  # the K-blocks below read back what this CTA just stored
    if HAS_SEGMENTS:
        end_segment = tl.load(state_seg_ptr + row + tl.minimum(T, valid) - 1)

    acc = tl.zeros([BP, BN], dtype=tl.float32)
    x_chunk = x_ptr + (row * H + h) * P
    B_chunk = B_ptr + (row * G + grp) * N
    for k in range(0, T, BK):
        offs_k = k + tl.arange(0, BK)
        mask_k = offs_k < valid
        w = tl.exp2(tl.load(to_end_chunk + offs_k)) * tl.load(dt_chunk + offs_k)  # 0 past L
        if HAS_SEGMENTS:
            seg = tl.load(token_seg_ptr + row + offs_k, mask=mask_k, other=-1)
            w = tl.where(seg == end_segment, w, 0.0)
        x = tl.load(
            x_chunk + offs_k[:, None] * (H * P) + offs_p[None, :],
            mask=mask_k[:, None] & mask_p[None, :],
            other=0.0,
        )
        xw = (x.to(tl.float32) * w[:, None]).to(DOT_DTYPE)
        B_k = tl.load(
            B_chunk + offs_k[:, None] * (G * N) + offs_n[None, :],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        ).to(DOT_DTYPE)
        acc = dot(tl.trans(xw), B_k, acc, IEEE)
    out = local_ptr + ((b * chunks + c) * H + h) * P * N
    tl.store(
        out + offs_p[:, None] * N + offs_n[None, :], acc, mask=mask_p[:, None] & mask_n[None, :]
    )
