"""RWKV-5 WKV: RWKV-6 with a static (time-invariant) per-head, per-channel decay.

Layout ``[B, L, H, K]``, state ``S`` ``[H, K, V]``, decay as log-decay ``w`` ``[H, K]``
(RWKV-5 checkpoints store ``time_decay`` with ``w = -exp(time_decay)``)::

    y_t = (scale * r_t)^T (S_{t-1} + diag(u) k_t v_t^T)
    S_t = diag(exp(w)) S_{t-1} + k_t v_t^T

Both forms broadcast ``w`` over time and run the RWKV-6 definitions.
"""

from __future__ import annotations

import torch

from .._contract import ScanOutput, check_tensor
from ..wkv6.reference import CHUNK_SIZE, wkv6_chunked, wkv6_sequential


def _time_varying(r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``w`` ``[H, K]`` -> ``[B, L, H, K]`` (a broadcast view) after checking it against ``r``."""
    check_tensor("r", r, (None, None, None, None), ("B", "L", "H", "K"))
    check_tensor("w", w, r.shape[2:], ("H", "K"), device=r.device)
    return w.expand(r.shape)


def wkv5_sequential(r, k, v, w, u, scale=None, **instrumentation) -> ScanOutput:
    """RWKV-5 WKV one token at a time: the definition.  Arguments as :func:`wkv5_chunked`."""
    return wkv6_sequential(r, k, v, _time_varying(r, w), u, scale, **instrumentation)


def wkv5_chunked(
    r, k, v, w, u, scale=None, *, chunk_size=CHUNK_SIZE, **instrumentation
) -> ScanOutput:
    """RWKV-5 WKV with state emission and injection, in chunked form (reference).

    Args:
        r, k: ``[B, L, H, K]``; v: ``[B, L, H, V]``.
        w: ``[H, K]`` log-decay (``<= 0``), the same at every step.
        u: ``[H, K]`` bonus; scale: multiplies ``r``, default ``K ** -0.5``.
        chunk_size, initial_state, output_final_state, emit_at, inject_at, inject_value,
        inject_mode, inject_scale: as :func:`statetap.kernels.wkv6.reference.wkv6_chunked`.

    Returns:
        ``ScanOutput(y [B, L, H, V], final_state [B, H, K, V], states [B, P, H, K, V])``.

    Example:
        >>> r = k = v = torch.randn(1, 5, 2, 4)
        >>> out = wkv5_chunked(r, k, v, -torch.rand(2, 4), torch.randn(2, 4), chunk_size=2)
        >>> out.y.shape
        torch.Size([1, 5, 2, 4])
    """
    return wkv6_chunked(
        r, k, v, _time_varying(r, w), u, scale, chunk_size=chunk_size, **instrumentation
    )
