"""Decode steps (one token, state updated in place) for the RWKV-5/6 WKV, and the shared recipe.

A decode step is the recurrent kernel with ``L = 1`` that reads the state from and writes it back
to the caller's float32 tensor (each program owns one tile, so in place is safe); never
autotuned.  The instrumentation arguments are those of the op with ``L = 1``: ``emit_at`` /
``inject_at`` hold ``0`` (this token) or ``-1``, so a steering sweep can inject into some rows
of a batch and not others.  CPU tensors run the reference with ``initial_state=state``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._contract import ScanOutput, check_state, float64_runs
from .launch import prepare, run
from .reference import wkv6_sequential


def one_token(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``[B, ...]`` inputs of one token -> ``[B, 1, ...]``."""
    return [t[:, None] if isinstance(t, torch.Tensor) else t for t in tensors]


def reference_step(
    sequential: Callable, state: torch.Tensor, time_inputs: list, rest: list, instrumentation: dict
) -> ScanOutput:
    """Run ``sequential(*one_token(*time_inputs), *rest, initial_state=state, ...)`` for one
    token, copy the new state into ``state`` and return ``(y [B, ...], state, states)``."""
    out = sequential(
        *one_token(*time_inputs),
        *rest,
        initial_state=state,
        output_final_state=True,
        **instrumentation,
    )
    state.copy_(out.final_state)
    return ScanOutput(out.y[:, 0], state, out.states)


def wkv6_step_reference(r, k, v, w, u, state, scale=None, **instrumentation) -> ScanOutput:
    """One RWKV-6 token on any device (pure torch); arguments as :func:`wkv6_step_triton`.

    Example:
        >>> state = torch.zeros(2, 3, 4, 4)
        >>> r = k = v = w = -torch.rand(2, 3, 4)
        >>> out = wkv6_step_reference(r, k, v, w, torch.randn(3, 4), state)
        >>> out.y.shape, out.final_state is state
        (torch.Size([2, 3, 4]), True)
    """
    check_state(state, (r.shape[0], *u.shape, v.shape[-1]), ("B", "H", "K", "V"), r.device)
    return reference_step(wkv6_sequential, state, [r, k, v, w], [u, scale], instrumentation)


@float64_runs(wkv6_step_reference)
def wkv6_step_triton(r, k, v, w, u, state, scale=None, **instrumentation) -> ScanOutput:
    """One RWKV-6 decode token on Triton, the state updated in place.

    Args:
        r, k, w: ``[B, H, K]`` (``w`` log-decay); v: ``[B, H, V]``; u: ``[H, K]``.
        state: ``[B, H, K, V]`` float32 contiguous: ``S_{t-1}`` in, ``S_t`` out.
        scale: multiplies ``r``, default ``K ** -0.5``.
        emit_at, inject_at, inject_value, inject_mode, inject_scale: as the op's, with ``L = 1``
            (positions ``0`` or ``-1``).

    Returns:
        ``ScanOutput(y [B, H, V], state, states [B, P, H, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> state = torch.zeros(1, 2, 16, 16)
        >>> r = k = v = torch.randn(1, 2, 16)
        >>> out = wkv6_step_triton(r, k, v, -torch.rand(1, 2, 16), torch.randn(2, 16), state,
        ...                        inject_at=torch.tensor([0]), inject_value=torch.ones(16, 16))
        >>> bool((state >= 1).any())
        True
    """
    check_state(state, (r.shape[0], *u.shape, v.shape[-1]), ("B", "H", "K", "V"), r.device)
    out = run(prepare(r, k, v, w, u, scale, instrumentation, state=state), "recurrent")
    return ScanOutput(out.y, state, out.states)
