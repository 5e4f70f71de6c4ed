"""RWKV-4 WKV in the numerically stable (num, den, max) form: the pure-torch definition.

Per channel ``c``, with log-decay ``w <= 0`` (checkpoints store ``time_decay`` with
``w = -exp(time_decay)``) and bonus ``u`` (``time_first``), the true state is a numerator
``N = aa * exp(pp)`` and a denominator ``M = bb * exp(pp)``; statetap carries and exposes the
scaled triple ``S = (aa, bb, pp)``, exactly what transformers' RWKV cache and the CUDA kernels
store.  Per token::

    q = max(pp, u + k_t);   y_t = (e^{pp-q} aa + e^{u+k_t-q} v_t) / (e^{pp-q} bb + e^{u+k_t-q})
    q = max(pp + w, k_t);   aa <- e^{pp+w-q} aa + e^{k_t-q} v_t
                            bb <- e^{pp+w-q} bb + e^{k_t-q};   pp <- q

``y_t`` reads the state *before* token ``t`` (plus the bonus).  The state ``S`` is ``[3, C]``:
row 0 ``aa``, row 1 ``bb``, row 2 ``pp``.  Emission returns the triple; ``inject_mode="add"``
adds to the triple elementwise and ``"set"`` replaces it, i.e. both act on the stored
representation, like editing the model's own cache.  To act on the true numerator and
denominator instead, build the triple yourself: ``(N / exp(p), M / exp(p), p)`` for any ``p``
represents the same state.  The default initial state is ``(0, 0, -1e38)``.
"""

from __future__ import annotations

import functools

import torch

from .._contract import (
    Instrumentation,
    ScanOutput,
    check_tensor,
    compute_dtype,
    sequence_dims,
    sequence_shape,
)

EMPTY_MAX = -1e38  # pp of the empty state, as transformers and the CUDA kernel use


@functools.lru_cache(maxsize=32)
def empty_state(channels: int, dtype: torch.dtype) -> torch.Tensor:
    """The empty ``[3, C]`` state ``(0, 0, EMPTY_MAX)`` on the CPU (read, never written)."""
    empty = torch.zeros(3, channels, dtype=dtype)
    empty[2] = EMPTY_MAX
    return empty


def validate(w, u, k, v, instrumentation, token: bool = False) -> Instrumentation:
    """Check the inputs' shapes and devices; return the validated :class:`Instrumentation`
    (compute dtype, empty state ``(0, 0, EMPTY_MAX)``).  Shared by every backend.  ``token``:
    one decode token, ``k, v`` ``[B, C]`` without the time axis (``L = 1``)."""
    names = sequence_dims(("B", "L", "C"), token)
    check_tensor("k", k, (None,) * len(names), names)
    batch, length, channels = sequence_shape(k.shape, token)
    device = k.device
    check_tensor("v", v, tuple(k.shape), names, device=device)
    check_tensor("w", w, (channels,), ("C",), device=device)
    check_tensor("u", u, (channels,), ("C",), device=device)
    dtype = compute_dtype(w, u, k, v)
    return Instrumentation(
        batch=batch,
        length=length,
        state_shape=(3, channels),
        device=device,
        dtype=dtype,
        default_initial=empty_state(channels, dtype),
        **instrumentation,
    )


def wkv4(
    w,
    u,
    k,
    v,
    *,
    initial_state=None,
    output_final_state=False,
    emit_at=None,
    inject_at=None,
    inject_value=None,
    inject_mode="add",
    inject_scale=None,
    states_out=None,
) -> ScanOutput:
    """RWKV-4 WKV with state emission and injection (reference, sequential).

    Args:
        w: ``[C]`` log-decay per channel (``<= 0``).
        u: ``[C]`` bonus for the current token (``time_first``).
        k, v: ``[B, L, C]`` key and value.
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale, states_out: the instrumentation arguments (``docs/semantics.md``); the
            state ``S`` is ``[3, C]`` = ``(aa, bb, pp)``.

    Returns:
        ``ScanOutput(y [B, L, C] in v.dtype, final_state [B, 3, C], states [B, P, 3, C])``.

    Example:
        >>> k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
        >>> out = wkv4(-torch.rand(8), torch.randn(8), k, v, output_final_state=True)
        >>> out.final_state.shape
        torch.Size([2, 3, 8])
    """
    instr = validate(
        w,
        u,
        k,
        v,
        dict(
            initial_state=initial_state,
            output_final_state=output_final_state,
            emit_at=emit_at,
            inject_at=inject_at,
            inject_value=inject_value,
            inject_mode=inject_mode,
            inject_scale=inject_scale,
            states_out=states_out,
        ),
    )
    dtype = instr.dtype
    out_dtype = v.dtype
    w, u = w.to(dtype), u.to(dtype)
    # Per-step views by unbind, not by indexing: autograd then gathers their gradients with one
    # stack instead of a zero-filled [B, L, C] tensor per step (training through this op).
    key = k.to(dtype)
    keys, bonuses, values = key.unbind(1), (u + key).unbind(1), v.to(dtype).unbind(1)

    def step(state: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        aa, bb, pp = state.unbind(1)
        key, bonus, value = keys[t], bonuses[t], values[t]
        top = torch.maximum(pp, bonus)
        old, new = torch.exp(pp - top), torch.exp(bonus - top)
        y = (old * aa + new * value) / (old * bb + new)
        decayed = pp + w
        top = torch.maximum(decayed, key)
        old, new = torch.exp(decayed - top), torch.exp(key - top)
        state = torch.stack((old * aa + new * value, old * bb + new, top), dim=1)
        return state, y

    ys, final, states = instr.run_steps(step)
    return instr.output(torch.stack(ys, 1).to(out_dtype), final, states)
