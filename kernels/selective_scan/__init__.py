"""``selective_scan`` (Mamba-1 over a sequence) and ``selective_scan_step`` (one decode token, state
updated in place): public ops dispatched by device.

CUDA tensors run the Triton kernels (:mod:`.fused_recurrent`, :mod:`.step`), CPU tensors the C++
kernels (:mod:`.cpu`, where ``statetap._C`` is built), other devices the references
(``reference.py``); a call that needs gradients runs the reference (the kernels are
forward-only).
"""

from .._backend import dispatching
from .cpu import selective_scan_cpu, selective_scan_step_cpu
from .fused_recurrent import selective_scan_triton
from .reference import selective_scan as selective_scan_reference
from .step import StepOutput, selective_scan_step_reference, selective_scan_step_triton

selective_scan = dispatching(
    "selective_scan",
    {"torch": selective_scan_reference, "triton": selective_scan_triton, "cpu": selective_scan_cpu},
)
selective_scan_step = dispatching(
    "selective_scan_step",
    {
        "torch": selective_scan_step_reference,
        "triton": selective_scan_step_triton,
        "cpu": selective_scan_step_cpu,
    },
)

__all__ = [
    "StepOutput",
    "selective_scan",
    "selective_scan_cpu",
    "selective_scan_reference",
    "selective_scan_step",
    "selective_scan_step_cpu",
    "selective_scan_step_reference",
    "selective_scan_step_triton",
    "selective_scan_triton",
]
