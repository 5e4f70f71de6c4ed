"""RWKV-6 WKV (data-dependent decay, matrix state per head): the pure-torch definitions.

Layout ``[B, L, H, K]`` (flash-linear-attention's), state ``S`` ``[H, K, V]`` per row, decay
given as log-decay ``w <= 0`` (the multiplicative decay is ``exp(w)``; RWKV-6 checkpoints
store ``w_raw`` with ``w = -exp(w_raw)``).  Per head::

    y_t = (scale * r_t)^T (S_{t-1} + diag(u) k_t v_t^T)
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T

``y_t`` reads the state *before* token ``t`` plus the bonus ``u``; an injection at ``t``
changes ``S_t`` and first shows in ``y_{t+1}``.

:func:`wkv6_sequential` is the definition; :func:`wkv6_chunked` is the blocked form a fast
kernel takes and agrees with it for every chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._chunk_math import causal_decay
from .._contract import (
    Instrumentation,
    ScanOutput,
    check_tensor,
    compute_dtype,
    sequence_dims,
    sequence_shape,
)

#: Default tokens per chunk of the reference: every token costs ``chunk_size`` pairwise decays
#: (exps), every chunk a few dozen torch ops; 8 balances the two on CPU.
CHUNK_SIZE = 8


@dataclass
class _Inputs:
    """Validated inputs in the compute dtype (``r`` already multiplied by ``scale``)."""

    r: torch.Tensor  # [B, L, H, K]
    k: torch.Tensor  # [B, L, H, K]
    v: torch.Tensor  # [B, L, H, V]
    w: torch.Tensor  # [B, L, H, K] log decay
    u: torch.Tensor  # [H, K]
    instr: Instrumentation


def validate(
    r, k, v, w, u, scale, instrumentation, token: bool = False
) -> tuple[float, Instrumentation]:
    """Check the inputs' shapes and devices; return ``scale`` (default applied) and the
    validated :class:`Instrumentation` in the compute dtype.  Shared by every backend.
    ``token``: one decode token, inputs ``[B, H, K]`` without the time axis (``L = 1``)."""
    names = sequence_dims(("B", "L", "H", "K"), token)
    check_tensor("r", r, (None,) * len(names), names)
    batch, length, heads, key_dim = sequence_shape(r.shape, token)
    device = r.device
    shape = sequence_dims((batch, length, heads, key_dim), token)
    check_tensor("k", k, shape, names, device=device)
    check_tensor("v", v, (*shape[:-1], None), (*names[:-1], "V"), device=device)
    check_tensor("w", w, shape, names, device=device)
    check_tensor("u", u, (heads, key_dim), ("H", "K"), device=device)
    if scale is None:
        scale = key_dim**-0.5
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    dtype = compute_dtype(r, k, v, w, u)
    instr = Instrumentation(
        batch=batch,
        length=length,
        state_shape=(heads, key_dim, v.shape[-1]),
        device=device,
        dtype=dtype,
        **instrumentation,
    )
    return float(scale), instr


def _prepare(r, k, v, w, u, scale, instrumentation) -> _Inputs:
    scale, instr = validate(r, k, v, w, u, scale, instrumentation)
    dtype = instr.dtype
    return _Inputs(r.to(dtype) * scale, k.to(dtype), v.to(dtype), w.to(dtype), u.to(dtype), instr)


def wkv6_sequential(
    r,
    k,
    v,
    w,
    u,
    scale=None,
    **instrumentation,
) -> ScanOutput:
    """RWKV-6 WKV one token at a time: the definition.  Arguments as :func:`wkv6_chunked`."""
    inputs = _prepare(
        r,
        k,
        v,
        w,
        u,
        scale,
        instrumentation,
    )

    def step(state: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = inputs.k[:, t, :, :, None] * inputs.v[:, t, :, None, :]  # [B, H, K, V]
        y = torch.einsum("bhk,bhkv->bhv", inputs.r[:, t], state + inputs.u[..., None] * kv)
        state = torch.exp(inputs.w[:, t])[..., None] * state + kv
        return state, y[:, None]

    ys, final, states = inputs.instr.run_steps(step)
    return inputs.instr.output(torch.cat(ys, 1).to(v.dtype), final, states)


def wkv6_chunked(
    r,
    k,
    v,
    w,
    u,
    scale=None,
    *,
    chunk_size=CHUNK_SIZE,
    **instrumentation,
) -> ScanOutput:
    """RWKV-6 WKV with state emission and injection, in chunked form (reference).

    Args:
        r, k: ``[B, L, H, K]`` receptance and key.
        v: ``[B, L, H, V]`` value.
        w: ``[B, L, H, K]`` log-decay (``<= 0``); the state is multiplied by ``exp(w)``.
        u: ``[H, K]`` bonus for the current token.
        scale: multiplies ``r``; default ``K ** -0.5`` (RWKV-6 models use 1.0).
        chunk_size: tokens per chunk (any positive int here; default :data:`CHUNK_SIZE`).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments (``docs/semantics.md``); the state
            ``S`` is ``[H, K, V]`` (RWKV's CUDA kernels keep its transpose ``[H, V, K]``).

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V], states [B, P, H, K, V])``.

    Example:
        >>> r, k, v = torch.randn(1, 9, 2, 4), torch.randn(1, 9, 2, 4), torch.randn(1, 9, 2, 4)
        >>> w, u = -torch.rand(1, 9, 2, 4), torch.randn(2, 4)
        >>> out = wkv6_chunked(r, k, v, w, u, chunk_size=4, emit_at=torch.tensor([8]),
        ...                    output_final_state=True)
        >>> torch.allclose(out.states[:, 0], out.final_state)
        True
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    inputs = _prepare(
        r,
        k,
        v,
        w,
        u,
        scale,
        instrumentation,
    )

    def piece(state, start, end, want_states):
        rc, kc, vc, wc = (t[:, start:end] for t in (inputs.r, inputs.k, inputs.v, inputs.w))
        cum = wc.cumsum(1)  # g_i
        before = torch.exp(cum - wc)  # exp(g_{i-1}): start of chunk -> just before token i
        # scores[i, j] = sum_k r_ik exp(g_{i-1} - g_j)_k k_jk (j < i), as elementwise products
        # and one reduction over K: an einsum would run it as [1, K] x [K, 1] matmuls.
        pairs = rc[:, :, None] * causal_decay(wc, strict=True) * kc[:, None]  # [B, i, j, H, K]
        y = torch.einsum("bijh,bjhv->bihv", pairs.sum(-1), vc)
        y = y + (rc * inputs.u * kc).sum(-1, keepdim=True) * vc
        y = y + torch.einsum("bihk,bhkv->bihv", rc * before, state)
        to_end = torch.exp(cum[:, -1:] - cum)  # exp(g_end - g_j)
        end_state = torch.exp(cum[:, -1])[..., None] * state
        end_state = end_state + torch.einsum("bjhk,bjhv->bhkv", kc * to_end, vc)
        span = None
        if want_states:
            span = torch.exp(cum)[..., None] * state[:, None]
            decayed_keys = causal_decay(wc) * kc[:, None]  # [B, i, j, H, K]
            span = span + torch.einsum("bijhk,bjhv->bihkv", decayed_keys, vc)
        return y, end_state, span

    instr = inputs.instr
    ys, final, states = instr.run_segments(instr.segments(chunk_size), piece)
    return instr.output(torch.cat(ys, 1).to(v.dtype), final, states)
