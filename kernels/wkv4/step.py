"""RWKV-4 decode step: one token, the float32 ``(aa, bb, pp)`` state updated in place.

Arguments and semantics as :mod:`statetap.kernels.wkv6.step` (``L = 1`` instrumentation).
"""

from __future__ import annotations

from .._contract import ScanOutput, check_state, float64_runs
from ..wkv6.step import reference_step
from .fused_recurrent import run_wkv4
from .reference import wkv4


def _wkv4_positional(k, v, w, u, **instrumentation) -> ScanOutput:
    return wkv4(w, u, k, v, **instrumentation)


def wkv4_step_reference(w, u, k, v, state, **instrumentation) -> ScanOutput:
    """One RWKV-4 token on any device (pure torch); arguments as :func:`wkv4_step_triton`.

    Example:
        >>> state = torch.zeros(2, 3, 8)
        >>> state[:, 2] = -1e38
        >>> out = wkv4_step_reference(-torch.rand(8), torch.randn(8), torch.randn(2, 8),
        ...                           torch.randn(2, 8), state)
        >>> out.y.shape, bool((state[:, 2] > -1e38).all())
        (torch.Size([2, 8]), True)
    """
    check_state(state, (k.shape[0], 3, k.shape[-1]), ("B", "3", "C"), k.device)
    return reference_step(_wkv4_positional, state, [k, v], [w, u], instrumentation)


@float64_runs(wkv4_step_reference)
def wkv4_step_triton(w, u, k, v, state, **instrumentation) -> ScanOutput:
    """One RWKV-4 decode token on Triton, the state updated in place.

    Args:
        w, u: ``[C]``; k, v: ``[B, C]``.
        state: ``[B, 3, C]`` float32 contiguous ``(aa, bb, pp)``: ``S_{t-1}`` in, ``S_t`` out.
        emit_at, inject_at, inject_value, inject_mode, inject_scale: as the op's, with ``L = 1``.

    Returns:
        ``ScanOutput(y [B, C], state, states [B, P, 3, C] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> state = torch.zeros(1, 3, 8)
        >>> out = wkv4_step_triton(-torch.rand(8), torch.randn(8), torch.randn(1, 8),
        ...                        torch.randn(1, 8), state)
        >>> out.final_state is state
        True
    """
    check_state(state, (k.shape[0], 3, k.shape[-1]), ("B", "3", "C"), k.device)
    out = run_wkv4(w, u, k, v, instrumentation, state=state)
    return ScanOutput(out.y, state, out.states)
