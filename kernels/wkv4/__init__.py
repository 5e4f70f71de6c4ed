"""``wkv4``: the public op, dispatched by device (see ``reference.py`` for the definition).

``triton`` (CUDA tensors): :func:`~.fused_recurrent.wkv4_triton`; ``cpu`` (CPU tensors, where
``statetap._C`` is built): :func:`~.cpu.wkv4_cpu`; ``wkv4_step`` is the one-token decode step
(state in place).
"""

from .._backend import dispatching
from .cpu import wkv4_cpu, wkv4_step_cpu
from .fused_recurrent import wkv4_triton
from .reference import wkv4 as wkv4_reference
from .step import wkv4_step_reference, wkv4_step_triton

wkv4 = dispatching("wkv4", {"torch": wkv4_reference, "triton": wkv4_triton, "cpu": wkv4_cpu})
wkv4_step = dispatching(
    "wkv4_step",
    {"torch": wkv4_step_reference, "triton": wkv4_step_triton, "cpu": wkv4_step_cpu},
)

__all__ = [
    "wkv4",
    "wkv4_cpu",
    "wkv4_reference",
    "wkv4_step",
    "wkv4_step_cpu",
    "wkv4_step_reference",
    "wkv4_step_triton",
    "wkv4_triton",
]
