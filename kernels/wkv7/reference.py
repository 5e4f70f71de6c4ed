"""RWKV-7 WKV (generalised delta rule): the pure-torch definitions.

Layout ``[B, L, H, K]``, state ``S`` ``[H, K, V]`` per row, decay as log-decay ``w <= 0``
(RWKV-7 computes ``w = -exp(-0.5) * sigmoid(...)``).  Per head, with a diagonal-plus-rank-one
transition that depends on the inputs only::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    y_t = S_t^T (scale * r_t)

RWKV-7 models pass ``a = -kappa_hat`` and ``b = kappa_hat * iclr`` (the removal key and the
in-context learning rate).  ``y_t`` reads the state *after* token ``t``.  The official CUDA
kernels keep ``S`` transposed, ``[H, V, K]``.

:func:`wkv7_sequential` is the definition; :func:`wkv7_chunked` is the blocked form a fast
kernel takes: within a chunk the rank-one corrections ``a_j^T S_{j-1}`` solve one
unit-lower-triangular system (the WY/UT form), and every decay factor is an exponential of a
non-positive sum.
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
#: (exps), every chunk a few dozen torch ops and one triangular solve; 8 balances them on CPU.
CHUNK_SIZE = 8


@dataclass
class _Inputs:
    """Validated inputs in the compute dtype (``r`` already multiplied by ``scale``)."""

    r: torch.Tensor  # [B, L, H, K]
    w: torch.Tensor  # [B, L, H, K] log decay
    k: torch.Tensor  # [B, L, H, K]
    v: torch.Tensor  # [B, L, H, V]
    a: torch.Tensor  # [B, L, H, K]
    b: torch.Tensor  # [B, L, H, K]
    instr: Instrumentation


def validate(
    r, w, k, v, a, b, scale, instrumentation, token: bool = False
) -> tuple[float, Instrumentation]:
    """Check the inputs' shapes and devices; return ``scale`` and the validated
    :class:`Instrumentation` in the compute dtype.  Shared by every backend.  ``token``: one
    decode token, inputs ``[B, H, K]`` without the time axis (``L = 1``)."""
    names = sequence_dims(("B", "L", "H", "K"), token)
    check_tensor("r", r, (None,) * len(names), names)
    batch, length, heads, key_dim = sequence_shape(r.shape, token)
    device = r.device
    shape = tuple(r.shape)
    for name, value in (("w", w), ("k", k), ("a", a), ("b", b)):
        check_tensor(name, value, shape, names, device=device)
    check_tensor("v", v, (*shape[:-1], None), (*names[:-1], "V"), device=device)
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    dtype = compute_dtype(r, w, k, v, a, b)
    instr = Instrumentation(
        batch=batch,
        length=length,
        state_shape=(heads, key_dim, v.shape[-1]),
        device=device,
        dtype=dtype,
        **instrumentation,
    )
    return float(scale), instr


def _prepare(r, w, k, v, a, b, scale, instrumentation) -> _Inputs:
    scale, instr = validate(r, w, k, v, a, b, scale, instrumentation)
    dtype = instr.dtype
    w, k, v, a, b = (t.to(dtype) for t in (w, k, v, a, b))
    return _Inputs(r.to(dtype) * scale, w, k, v, a, b, instr)


def wkv7_sequential(
    r,
    w,
    k,
    v,
    a,
    b,
    scale=1.0,
    **instrumentation,
) -> ScanOutput:
    """RWKV-7 WKV one token at a time: the definition.  Arguments as :func:`wkv7_chunked`."""
    x = _prepare(
        r,
        w,
        k,
        v,
        a,
        b,
        scale,
        instrumentation,
    )

    def step(state: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        removed = torch.einsum("bhk,bhkv->bhv", x.a[:, t], state)  # a_t^T S_{t-1}
        state = (
            torch.exp(x.w[:, t])[..., None] * state
            + x.b[:, t, :, :, None] * removed[:, :, None, :]
            + x.k[:, t, :, :, None] * x.v[:, t, :, None, :]
        )
        return state, torch.einsum("bhk,bhkv->bhv", x.r[:, t], state)[:, None]

    ys, final, states = x.instr.run_steps(step)
    return x.instr.output(torch.cat(ys, 1).to(v.dtype), final, states)


def wkv7_chunked(
    r,
    w,
    k,
    v,
    a,
    b,
    scale=1.0,
    *,
    chunk_size=CHUNK_SIZE,
    **instrumentation,
) -> ScanOutput:
    """RWKV-7 WKV with state emission and injection, in chunked form (reference).

    Args:
        r: ``[B, L, H, K]`` receptance; w: ``[B, L, H, K]`` log-decay (``<= 0``).
        k: ``[B, L, H, K]`` key; v: ``[B, L, H, V]`` value.
        a, b: ``[B, L, H, K]`` the rank-one transition ``b_t a_t^T``.
        scale: multiplies ``r`` (default 1.0, as RWKV-7 models use).
        chunk_size: tokens per chunk (any positive int here; default :data:`CHUNK_SIZE`).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments (``docs/semantics.md``); the state
            ``S`` is ``[H, K, V]``.

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V], states [B, P, H, K, V])``.

    Example:
        >>> r, k, v = torch.randn(1, 7, 2, 4), torch.randn(1, 7, 2, 4), torch.randn(1, 7, 2, 4)
        >>> kappa = torch.nn.functional.normalize(torch.randn(1, 7, 2, 4), dim=-1)
        >>> w = -0.6 * torch.rand(1, 7, 2, 4)
        >>> out = wkv7_chunked(r, w, k, v, -kappa, 0.5 * kappa, chunk_size=4)
        >>> out.y.shape
        torch.Size([1, 7, 2, 4])
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    x = _prepare(
        r,
        w,
        k,
        v,
        a,
        b,
        scale,
        instrumentation,
    )

    def piece(state, start, end, want_states):
        rc, wc, kc, vc, ac, bc = (t[:, start:end] for t in (x.r, x.w, x.k, x.v, x.a, x.b))
        n = end - start
        cum = wc.cumsum(1)  # g_i
        after = causal_decay(wc)  # [b, i, j]: exp(g_i - g_j), j <= i
        before = torch.zeros_like(after)  # [b, j, m]: exp(g_{j-1} - g_m), m < j
        before[:, 1:] = after[:, :-1]
        # Pair scores as elementwise products reduced over K ([B, i, j, H]): einsum would
        # run them as [1, K] x [K, 1] matmuls.
        a_before = ac[:, :, None] * before
        r_after = rc[:, :, None] * after
        # removed_j = a_j^T S_{j-1}, with S_{j-1} = decayed S0 + earlier rank-one and kv terms:
        # (I - Lab) removed = a_dec S0 + Lak v.
        lab = (a_before * bc[:, None]).sum(-1).permute(0, 3, 1, 2)  # [B, H, j, m]
        lak = (a_before * kc[:, None]).sum(-1)  # [B, j, m, H]
        rhs = torch.einsum("bjhk,bhkv->bhjv", ac * torch.exp(cum - wc), state)
        rhs = rhs + torch.einsum("bjmh,bmhv->bhjv", lak, vc)
        eye = torch.eye(n, dtype=lab.dtype, device=lab.device)
        removed = torch.linalg.solve_triangular(eye - lab, rhs, upper=False, unitriangular=True)
        removed = removed.transpose(1, 2)  # [B, n, H, V]

        y = torch.einsum("bihk,bhkv->bihv", rc * torch.exp(cum), state)
        y = y + torch.einsum("bijh,bjhv->bihv", (r_after * bc[:, None]).sum(-1), removed)
        y = y + torch.einsum("bijh,bjhv->bihv", (r_after * kc[:, None]).sum(-1), vc)
        last = after[:, -1]  # [B, n, H, K]: exp(g_end - g_j)
        end_state = torch.exp(cum[:, -1])[..., None] * state
        end_state = end_state + torch.einsum("bjhk,bjhv->bhkv", last * bc, removed)
        end_state = end_state + torch.einsum("bjhk,bjhv->bhkv", last * kc, vc)
        span = None
        if want_states:
            span = torch.exp(cum)[..., None] * state[:, None]
            span = span + torch.einsum("bijhk,bjhv->bihkv", after * bc[:, None], removed)
            span = span + torch.einsum("bijhk,bjhv->bihkv", after * kc[:, None], vc)
        return y, end_state, span

    instr = x.instr
    ys, final, states = instr.run_segments(instr.segments(chunk_size), piece)
    return instr.output(torch.cat(ys, 1).to(v.dtype), final, states)
