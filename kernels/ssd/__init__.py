"""``ssd`` (Mamba-2 over a sequence) and ``ssd_step`` (one decode token, state updated in place):
public ops dispatched by device (``reference.py`` holds the definitions).

CUDA tensors run the Triton kernels (:mod:`.chunk`, :mod:`.step`), CPU tensors the C++ kernels
(:mod:`.cpu`, where ``statetap._C`` is built), other devices the references; a call that needs
gradients runs the reference (the kernels are forward-only).
"""

from .._backend import dispatching
from .chunk import ssd_triton
from .cpu import ssd_cpu, ssd_step_cpu
from .reference import ssd_chunked, ssd_sequential
from .step import ssd_step_reference, ssd_step_triton

ssd = dispatching("ssd", {"torch": ssd_chunked, "triton": ssd_triton, "cpu": ssd_cpu})
ssd_step = dispatching(
    "ssd_step", {"torch": ssd_step_reference, "triton": ssd_step_triton, "cpu": ssd_step_cpu}
)

__all__ = [
    "ssd",
    "ssd_chunked",
    "ssd_cpu",
    "ssd_sequential",
    "ssd_step",
    "ssd_step_cpu",
    "ssd_step_reference",
    "ssd_step_triton",
    "ssd_triton",
]
