"""``wkv5``: the public op, dispatched by device (see ``reference.py`` for the definitions).

``triton`` (CUDA tensors): :func:`~.fused.wkv5_triton`, the RWKV-6 kernels with a static
decay.  The decode step is ``statetap.kernels.wkv6.wkv6_step`` with ``w`` expanded to ``[B, H, K]``.
"""

from .._backend import dispatching
from .fused import wkv5_triton
from .reference import wkv5_chunked, wkv5_sequential

wkv5 = dispatching("wkv5", {"torch": wkv5_chunked, "triton": wkv5_triton})

__all__ = ["wkv5", "wkv5_chunked", "wkv5_sequential", "wkv5_triton"]
