"""RWKV-4 WKV, recurrent Triton forward in the stable ``(aa, bb, pp)`` form, with fused emit/inject.

One program (one warp) per ``(channel block, batch row)`` carries the three fp32 vectors of the
state ``S = (aa, bb, pp)`` ``[3, BC]`` in registers through ``t = 0 .. L-1`` (reference.py has
the update), a thread per channel; ``BC = 32`` spreads a row's channels over ``C / 32``
programs, so a small batch still fills the SMs.  The walk is cut into segments that end at the
row's next emission or injection step (one segment when nothing is scheduled), so the
per-token loop carries no schedule checks.  Emission stores the triple as carried; ``add``
adds to it elementwise and ``set`` replaces it (docs/semantics.md), after ``y_t``.  Also the
decode step (``L = 1``, in place).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton
from .._contract import ScanOutput, float64_runs
from .._triton import KernelInstrumentation, injected_value, open_schedules
from .reference import EMPTY_MAX, validate, wkv4

BLOCK_C = 32  # channels per program: one per thread, one warp (C / 32 programs per row)


@triton.jit
def _inject_triple(aa, bb, pp, t, cur, nxt, inject, o_val, sr, m):
    """At ``t == nxt``: the injection into each row of the triple (row offsets ``0, sr, 2 sr``
    in the value), in one branch; advances the cursor."""
    times_ptr, slots_ptr, value_ptr, value_slot_stride, scale_ptr, _, INJECT_SET, HAS_SCALE = inject
    if t == nxt:
        slot = tl.load(slots_ptr + cur).to(tl.int64)
        values = (value_ptr, value_slot_stride, scale_ptr)
        da = injected_value(slot, *values, o_val, m, HAS_SCALE)
        db = injected_value(slot, *values, o_val + sr, m, HAS_SCALE)
        dp = injected_value(slot, *values, o_val + 2 * sr, m, HAS_SCALE)
        if INJECT_SET:
            aa, bb, pp = da, db, dp
        else:
            aa, bb, pp = aa + da, bb + db, pp + dp
        cur += 1
        nxt = tl.load(times_ptr + cur)
    return aa, bb, pp, cur, nxt


@triton.jit
def _emit_triple(aa, bb, pp, t, cur, nxt, emit, C, o_c, m):
    """At ``t == nxt``: the triple into ``states[b, slot]`` ``[3, C]``, in one branch; advances
    the cursor."""
    times_ptr, slots_ptr, states_ptr, _ = emit
    if t == nxt:
        slot = tl.load(slots_ptr + cur).to(tl.int64)
        row = states_ptr + slot * 3 * C + o_c
        tl.store(row, aa, mask=m)
        tl.store(row + C, bb, mask=m)
        tl.store(row + 2 * C, pp, mask=m)
        cur += 1
        nxt = tl.load(times_ptr + cur)
    return cur, nxt


@triton.jit
def wkv4_recurrent_kernel(
    w_ptr,  # [C] log-decay
    u_ptr,  # [C]
    k_ptr,  # [B, L, C]
    v_ptr,  # [B, L, C]
    y_ptr,  # [B, L, C]
    s0_ptr,  # [B, 3, C] fp32
    sT_ptr,  # [B, 3, C] fp32 (may be s0_ptr: in place)
    emit_t_ptr,  # [B, P + 1] int32
    emit_s_ptr,  # [B, P + 1] int32
    states_ptr,  # [B, P, 3, C] fp32
    inj_t_ptr,  # [B, Q + 1] int32
    inj_s_ptr,  # [B, Q + 1] int32
    inj_v_ptr,  # [B, Q, 3, C] strided
    inj_scale_ptr,  # [B, Q] fp32
    L,
    C,
    P,
    Q,
    iv_sb,
    iv_sq,
    iv_sr,
    iv_sc,
    BC: tl.constexpr,
    EMPTY: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    HAS_EMIT: tl.constexpr,
    HAS_INJECT: tl.constexpr,
    INJECT_SET: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    o_c = i_c * BC + tl.arange(0, BC)
    m = o_c < C
    w = tl.load(w_ptr + o_c, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + o_c, mask=m, other=0.0).to(tl.float32)
    state_off = i_b.to(tl.int64) * 3 * C
    if HAS_INITIAL:
        aa = tl.load(s0_ptr + state_off + o_c, mask=m, other=0.0)
        bb = tl.load(s0_ptr + state_off + C + o_c, mask=m, other=0.0)
        pp = tl.load(s0_ptr + state_off + 2 * C + o_c, mask=m, other=0.0)
    else:
        aa = tl.zeros([BC], dtype=tl.float32)
        bb = tl.zeros([BC], dtype=tl.float32)
        pp = tl.full([BC], EMPTY, dtype=tl.float32)

    emit = (emit_t_ptr, emit_s_ptr, states_ptr + i_b.to(tl.int64) * P * 3 * C, HAS_EMIT)
    inj_v_ptr += i_b.to(tl.int64) * iv_sb
    inj = (inj_t_ptr, inj_s_ptr, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    emit, inject, cursors = open_schedules(emit, inj, i_b, L, P, Q)
    e_cur, e_next, i_cur, i_next = cursors

    p = i_b.to(tl.int64) * L * C + o_c  # k, v, y at (b, t = 0)
    t0 = i_b * 0  # int32: the first step of the segment
    while t0 < L:  # segments that end at the row's next instrumented step (or at L)
        end = tl.minimum(tl.minimum(e_next, i_next) + 1, L)
        for _step in range(t0, end):
            kt = tl.load(k_ptr + p, mask=m, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + p, mask=m, other=0.0).to(tl.float32)
            bonus = u + kt
            top = tl.maximum(pp, bonus)
            old = tl.exp(pp - top)
            new = tl.exp(bonus - top)
            y = (old * aa + new * vt) / (old * bb + new)
            tl.store(y_ptr + p, y.to(y_ptr.dtype.element_ty), mask=m)
            decayed = pp + w
            top = tl.maximum(decayed, kt)
            old = tl.exp(decayed - top)
            new = tl.exp(kt - top)
            aa = old * aa + new * vt
            bb = old * bb + new
            pp = top
            p += C
        if HAS_INJECT:
            aa, bb, pp, i_cur, i_next = _inject_triple(
                aa, bb, pp, end - 1, i_cur, i_next, inject, o_c * iv_sc, iv_sr, m
            )
        if HAS_EMIT:
            e_cur, e_next = _emit_triple(aa, bb, pp, end - 1, e_cur, e_next, emit, C, o_c, m)
        t0 = end

    if STORE_FINAL:
        tl.store(sT_ptr + state_off + o_c, aa, mask=m)
        tl.store(sT_ptr + state_off + C + o_c, bb, mask=m)
        tl.store(sT_ptr + state_off + 2 * C + o_c, pp, mask=m)


def run_wkv4(w, u, k, v, instrumentation: dict, state=None, y=None) -> ScanOutput:
    """Validate as the reference does, launch :func:`wkv4_recurrent_kernel`, return the result.
    ``state``: ``[B, 3, C]`` float32 read and written in place (the decode step: ``k, v`` then
    ``[B, C]``, one token).  ``y``: a
    preallocated ``[B, L, C]`` output (default: allocated here)."""
    validated = validate(w, u, k, v, instrumentation, token=state is not None)
    instr = KernelInstrumentation.build(validated, state)
    w, u, k, v = (t.contiguous() for t in (w, u, k, v))
    y = torch.empty_like(v) if y is None else y
    batch, length = validated.batch, validated.length
    channels = w.shape[0]
    wkv4_recurrent_kernel[(_triton.cdiv(channels, BLOCK_C), batch)](
        w,
        u,
        k,
        v,
        y,
        *instr.pointers(y),
        length,
        channels,
        instr.emit_count,
        instr.inject_count,
        *instr.value_strides(),
        BC=BLOCK_C,
        EMPTY=EMPTY_MAX,
        num_warps=1,
        **instr.flags(),
    )
    return instr.output(y)


@float64_runs(wkv4)
def wkv4_triton(w, u, k, v, **instrumentation) -> ScanOutput:
    """RWKV-4 WKV forward on Triton, with state emission and injection fused in.

    Args:
        w: ``[C]`` log-decay (``<= 0``); u: ``[C]`` bonus (``time_first``).
        k, v: ``[B, L, C]``.
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments of ``docs/semantics.md``; the state ``S``
            is ``[3, C]`` = ``(aa, bb, pp)``, float32; the empty state is ``(0, 0, -1e38)``.

    Returns:
        ``ScanOutput(y [B, L, C] in v.dtype, final_state [B, 3, C] | None,
        states [B, P, 3, C] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
        >>> out = wkv4_triton(-torch.rand(8), torch.randn(8), k, v, output_final_state=True)
        >>> out.final_state.shape
        torch.Size([2, 3, 8])
    """
    return run_wkv4(w, u, k, v, instrumentation)
