"""RWKV-5/6 WKV, chunked prefill, kernel 1 of 2: the state pass across chunks.

One program per ``(V tile, batch row, head)`` carries the fp32 state ``S`` ``[K, BV]`` from
chunk to chunk (``BT`` tokens each) and stores the state entering every chunk into ``h``
``[B, NT, H, K, V]`` (in the dtype of the output kernel's dots), which
:mod:`.chunk_output` reads.  With ``g`` the log-decay summed over the chunk up to and including
token ``j`` (chunk-local, ``<= 0``)::

    S_end = e^{g_last} S + (k e^{g_last - g})^T v          (exponents <= 0, one tensor-core dot)

Instrumentation rides on this pass, at a cost proportional to the events:

* an emission at ``t`` stores ``S_t = e^{g_t - g_a} S_a + (k e^{g_t - g} [a < j <= t])^T v``,
  where ``S_a`` is the chunk's entering state or the state just after the last injection ``a``
  in the chunk (a chunk's last token emits the same way);
* an injection at ``t`` (``add`` or ``set``) acts on ``S_t`` computed the same way, and the
  injected state becomes the base ``S_a`` of the rest of the chunk; so ``h`` (and the final
  state) carry every injection, and the emission at ``t`` sees it (emit after inject).

With neither requested the chunk loop has no inner loop (it is the plain kernel).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import close_matrix_row, end_of_step, open_matrix_row

LOG2E = tl.constexpr(1.4426950408889634)  # log-decays are carried in base 2 (exp2)


@triton.jit
def _state_at(
    S_base,  # [BK, BV] fp32: the state after local token `lo - 1` (the chunk's entering state
    #          when lo == 0)
    g_base,  # [BK] chunk-local cumulative log-decay at lo - 1 (0 when lo == 0), base 2
    kT,  # [BK, BT] keys of the chunk (0 past L)
    g,  # [BK, BT] chunk-local cumulative log-decay, inclusive, base 2
    v,  # [BT, BV] values (0 past L)
    lo,  # first local token that contributes
    t,  # local token whose end state is wanted (lo - 1 <= t < BT)
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``S_t = e^{g_t - g_base} S_base + (k e^{g_t - g} [lo <= j <= t])^T v``."""
    o_t = tl.arange(0, kT.shape[1])
    g_t = tl.sum(tl.where(o_t[None, :] == t, g, 0.0), 1)
    inside = (o_t >= lo) & (o_t <= t)
    k_t = tl.where(
        inside[None, :], kT.to(tl.float32) * tl.exp2(tl.minimum(g_t[:, None] - g, 0.0)), 0.0
    )
    local = tl.dot(k_t.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)
    return tl.exp2(g_t - g_base)[:, None] * S_base + local, g_t


@triton.jit
def wkv6_chunk_states_kernel(
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    w_ptr,  # [B, L, H, K] log-decay, strides (w_sb, w_st, K, 1)
    h_ptr,  # [B, NT, H, K, V] out: the state entering each chunk (dtype of the dots)
    s0_ptr,  # [B, H, K, V] fp32
    sT_ptr,  # [B, H, K, V] fp32
    emit_t_ptr,  # [B, P + 1] int32
    emit_s_ptr,  # [B, P + 1] int32
    states_ptr,  # [B, P, H, K, V] fp32
    inj_t_ptr,  # [B, Q + 1] int32
    inj_s_ptr,  # [B, Q + 1] int32
    inj_v_ptr,  # [B, Q, H, K, V], strides (iv_sb, iv_sq, iv_sh, V, 1)
    inj_scale_ptr,  # [B, Q] fp32
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
    iv_sk,  # (unused: the state dims are dense, see _triton.dense_state_dims)
    iv_sv,  # (unused)
    BK: tl.constexpr,
    BV: tl.constexpr,
    BT: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    emit = (emit_t_ptr, emit_s_ptr, states_ptr, HAS_EMIT)
    inj = (inj_t_ptr, inj_s_ptr, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    S, at, tile, emit, inject, cursors = open_matrix_row(
        s0_ptr, emit, inj, (iv_sb, iv_sh), L, H, K, V, P, Q, BK, BV, HAS_INITIAL
    )
    i_b, i_h, o_k, o_v, m_k, m_v = at
    DOT_DTYPE = h_ptr.dtype.element_ty
    o_t = tl.arange(0, BT)
    row = i_b.to(tl.int64) * L * H + i_h
    k_ptr += row * K
    v_ptr += row * V
    w_ptr += i_b.to(tl.int64) * w_sb + i_h * K
    NT = tl.cdiv(L, BT)
    h_ptr += (i_b.to(tl.int64) * NT * H + i_h) * K * V
    o_kv, m_kv = tile[0], tile[1]

    for i_c in range(NT):
        t = i_c * BT + o_t
        m_t = t < L
        m_kt = m_k[:, None] & m_t[None, :]
        kT = tl.load(k_ptr + t[None, :].to(tl.int64) * H * K + o_k[:, None], mask=m_kt, other=0.0)
        wT = tl.load(w_ptr + t[None, :].to(tl.int64) * w_st + o_k[:, None], mask=m_kt, other=0.0)
        v = tl.load(
            v_ptr + t[:, None].to(tl.int64) * H * V + o_v[None, :],
            mask=m_t[:, None] & m_v[None, :],
            other=0.0,
        )
        tl.store(h_ptr + o_kv, S.to(DOT_DTYPE), mask=m_kv)
        h_ptr += H * K * V
        wT = wT.to(tl.float32) * LOG2E
        g = tl.cumsum(wT, 1)  # [BK, BT], base 2
        if HAS_EMIT or HAS_INJECT:
            # walk the chunk's events in time order; an injection re-bases the rest of it
            end = tl.minimum(i_c * BT + BT, L)
            g_base = tl.sum(g, 1) * 0.0
            lo = i_c * 0
            while tl.minimum(cursors[1], cursors[3]) < end:
                t_ev = tl.minimum(cursors[1], cursors[3])
                injects = cursors[3] == t_ev
                S_t, g_t = _state_at(S, g_base, kT, g, v, lo, t_ev - i_c * BT, DOT_DTYPE, PRECISION)
                S_t, cursors = end_of_step(S_t, t_ev, cursors, emit, inject, tile, H * K * V)
                if HAS_INJECT:
                    if injects:
                        S = S_t
                        g_base = g_t
                        lo = t_ev - i_c * BT + 1
            S, _ = _state_at(S, g_base, kT, g, v, lo, BT - 1, DOT_DTYPE, PRECISION)
        else:  # the same arithmetic as above with no event: emitting leaves h and y unchanged
            S, _ = _state_at(S, tl.sum(g, 1) * 0.0, kT, g, v, 0, BT - 1, DOT_DTYPE, PRECISION)

    close_matrix_row(sT_ptr, S, tile, STORE_FINAL)
