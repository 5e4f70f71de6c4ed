"""RWKV-7 decode step: one token, the float32 state updated in place (never autotuned).

Arguments and semantics as :mod:`statetap.kernels.wkv6.step` (``L = 1`` instrumentation).
"""

from __future__ import annotations

from .._contract import ScanOutput, check_state, float64_runs
from ..wkv6.step import reference_step
from .launch import prepare7
from .reference import wkv7_sequential


def wkv7_step_reference(r, w, k, v, a, b, state, scale=1.0, **instrumentation) -> ScanOutput:
    """One RWKV-7 token on any device (pure torch); arguments as :func:`wkv7_step_triton`.

    Example:
        >>> state = torch.zeros(1, 2, 4, 4)
        >>> x = torch.randn(1, 2, 4)
        >>> out = wkv7_step_reference(x, -torch.rand(1, 2, 4), x, x, -x, x, state)
        >>> out.y.shape
        torch.Size([1, 2, 4])
    """
    check_state(state, (*r.shape, v.shape[-1]), ("B", "H", "K", "V"), r.device)
    return reference_step(wkv7_sequential, state, [r, w, k, v, a, b], [scale], instrumentation)


@float64_runs(wkv7_step_reference)
def wkv7_step_triton(r, w, k, v, a, b, state, scale=1.0, **instrumentation) -> ScanOutput:
    """One RWKV-7 decode token on Triton, the state updated in place.

    Args:
        r, w, k, a, b: ``[B, H, K]``; v: ``[B, H, V]``.
        state: ``[B, H, K, V]`` float32 contiguous: ``S_{t-1}`` in, ``S_t`` out.
        scale: multiplies ``r`` (default 1.0).
        emit_at, inject_at, inject_value, inject_mode, inject_scale: as the op's, with ``L = 1``.

    Returns:
        ``ScanOutput(y [B, H, V], state, states [B, P, H, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> state = torch.zeros(1, 1, 16, 16)
        >>> x = torch.randn(1, 1, 16)
        >>> out = wkv7_step_triton(x, -torch.rand(1, 1, 16), x, x, -x, x, state)
        >>> out.final_state is state
        True
    """
    check_state(state, (*r.shape, v.shape[-1]), ("B", "H", "K", "V"), r.device)
    out = prepare7(r, w, k, v, a, b, scale, instrumentation, state=state).run("recurrent")
    return ScanOutput(out.y, state, out.states)
