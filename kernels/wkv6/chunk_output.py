"""RWKV-5/6 WKV, chunked prefill, kernel 2 of 2: the outputs of one chunk.

One program per ``(V tile, batch row, head, chunk)`` (all of them independent) computes the
``BT`` outputs of its chunk from the state ``h`` entering it (written by :mod:`.chunk_states`)::

    y_i = (r_i e^{ge_i}) h + sum_{j<i} A_ij v_j + (r_i . u . k_i) v_i,
    A_ij = sum_c r_ic k_jc e^{ge_ic - g_jc}

with ``g_j`` the chunk-local cumulative log-decay including token ``j`` and ``ge_i = g_{i-1}``
(carried in base 2).  The chunk is cut into ``NB = BT / BC`` sub-blocks of ``BC`` tokens:

* the diagonal sub-blocks are exact, per element, all ``NB`` at once: one key column of every
  sub-block per step (``BC`` steps of ``[NB, BC, K]`` exps), the bonus ``u`` on the diagonal;
* then, per row sub-block ``ib`` (starting at token ``s``), the earlier sub-blocks ``jb < ib``
  factorise through ``s``: ``e^{ge_i - g_j} = e^{ge_i - g_s} . e^{g_s - g_j}`` (both exponents
  ``<= 0`` whatever the decay), a tensor-core dot ``[BC, K] x [K, BC]`` per pair; the
  sub-block's row of the matrix meets ``v`` in ``[BC, BC] x [BC, BV]`` dots, and the entering
  state's term ``(r_i e^{ge_i}) h`` is one dot ``[BC, K] x [K, BV]``.

So the intra-chunk matrix is built once per (row, head, chunk) when ``V <= 64`` (one V tile),
each exp of it once, and every operand is a small tile (at most 128 registers at 8 warps).

Injections are linear in the state, so the chunk's outputs after an injection at ``t`` are
corrected here (the state pass already carried the injection into ``h`` of later chunks):

* ``add``: ``y_i += (r_i e^{ge_i - g_t}) value`` for ``t < i`` in the chunk;
* ``set``: a reset: ``y_i`` keeps only the terms after the row's last set before ``i`` (``h``
  and ``A_ij`` masked where a set lies in ``[j, i)``, like ``seq_idx``), plus
  ``(r_i e^{ge_i - g_t}) value`` from that set.

The chunk's injections are read from the row's sorted schedule from the chunk's first one on,
an index computed once per pass on the device (no host sync).  Emissions never reach this
kernel: ``y`` is the plain kernel's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import injected_value, open_schedules

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _sets_before(times_ptr, first, end, t):
    """Per token of ``t`` (any shape, int32), how many of the row's sorted injection times from
    index ``first`` up to ``end`` (exclusive) lie before it."""
    count = t * 0
    cursor = first
    t_ev = tl.load(times_ptr + cursor)
    while t_ev < end:
        count += (t > t_ev).to(tl.int32)
        cursor += 1
        t_ev = tl.load(times_ptr + cursor)
    return count


@triton.jit
def wkv6_chunk_output_kernel(
    r_ptr,  # [B, L, H, K]
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    w_ptr,  # [B, L, H, K] log-decay, strides (w_sb, w_st, K, 1)
    u_ptr,  # [H, K]
    y_ptr,  # [B, L, H, V]
    h_ptr,  # [B, NT, H, K, V]: the state entering each chunk (dtype of the dots)
    inj_t_ptr,  # [B, Q + 1] int32
    inj_s_ptr,  # [B, Q + 1] int32
    inj_first_ptr,  # [B, NT] int32: the row's first injection at or after each chunk
    inj_v_ptr,  # [B, Q, H, K, V], strides (iv_sb, iv_sq, iv_sh, V, 1)
    inj_scale_ptr,  # [B, Q] fp32
    scale,
    L,
    H,
    K,
    V,
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
    BC: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    NB: tl.constexpr = BT // BC
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_c = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    dot_dtype = h_ptr.dtype.element_ty
    c0 = i_c * BT
    o_i = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    row = i_b.to(tl.int64) * L * H + i_h
    r_ptr += row * K
    k_ptr += row * K
    v_ptr += row * V
    y_ptr += row * V
    w_ptr += i_b.to(tl.int64) * w_sb + i_h * K
    u = tl.load(u_ptr + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    NT = tl.cdiv(L, BT)
    h_off = ((i_b.to(tl.int64) * NT + i_c) * H + i_h) * K * V
    h = tl.load(h_ptr + h_off + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)

    if HAS_INJECT:
        emit = (inj_t_ptr, inj_s_ptr, inj_scale_ptr, False)  # no emission here
        inj = (
            inj_t_ptr,
            inj_s_ptr,
            inj_v_ptr + i_b.to(tl.int64) * iv_sb + i_h * iv_sh,
            iv_sq,
            inj_scale_ptr,
            HAS_INJECT,
            INJECT_SET,
            HAS_SCALE,
        )
        _, inj, _ = open_schedules(emit, inj, i_b, L, 0, Q)
        times_ptr, slots_ptr, value_ptr, _, scale_ptr, _, _, _ = inj
        end = tl.minimum(c0 + BT, L)
        first = tl.load(inj_first_ptr + i_b * NT + i_c)

    # the diagonal sub-blocks, exact, all NB at once as [NB, BC, BK]: one key column of every
    # sub-block per step; A_diag [NB, BC, BC] (log-decays in base 2, sub-block-local here)
    o_n = tl.arange(0, NB)
    t3 = c0 + o_n[:, None] * BC + o_i[None, :]
    m3 = (t3 < L)[:, :, None] & m_k[None, None, :]
    p3 = t3[:, :, None].to(tl.int64) * H * K + o_k[None, None, :]
    r3 = tl.load(r_ptr + p3, mask=m3, other=0.0).to(tl.float32) * scale
    k3 = tl.load(k_ptr + p3, mask=m3, other=0.0).to(tl.float32)
    bonus = tl.sum(r3 * u[None, None, :] * k3, 2)  # [NB, BC]
    w3 = tl.load(
        w_ptr + t3[:, :, None].to(tl.int64) * w_st + o_k[None, None, :], mask=m3, other=0.0
    )
    w3 = w3.to(tl.float32) * LOG2E
    ge3 = tl.cumsum(w3, 1) - w3  # exclusive
    A3 = tl.zeros([NB, BC, BC], dtype=tl.float32)
    g_j = tl.zeros([NB, BK], dtype=tl.float32)
    for jj in range(BC):
        t_j = c0 + o_n * BC + jj
        m_jk = (t_j < L)[:, None] & m_k[None, :]
        p_j = t_j[:, None].to(tl.int64) * H * K + o_k[None, :]
        k_j = tl.load(k_ptr + p_j, mask=m_jk, other=0.0).to(tl.float32)
        w_j = tl.load(w_ptr + t_j[:, None].to(tl.int64) * w_st + o_k[None, :], mask=m_jk, other=0.0)
        g_j += w_j.to(tl.float32) * LOG2E
        # exponents > 0 (rows i <= jj) may overflow: the where below drops those sums
        a = tl.sum(r3 * k_j[:, None, :] * tl.exp2(ge3 - g_j[:, None, :]), 2)  # [NB, BC]
        A3 = tl.where(o_i[None, None, :] == jj, a[:, :, None], A3)
    A3 = tl.where(o_i[None, :, None] > o_i[None, None, :], A3, 0.0)
    A3 = tl.where(o_i[None, :, None] == o_i[None, None, :], bonus[:, :, None], A3)
    if INJECT_SET:
        seg3 = _sets_before(times_ptr, first, end, t3)  # [NB, BC]
        A3 = tl.where(seg3[:, :, None] == seg3[:, None, :], A3, 0.0)

    # one row sub-block ib at a time; log-decays chunk-local
    g_s = tl.zeros([BK], dtype=tl.float32)  # g before sub-block ib
    for ib in range(NB):
        t_i = c0 + ib * BC + o_i
        m_i = t_i < L
        m_ik = m_i[:, None] & m_k[None, :]
        p_i = t_i[:, None].to(tl.int64) * H * K + o_k[None, :]
        r_i = tl.load(r_ptr + p_i, mask=m_ik, other=0.0).to(tl.float32) * scale
        w_i = tl.load(w_ptr + t_i[:, None].to(tl.int64) * w_st + o_k[None, :], mask=m_ik, other=0.0)
        w_i = w_i.to(tl.float32) * LOG2E
        ge_i = g_s[None, :] + tl.cumsum(w_i, 0) - w_i  # exclusive
        if INJECT_SET:
            seg_i = _sets_before(times_ptr, first, end, t_i)
        A = tl.sum(tl.where((o_n == ib)[:, None, None], A3, 0.0), 0)  # the diagonal sub-block
        v_i = tl.load(
            v_ptr + t_i[:, None].to(tl.int64) * H * V + o_v[None, :],
            mask=m_i[:, None] & m_v[None, :],
            other=0.0,
        )
        acc = tl.dot(A.to(dot_dtype), v_i.to(dot_dtype), input_precision=PRECISION)

        # the earlier sub-blocks: e^{ge_i - g_j} = e^{ge_i - g_s} . e^{g_s - g_j}
        q_i = (r_i * tl.exp2(ge_i - g_s[None, :])).to(dot_dtype)
        g_b = tl.zeros([BK], dtype=tl.float32)  # g before sub-block jb
        for jb in range(ib):
            t_c = c0 + jb * BC + o_i
            m_c = t_c < L
            m_ck = m_c[:, None] & m_k[None, :]
            p_c = t_c[:, None].to(tl.int64) * H
            k_c = tl.load(k_ptr + p_c * K + o_k[None, :], mask=m_ck, other=0.0).to(tl.float32)
            w_c = tl.load(
                w_ptr + t_c[:, None].to(tl.int64) * w_st + o_k[None, :], mask=m_ck, other=0.0
            )
            w_c = w_c.to(tl.float32) * LOG2E
            g_c = g_b[None, :] + tl.cumsum(w_c, 0)
            g_b += tl.sum(w_c, 0)
            k_c = k_c * tl.exp2(tl.minimum(g_s[None, :] - g_c, 0.0))  # k_j e^{g_s - g_j}
            a = tl.dot(q_i, tl.trans(k_c.to(dot_dtype)), input_precision=PRECISION)  # [BC, BC]
            if INJECT_SET:
                a = tl.where(seg_i[:, None] == _sets_before(times_ptr, first, end, t_c), a, 0.0)
            v_c = tl.load(
                v_ptr + p_c * V + o_v[None, :], mask=m_c[:, None] & m_v[None, :], other=0.0
            )
            acc = tl.dot(a.to(dot_dtype), v_c.to(dot_dtype), acc, input_precision=PRECISION)

        # the entering state: (r_i e^{ge_i}) h
        q_h = r_i * tl.exp2(ge_i)
        if INJECT_SET:
            q_h = tl.where((seg_i == 0)[:, None], q_h, 0.0)
        acc = tl.dot(q_h.to(dot_dtype), h, acc, input_precision=PRECISION)

        if HAS_INJECT:  # (r_i e^{ge_i - g_t}) value for the tokens i an injection at t reaches
            cursor = first
            t_ev = tl.load(times_ptr + cursor)
            while t_ev < end:
                slot = tl.load(slots_ptr + cursor).to(tl.int64)
                o_val = o_k[:, None] * V + o_v[None, :]  # the state dims are dense
                value = injected_value(slot, value_ptr, iv_sq, scale_ptr, o_val, m_kv, HAS_SCALE)
                cursor += 1
                t_next = tl.load(times_ptr + cursor)
                g_t = tl.zeros([BK], dtype=tl.float32)  # g at t
                for pb in range(NB):
                    t_p = c0 + pb * BC + o_i
                    upto = ((t_p <= t_ev) & (t_p < L))[:, None] & m_k[None, :]
                    p_p = t_p[:, None].to(tl.int64) * w_st + o_k[None, :]
                    g_t += tl.sum(tl.load(w_ptr + p_p, mask=upto, other=0.0).to(tl.float32), 0)
                g_t = g_t * LOG2E
                after = t_i > t_ev
                if INJECT_SET:
                    after = after & (t_i <= t_next)
                rows = r_i * tl.exp2(tl.minimum(ge_i - g_t[None, :], 0.0))
                rows = tl.where(after[:, None], rows, 0.0)
                acc = tl.dot(
                    rows.to(dot_dtype), value.to(dot_dtype), acc, input_precision=PRECISION
                )
                t_ev = t_next

        p_y = t_i[:, None].to(tl.int64) * H * V + o_v[None, :]
        tl.store(y_ptr + p_y, acc.to(y_ptr.dtype.element_ty), mask=m_i[:, None] & m_v[None, :])
        g_s += tl.sum(w_i, 0)
