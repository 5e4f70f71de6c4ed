"""RWKV-7 WKV, recurrent Triton forward (the generalised delta rule), with fused emit/inject.

One program per ``(V block, batch row, head)`` keeps all of K (``a^T S`` needs every key row)
and a block of values of the fp32 state ``S`` ``[K, BV]`` in registers::

    S <- diag(exp(w_t)) S + b_t (a_t^T S) + k_t v_t^T;   y_t = S^T (scale r_t)
    inject at t (S += scale * value, or S = value); emit at t (store S)

``y_t`` reads the state after the update, before the injection at ``t`` (docs/semantics.md).
Also the decode step (``L = 1``, state in place).  No chunked RWKV-7 kernel yet: long
sequences run this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._contract import ScanOutput
from ..wkv6.fused_recurrent import recurrent_blocks
from ..wkv6.instrumented import KernelInstrumentation, end_of_step, open_matrix_row
from ..wkv6.launch import is_exact_oracle
from .reference import validate, wkv7_chunked


@triton.jit
def wkv7_recurrent_kernel(
    r_ptr,  # [B, L, H, K]
    w_ptr,  # [B, L, H, K] log-decay
    k_ptr,  # [B, L, H, K]
    v_ptr,  # [B, L, H, V]
    a_ptr,  # [B, L, H, K]
    b_ptr,  # [B, L, H, K]
    y_ptr,  # [B, L, H, V]
    s0_ptr,  # [B, H, K, V] fp32
    sT_ptr,  # [B, H, K, V] fp32 (may be s0_ptr: in place)
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
):
    (
        i_b,
        i_h,
        o_k,
        o_v,
        m_k,
        m_v,
        m_kv,
        o_kv,
        state_off,
        S,
        emit_t_ptr,
        emit_s_ptr,
        states_ptr,
        e_cur,
        e_next,
        inj_t_ptr,
        inj_s_ptr,
        inj_v_ptr,
        inj_scale_ptr,
        o_val,
        i_cur,
        i_next,
    ) = open_matrix_row(
        s0_ptr,
        emit_t_ptr,
        emit_s_ptr,
        states_ptr,
        inj_t_ptr,
        inj_s_ptr,
        inj_v_ptr,
        inj_scale_ptr,
        L,
        H,
        K,
        V,
        P,
        Q,
        iv_sb,
        iv_sh,
        iv_sk,
        iv_sv,
        BK,
        BV,
        HAS_INITIAL,
        HAS_EMIT,
        HAS_INJECT,
    )
    p_k = (i_b.to(tl.int64) * L * H + i_h) * K  # r, w, k, a, b at (b, t = 0, h)
    p_v = (i_b.to(tl.int64) * L * H + i_h) * V  # v, y
    for t in range(L):
        r = tl.load(r_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        w = tl.load(w_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + p_k + o_k, mask=m_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + p_v + o_v, mask=m_v, other=0.0).to(tl.float32)
        sa = tl.sum(a[:, None] * S, 0)  # [BV]: a^T S_{t-1}
        S = S * tl.exp(w)[:, None] + b[:, None] * sa[None, :] + k[:, None] * v[None, :]
        y = tl.sum(r[:, None] * S, 0)  # [BV]
        tl.store(y_ptr + p_v + o_v, y.to(y_ptr.dtype.element_ty), mask=m_v)
        S, e_cur, e_next, i_cur, i_next = end_of_step(
            S,
            t,
            e_cur,
            e_next,
            i_cur,
            i_next,
            emit_t_ptr,
            emit_s_ptr,
            states_ptr,
            inj_t_ptr,
            inj_s_ptr,
            inj_v_ptr,
            inj_scale_ptr,
            iv_sq,
            H * K * V,
            o_kv,
            o_val,
            m_kv,
            HAS_EMIT,
            HAS_INJECT,
            INJECT_SET,
            HAS_SCALE,
        )
        p_k += H * K
        p_v += H * V

    if STORE_FINAL:
        tl.store(sT_ptr + state_off + o_kv, S, mask=m_kv)


@dataclass
class Launch7:
    """One RWKV-7 launch: contiguous inputs, ``y`` (uninitialised), the instrumentation."""

    inputs: tuple[torch.Tensor, ...]  # r, w, k, v, a, b
    scale: float
    y: torch.Tensor
    instr: KernelInstrumentation

    def run(self) -> ScanOutput:
        r, v = self.inputs[0], self.inputs[3]
        batch, length, heads, key_dim = r.shape
        bk, bv, warps = recurrent_blocks(key_dim, v.shape[-1])
        instr = self.instr
        wkv7_recurrent_kernel[(triton.cdiv(v.shape[-1], bv), batch * heads)](
            *self.inputs,
            self.y,
            *instr.pointers(self.y),
            self.scale,
            length,
            heads,
            key_dim,
            v.shape[-1],
            instr.emit_count,
            instr.inject_count,
            *instr.value_strides(),
            BK=bk,
            BV=bv,
            num_warps=warps,
            **instr.flags(),
        )
        return instr.output(self.y)


def prepare7(r, w, k, v, a, b, scale, instrumentation: dict, state=None) -> Launch7:
    """Validate as the reference does and lay out one launch (``state``: decode in place)."""
    scale, instr = validate(r, w, k, v, a, b, scale, instrumentation)
    inputs = tuple(t.contiguous() for t in (r, w, k, v, a, b))
    return Launch7(
        inputs=inputs,
        scale=scale,
        y=torch.empty(v.shape, device=v.device, dtype=v.dtype),
        instr=KernelInstrumentation.build(
            instr, instrumentation.get("initial_state") is not None, state
        ),
    )


def wkv7_triton(r, w, k, v, a, b, scale=1.0, **instrumentation) -> ScanOutput:
    """RWKV-7 WKV forward on Triton (recurrent), with state emission and injection fused in.

    Args:
        r, w, k, a, b: ``[B, L, H, K]`` (``w`` log-decay ``<= 0``; transition
            ``diag(exp(w_t)) + b_t a_t^T``); v: ``[B, L, H, V]``.
        scale: multiplies ``r`` (default 1.0, as RWKV-7 models use).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments of ``docs/semantics.md``; the state ``S``
            is ``[H, K, V]``, carried and emitted in float32.

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> r, k, v = (torch.randn(1, 6, 1, 16) for _ in range(3))
        >>> kappa = torch.nn.functional.normalize(torch.randn(1, 6, 1, 16), dim=-1)
        >>> out = wkv7_triton(r, -0.5 * torch.rand(1, 6, 1, 16), k, v, -kappa, 0.5 * kappa,
        ...                   emit_at=torch.tensor([5]), output_final_state=True)
        >>> torch.allclose(out.states[:, 0], out.final_state)
        True
    """
    if is_exact_oracle(r, w, k, v, a, b):
        return wkv7_chunked(r, w, k, v, a, b, scale, **instrumentation)
    return prepare7(r, w, k, v, a, b, scale, instrumentation).run()
