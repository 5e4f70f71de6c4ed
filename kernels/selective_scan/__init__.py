"""``selective_scan``: the public op, dispatched by device (``reference.py`` defines it).

CUDA tensors run the Triton kernel (:mod:`.scan`), other devices the reference; a call that
needs gradients runs the reference (the Triton kernel is forward-only).
"""

from .._backend import dispatching
from .reference import selective_scan as selective_scan_reference
from .scan import selective_scan_triton

selective_scan = dispatching(
    "selective_scan", {"torch": selective_scan_reference, "triton": selective_scan_triton}
)

__all__ = ["selective_scan", "selective_scan_reference", "selective_scan_triton"]
