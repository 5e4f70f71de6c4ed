"""``wkv5``: the public op, dispatched by device (see ``reference.py`` for the definitions).

``triton`` (CUDA tensors): :func:`~.fused_recurrent.wkv5_triton` and ``cpu`` (CPU tensors, where
``statetap._C`` is built): :func:`~.cpu.wkv5_cpu`, the RWKV-6 kernels with a static decay.
The decode step is ``statetap.kernels.wkv6.wkv6_step`` with ``w`` expanded to ``[B, H, K]``.
"""

from .._backend import dispatching
from .cpu import wkv5_cpu
from .fused_recurrent import wkv5_triton
from .reference import wkv5_chunked, wkv5_sequential

wkv5 = dispatching("wkv5", {"torch": wkv5_chunked, "triton": wkv5_triton, "cpu": wkv5_cpu})

__all__ = ["wkv5", "wkv5_chunked", "wkv5_cpu", "wkv5_sequential", "wkv5_triton"]
