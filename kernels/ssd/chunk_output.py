"""Stage 3 of the chunked SSD forward: the outputs of a chunk, and the states emitted in it.

One program per (tile of ``BM`` tokens and ``BP`` head channels, head, batch row and chunk),
with ``g`` and ``dt`` from :mod:`.chunk_state` and ``S_in`` the state entering the chunk from
:mod:`.state_passing`.  For the tile starting at token ``r`` of the chunk it first builds the
state after token ``r - 1`` (transposed, ``[N, P]``)::

    S = 2^(g_{r-1}) S_in + sum_{j < r} 2^(g_{r-1} - g_j) dt_j B_j x_j^T
        + sum_{injections q at t < r} 2^(g_{r-1} - g_t) v_q^T

(a ``[N, BK] x [BK, P]`` tl.dot per K-block before the tile, with no pair matrix), then for the
tile's tokens ``i``::

    y_i = 2^(g_i - g_{r-1}) C_i S  +  sum_{r <= j <= i} (C_i . B_j) 2^(g_i - g_j) dt_j x_j
          + sum_{injections q at r <= t < i} 2^(g_i - g_t) C_i v_q^T
    y_i = (y_i + D x_i) * silu(z_i)

so the ``[BM, BK]`` pair products with their per-element exps are built only on the tile's own
(diagonal) K-blocks.  Each term counts only where its segment is the token's (``seq_idx``
resets and ``set`` injections cut segments: see :mod:`.state_passing`).  An emission at ``t``
falls in exactly one token tile; its programs (one per channel tile) move ``S`` on over the
tile's own tokens up to ``t``, before the tile's outputs::

    S_t = 2^(g_t - g_{r-1}) S + sum_{r <= j <= t} 2^(g_t - g_j) dt_j B_j x_j^T
          + sum_{injections q at r <= t' <= t} 2^(g_t - g_t') v_q^T

(at most ``BM / BK`` K-blocks, the same products that built ``S``), and store rows ``p``; ``y``
does not read ``S_t``, so it is the same with or without emission.  The row's emissions of a
tile and injections of a chunk are found from per-(row, tile) and per-(row, chunk) start
indices into its sorted schedule, computed on the device by the wrapper.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import injected_value
from .chunk_state import dot

#: tokens per K-block of an emission's partial product: the fewest tl.dot takes, which keeps the
#: emitting stage 3 at 181 registers on sm_90 and 40 B of spills on sm_80 (32-token blocks: 200
#: and 64 B; checked ahead of time); its loop is not software-pipelined (stage 3's K-blocks
#: before the tile are)
EMIT_BK = tl.constexpr(16)


@triton.jit
def add_tokens(
    S,  # [BN, BP] fp32: a state, transposed
    k_from,
    k_to,  # the K-blocks [k_from, k_to) of the chunk, BK tokens each
    last,  # tokens after it do not count
    g_to,  # the log2 decay from the chunk's start to the state's token
    seg_to,  # the state's segment (when HAS_SEGMENTS)
    tokens,  # (x_chunk, B_chunk, g_chunk, dt_chunk, token_seg_chunk, X_STEP, BC_STEP)
    offs_n,
    offs_p,
    mask_n,
    mask_p,
    HAS_SEGMENTS: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    BK: tl.constexpr,
    STAGES: tl.constexpr,  # software-pipelining stages of the K-block loop
):
    """``S + sum_j 2^(g_to - g_j) dt_j B_j x_j^T`` over the tokens ``j <= last`` of the blocks
    (those of the state's segment): an ``[N, BK] x [BK, P]`` tl.dot per block."""
    x_chunk, B_chunk, g_chunk, dt_chunk, token_seg_chunk, X_STEP, BC_STEP = tokens
    for k in tl.range(k_from, k_to, BK, num_stages=STAGES):
        offs_j = k + tl.arange(0, BK)
        mask_j = offs_j <= last
        c_j = tl.exp2(tl.where(mask_j, g_to - tl.load(g_chunk + offs_j), float("-inf")))
        c_j *= tl.load(dt_chunk + offs_j)
        if HAS_SEGMENTS:
            seg_j = tl.load(token_seg_chunk + offs_j, mask=mask_j, other=-2)
            c_j = tl.where(seg_j == seg_to, c_j, 0.0)
        B_j = tl.load(
            B_chunk + offs_j[:, None] * BC_STEP + offs_n[None, :],
            mask=mask_j[:, None] & mask_n[None, :],
            other=0.0,
        )
        B_j = (B_j.to(tl.float32) * c_j[:, None]).to(DOT_DTYPE)
        x_j = tl.load(
            x_chunk + offs_j[:, None] * X_STEP + offs_p[None, :],
            mask=mask_j[:, None] & mask_p[None, :],
            other=0.0,
        ).to(DOT_DTYPE)
        S = dot(tl.trans(B_j), x_j, S, IEEE)
    return S


@triton.jit
def slot_value(inject, q, v_at, mask_np, HAS_SCALE: tl.constexpr):
    """The value (times its scale) of the row's injection ``q`` on the program's transposed
    ``[BN, BP]`` tile, float32.  The tile's offsets in the dense ``[P, N]`` slot are built here,
    where the value is loaded (kept across the kernel they would hold a register per element)."""
    _, slots_ptr, value_ptr, value_slot_stride, scale_ptr = inject
    offs_n, offs_p, N = v_at
    offsets = offs_p[None, :] * N + offs_n[:, None]
    slot = tl.load(slots_ptr + q).to(tl.int64)
    return injected_value(
        slot, value_ptr, value_slot_stride, scale_ptr, offsets, mask_np, HAS_SCALE
    )


@triton.jit
def add_injections(
    S,  # [BN, BP] fp32: a state, transposed
    q,  # cursor into the row's sorted schedule
    t_q,  # its time, in the chunk
    last,  # injections up to this token (in the chunk) count
    g_to,
    seg_to,
    inject,  # (times_ptr, slots_ptr, value_ptr, value_slot_stride, scale_ptr) of this row
    start,
    g_chunk,
    state_seg_chunk,
    v_at,  # (offs_n [BN], offs_p [BP], N): the tile of one slot of inject_value (dense [P, N])
    mask_np,
    HAS_SEGMENTS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    """``S + sum_q 2^(g_to - g_q) v_q`` over the injections from the cursor up to ``last``
    (those of the state's segment); returns ``(S, q, t_q)`` with the cursor past them."""
    times_ptr = inject[0]
    while t_q <= last:  # (the sentinel L stops it)
        w_q = tl.exp2(g_to - tl.load(g_chunk + t_q))
        if HAS_SEGMENTS:
            w_q = tl.where(tl.load(state_seg_chunk + t_q) == seg_to, w_q, 0.0)
        S += w_q * slot_value(inject, q, v_at, mask_np, HAS_SCALE)
        q += 1
        t_q = tl.load(times_ptr + q) - start
    return S, q, t_q


@triton.jit
def move_state(
    S,  # [BN, BP] fp32: the state after the token before K-block k_from, decayed to g_to
    k_from,
    k_to,
    last,  # the token (in the chunk) the state is moved to
    g_to,
    seg_to,
    q,  # the injection cursor and its time (in the chunk)
    t_q,
    tokens,  # see add_tokens
    tile,  # (offs_n, offs_p, mask_n, mask_p)
    injections,  # (inject, start, g_chunk, state_seg_chunk, v_at, mask_np): see add_injections
    HAS_SEGMENTS: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    BK: tl.constexpr,
    STAGES: tl.constexpr,
):
    """The state after token ``last``: the tokens of K-blocks ``[k_from, k_to)`` up to ``last``
    (:func:`add_tokens`), then the injections from the cursor up to ``last``
    (:func:`add_injections`).  Returns ``(S, q, t_q)``, the cursor past those injections."""
    offs_n, offs_p, mask_n, mask_p = tile
    S = add_tokens(
        S, k_from, k_to, last, g_to, seg_to, tokens, offs_n, offs_p, mask_n, mask_p,
        HAS_SEGMENTS, IEEE, DOT_DTYPE, BK, STAGES,
    )  # fmt: skip
    if HAS_INJECT:
        inject, start, g_chunk, state_seg_chunk, v_at, mask_np = injections
        S, q, t_q = add_injections(
            S, q, t_q, last, g_to, seg_to, inject, start, g_chunk, state_seg_chunk, v_at,
            mask_np, HAS_SEGMENTS, HAS_SCALE,
        )  # fmt: skip
    return S, q, t_q


@triton.jit
def ssd_chunk_output_kernel(
    x_ptr,  # [B, L, H, P]
    z_ptr,  # [B, L, H, P]
    y_ptr,  # [B, L, H, P]
    B_ptr,  # [B, L, G, N]
    C_ptr,  # [B, L, G, N]
    D_ptr,  # [H, P] fp32, strided (d_h, d_p)
    d_h,
    d_p,
    dt_ptr,  # [B, H, LP] fp32
    g_ptr,  # [B, H, LP] fp32
    entering_ptr,  # [B, NC, H, P, N] fp32
    token_seg_ptr,  # [B, L] int32
    state_seg_ptr,  # [B, L] int32
    emit_t_ptr,  # [B, E + 1] int32 ascending, sentinel L
    emit_s_ptr,  # [B, E + 1] int32
    emit_first_ptr,  # [B, NC * T / BM] int32: the row's first emission at or after each tile
    states_ptr,  # [B, E, H, P, N] fp32
    inj_t_ptr,  # [B, Q + 1] int32 ascending, sentinel L
    inj_s_ptr,  # [B, Q + 1] int32
    inj_first_ptr,  # [B, NC] int32: the row's first injection at or after each chunk
    inj_v_ptr,  # [B, Q, H, P, N] fp32, strides (v_b, v_q, v_h, N, 1)
    inj_scale_ptr,  # [B, Q] fp32
    v_b,
    v_q,
    v_h,
    v_p,  # (unused: the state dims are dense, see _triton.dense_state_dims)
    v_n,  # (unused)
    L,
    H,
    P,
    N,
    G,
    heads_per_group,
    LP,
    E,
    Q,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    T: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
):
    M_TILES: tl.constexpr = T // BM
    m = tl.program_id(0) % M_TILES
    offs_p = (tl.program_id(0) // M_TILES) * BP + tl.arange(0, BP)
    h = tl.program_id(1)
    chunks = LP // T
    b = (tl.program_id(2) // chunks).to(tl.int64)
    c = tl.program_id(2) % chunks
    start = c * T
    row = b * L + start  # int64: the chunk's first token; tile offsets below are int32
    valid = L - start  # tokens of this chunk that exist
    X_STEP = H * P  # elements between tokens in x, z, y
    BC_STEP = G * N  # in B, C
    grp = h // heads_per_group
    x_chunk = x_ptr + (row * H + h) * P
    B_chunk = B_ptr + (row * G + grp) * N
    g_chunk = g_ptr + (b * H + h) * LP + start
    dt_chunk = dt_ptr + (b * H + h) * LP + start
    entering = entering_ptr + ((b * chunks + c) * H + h) * P * N
    offs_i = m * BM + tl.arange(0, BM)  # in the chunk
    offs_n = tl.arange(0, BN)
    mask_i = offs_i < valid
    mask_p = offs_p < P
    mask_n = offs_n < N

    g_i = tl.load(g_chunk + offs_i)
    ref = m * BM  # the tile's first token, in the chunk
    g_prev = tl.where(m > 0, tl.load(g_chunk + tl.maximum(ref - 1, 0)), 0.0)
    mask_np = mask_n[:, None] & mask_p[None, :]

    # S: the state after token ref - 1 (transposed, [BN, BP]): the entering state decayed, plus
    # the chunk's tokens and injections before the tile
    S = tl.load(entering + offs_p[None, :] * N + offs_n[:, None], mask=mask_np, other=0.0)
    S = S * tl.exp2(g_prev)
    if HAS_SEGMENTS:
        seg_i = tl.load(token_seg_ptr + row + offs_i, mask=mask_i, other=-1)
        seg_in = tl.load(state_seg_ptr + tl.maximum(row - 1, 0))
        seg_in = tl.where(c > 0, seg_in, 0)  # the entering state's segment
        seg_prev = tl.load(state_seg_ptr + row + tl.maximum(ref - 1, 0))
        seg_prev = tl.where(m > 0, seg_prev, seg_in)  # the segment of S
        S = S * tl.where(seg_prev == seg_in, 1.0, 0.0)
    token_seg_chunk = token_seg_ptr + row
    state_seg_chunk = state_seg_ptr + row
    if not HAS_SEGMENTS:
        seg_prev = 0  # (not read)
    tokens = (x_chunk, B_chunk, g_chunk, dt_chunk, token_seg_chunk, X_STEP, BC_STEP)
    tile = (offs_n, offs_p, mask_n, mask_p)
    q = c * 0  # the row's injection cursor (HAS_INJECT) and its time in the chunk
    t_q = valid
    if HAS_INJECT:  # the chunk's injections, from its first one on
        inj_t_ptr += b * (Q + 1)
        inj_s_ptr += b * (Q + 1)
        inj_v_ptr += b * v_b + h * v_h
        inj_scale_ptr += b * Q
        q = tl.load(inj_first_ptr + b * chunks + c)
        t_q = tl.load(inj_t_ptr + q) - start
    inject = (inj_t_ptr, inj_s_ptr, inj_v_ptr, v_q, inj_scale_ptr)
    v_at = (offs_n, offs_p, N)
    injections = (inject, start, g_chunk, state_seg_chunk, v_at, mask_np)
    S, q, t_q = move_state(
        S, 0, ref, tl.minimum(ref, valid) - 1, g_prev, seg_prev, q, t_q, tokens, tile,
        injections, HAS_SEGMENTS, HAS_INJECT, HAS_SCALE, IEEE, DOT_DTYPE, BK, 2,
    )  # fmt: skip

    if HAS_EMIT:  # the states at this tile's emission times: S moved on over the tile's tokens
        emit_t_ptr += b * (E + 1)
        emit_s_ptr += b * (E + 1)
        e = tl.load(emit_first_ptr + b * (LP // BM) + c * M_TILES + m)
        t_e = tl.load(emit_t_ptr + e) - start  # in the chunk
        while t_e < tl.minimum(ref + BM, valid):  # the sentinel L stops it
            g_e = tl.load(g_chunk + t_e)
            decay = tl.exp2(g_e - g_prev)
            seg_e = 0
            if HAS_SEGMENTS:
                seg_e = tl.load(state_seg_chunk + t_e)
                decay = tl.where(seg_e == seg_prev, decay, 0.0)
            S_e, _, _ = move_state(
                S * decay, ref, t_e + 1, t_e, g_e, seg_e, q, t_q, tokens, tile, injections,
                HAS_SEGMENTS, HAS_INJECT, HAS_SCALE, IEEE, DOT_DTYPE, EMIT_BK, 1,
            )  # fmt: skip
            slot = tl.load(emit_s_ptr + e).to(tl.int64)
            emitted = states_ptr + ((b * E + slot) * H + h) * P * N
            tl.store(emitted + offs_p[None, :] * N + offs_n[:, None], S_e, mask=mask_np)
            e += 1
            t_e = tl.load(emit_t_ptr + e) - start

    C_chunk = C_ptr + (row * G + grp) * N
    C_i = tl.load(
        C_chunk + offs_i[:, None] * BC_STEP + offs_n[None, :],
        mask=mask_i[:, None] & mask_n[None, :],
        other=0.0,
    ).to(DOT_DTYPE)
    to_tile = tl.exp2(g_i - g_prev)
    if HAS_SEGMENTS:
        to_tile = tl.where(seg_i == seg_prev, to_tile, 0.0)
    acc = dot(C_i, S.to(DOT_DTYPE), tl.zeros([BM, BP], dtype=tl.float32), IEEE)
    acc = acc * to_tile[:, None]
    for kk in tl.static_range(0, BM, BK):  # the tile's own tokens: the causal pair products
        offs_j = ref + kk + tl.arange(0, BK)
        mask_j = offs_j < valid
        B_j = tl.load(
            B_chunk + offs_j[:, None] * BC_STEP + offs_n[None, :],
            mask=mask_j[:, None] & mask_n[None, :],
            other=0.0,
        ).to(DOT_DTYPE)
        CB = dot(C_i, tl.trans(B_j), tl.zeros([BM, BK], dtype=tl.float32), IEEE)
        g_j = tl.load(g_chunk + offs_j)
        dt_j = tl.load(dt_chunk + offs_j)
        causal = offs_i[:, None] >= offs_j[None, :]
        w = tl.exp2(tl.where(causal, g_i[:, None] - g_j[None, :], float("-inf"))) * dt_j[None, :]
        if HAS_SEGMENTS:
            seg_j = tl.load(token_seg_ptr + row + offs_j, mask=mask_j, other=-2)
            w = tl.where(seg_i[:, None] == seg_j[None, :], w, 0.0)
        x_j = tl.load(
            x_chunk + offs_j[:, None] * X_STEP + offs_p[None, :],
            mask=mask_j[:, None] & mask_p[None, :],
            other=0.0,
        ).to(DOT_DTYPE)
        acc = dot((CB * w).to(DOT_DTYPE), x_j, acc, IEEE)

    if HAS_INJECT:  # injections inside the tile, at t < i
        while t_q < tl.minimum(ref + BM, valid) - 1:
            w_q = tl.exp2(tl.where(offs_i > t_q, g_i - tl.load(g_chunk + t_q), float("-inf")))
            if HAS_SEGMENTS:
                w_q = tl.where(seg_i == tl.load(state_seg_chunk + t_q), w_q, 0.0)
            v_t = slot_value(inject, q, v_at, mask_np, HAS_SCALE)  # [BN, BP]
            seen = dot(C_i, v_t.to(DOT_DTYPE), tl.zeros([BM, BP], dtype=tl.float32), IEEE)
            acc += seen * w_q[:, None]
            q += 1
            t_q = tl.load(inj_t_ptr + q) - start

    mask_ip = mask_i[:, None] & mask_p[None, :]
    io = (row * H + h) * P + offs_i[:, None] * X_STEP + offs_p[None, :]
    if HAS_D:
        D = tl.load(D_ptr + h * d_h + offs_p * d_p, mask=mask_p, other=0.0)
        x_i = tl.load(x_ptr + io, mask=mask_ip, other=0.0).to(tl.float32)
        acc += D[None, :] * x_i
    if HAS_Z:
        z = tl.load(z_ptr + io, mask=mask_ip, other=0.0).to(tl.float32)
        acc *= z * tl.sigmoid(z)
    tl.store(y_ptr + io, acc.to(y_ptr.dtype.element_ty), mask=mask_ip)
