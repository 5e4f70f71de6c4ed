"""RWKV-5 WKV on Triton: the RWKV-6 kernels with the static decay broadcast (stride 0 in time).

The ``[H, K]`` decay is never copied: the kernels read it through a ``[B, L, H, K]`` view whose
batch and time strides are zero.
"""

from __future__ import annotations

from .._contract import ScanOutput, float64_runs
from ..wkv6.launch import prepare, run
from .reference import _time_varying, wkv5_chunked


@float64_runs(wkv5_chunked)
def wkv5_triton(r, k, v, w, u, scale=None, *, form="auto", **instrumentation) -> ScanOutput:
    """RWKV-5 WKV forward on Triton, with state emission and injection fused in.

    Args:
        r, k: ``[B, L, H, K]``; v: ``[B, L, H, V]``.
        w: ``[H, K]`` log-decay (``<= 0``), the same at every step.
        u: ``[H, K]`` bonus; scale: multiplies ``r``, default ``K ** -0.5``.
        form, initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: as :func:`statetap.kernels.wkv6.launch.wkv6_triton`.

    Returns:
        ``ScanOutput(y [B, L, H, V], final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> r = k = v = torch.randn(1, 5, 2, 16)
        >>> out = wkv5_triton(r, k, v, -torch.rand(2, 16), torch.randn(2, 16),
        ...                   output_final_state=True)
        >>> out.final_state.shape
        torch.Size([1, 2, 16, 16])
    """
    w = _time_varying(r, w)[0, 0].contiguous().expand(r.shape)  # batch, time strides 0
    return run(prepare(r, k, v, w, u, scale, instrumentation), form)
