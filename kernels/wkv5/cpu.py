"""RWKV-5 WKV on the CPU: the RWKV-6 C++ kernel (``csrc/wkv6.cpp``) with the static ``[H, K]``
decay, read once per head (never expanded over time).  Decode with ``wkv6_step`` and ``w``
expanded to ``[B, H, K]``.
"""

from __future__ import annotations

from .._contract import ScanOutput, float64_runs
from ..wkv6.cpu import run_wkv6
from .reference import _time_varying, wkv5_chunked


@float64_runs(wkv5_chunked)
def wkv5_cpu(r, k, v, w, u, scale=None, **instrumentation) -> ScanOutput:
    """RWKV-5 WKV, C++ forward with fused emission and injection.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.wkv5.reference.wkv5_chunked`.

    Args:
        r, k: ``[B, L, H, K]`` (float32, float16 or bfloat16); v: ``[B, L, H, V]``.
        w: ``[H, K]`` log-decay (``<= 0``), the same at every step.
        u: ``[H, K]`` bonus; scale: multiplies ``r``, default ``K ** -0.5``.
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the state contract; the state ``S`` is ``[H, K, V]``, float32.

    Returns:
        ``ScanOutput(y [B, L, H, V], final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example:
        >>> r = k = v = torch.randn(1, 5, 2, 4)
        >>> out = wkv5_cpu(r, k, v, -torch.rand(2, 4), torch.randn(2, 4), output_final_state=True)
        >>> out.final_state.shape
        torch.Size([1, 2, 4, 4])
    """
    return run_wkv6(r, k, v, _time_varying(r, w), u, scale, instrumentation)


__all__ = ["wkv5_cpu"]
