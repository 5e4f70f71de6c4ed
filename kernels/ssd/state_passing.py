"""Stage 2 of the chunked SSD forward: the state carried across chunks, and the injections.

One program per (tile of ``BLOCK`` state elements of ``[P, N]``, head, batch row) walks the row's
chunks in order, with ``S`` the state entering chunk ``c`` (the initial state, or zeros, for
chunk 0)::

    entering[c] = S                                        (stored over U_c, in place)
    S = [same segment] 2^(g_end) S + U_c
        + sum_{injections q in c} [same segment] 2^(g_end - g_q) v_q

``g`` and ``U`` come from :mod:`.chunk_state`.  Injections are linear in the state, so an ``add``
at ``t`` is its value decayed to the chunk end; a ``set`` at ``t`` is a segment boundary right
after ``t`` (nothing before reaches later tokens: stage 1 and the ``[same segment]`` factors
drop it) followed by the same decayed value.  A quantity reaches the chunk's end state when its
segment is ``state_segment[end]``: the entering state's is ``state_segment[s - 1]`` (0 for the
first chunk), an injection's ``state_segment[t]``.  The row's injections are walked with one
cursor over its sorted schedule (the pass is serial in time).  The state after the last chunk is
the final state.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import injected_value


@triton.jit
def ssd_state_passing_kernel(
    states_ptr,  # [B, NC, H, P * N] fp32: U_c in, the entering states out
    g_ptr,  # [B, H, LP] fp32
    state_seg_ptr,  # [B, L] int32
    h0_ptr,  # [B, H, P * N] fp32
    hT_ptr,  # [B, H, P * N] fp32
    inj_t_ptr,  # [B, Q + 1] int32 ascending, sentinel L
    inj_s_ptr,  # [B, Q + 1] int32
    inj_v_ptr,  # [B, Q, H, P, N] fp32, strided
    inj_scale_ptr,  # [B, Q] fp32
    v_b,
    v_q,
    v_h,
    v_p,
    v_n,
    L,
    H,
    N,
    PN,
    LP,
    Q,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    T: tl.constexpr,
    BLOCK: tl.constexpr,
):
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    chunks = LP // T
    per_head = (b * H + h) * LP
    if HAS_INITIAL:
        S = tl.load(h0_ptr + (b * H + h) * PN + offs, mask=mask, other=0.0)
    else:
        S = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_SEGMENTS:
        segment = tl.program_id(2) * 0  # the entering state's segment (int32)
    if HAS_INJECT:
        inj_t_ptr += b * (Q + 1)
        inj_s_ptr += b * (Q + 1)
        inj_scale_ptr += b * Q
        inj_v_ptr += b * v_b + h * v_h
        v_off = (offs // N) * v_p + (offs % N) * v_n
        cursor = 0
        next_t = tl.load(inj_t_ptr)
    at = states_ptr + (b * chunks * H + h) * PN + offs  # chunk 0's
    first = 0
    while first < L:  # one chunk per trip (a counted loop would be unrolled by ptxas)
        local = tl.load(at, mask=mask, other=0.0)
        tl.store(at, S, mask=mask)
        end = tl.minimum(first + T, L) - 1
        g_end = tl.load(g_ptr + per_head + end)
        decay = tl.exp2(g_end)
        if HAS_SEGMENTS:
            end_segment = tl.load(state_seg_ptr + b * L + end)
            decay = tl.where(end_segment == segment, decay, 0.0)
            segment = end_segment
        S = S * decay + local
        if HAS_INJECT:
            while next_t <= end:
                slot = tl.load(inj_s_ptr + cursor).to(tl.int64)
                value = injected_value(slot, inj_v_ptr, v_q, inj_scale_ptr, v_off, mask, HAS_SCALE)
                weight = tl.exp2(g_end - tl.load(g_ptr + per_head + next_t))
                if HAS_SEGMENTS:
                    own = tl.load(state_seg_ptr + b * L + next_t)
                    weight = tl.where(own == end_segment, weight, 0.0)
                S += weight * value
                cursor += 1
                next_t = tl.load(inj_t_ptr + cursor)
        first = end + 1
        at += H * PN
    if STORE_FINAL:
        tl.store(hT_ptr + (b * H + h) * PN + offs, S, mask=mask)
