"""``wkv7``: the public op, dispatched by device (see ``reference.py`` for the definitions).

``triton`` (CUDA tensors): :func:`~.launch.wkv7_triton`, chunked for prefill and recurrent
for short sequences; ``cpu`` (CPU tensors, where ``statetap._C`` is built): :func:`~.cpu.wkv7_cpu`;
``wkv7_step`` is the one-token decode step (state in place).
"""

from .._backend import dispatching
from .cpu import wkv7_cpu, wkv7_step_cpu
from .launch import wkv7_triton
from .reference import wkv7_chunked, wkv7_sequential
from .step import wkv7_step_reference, wkv7_step_triton

wkv7 = dispatching("wkv7", {"torch": wkv7_chunked, "triton": wkv7_triton, "cpu": wkv7_cpu})
wkv7_step = dispatching(
    "wkv7_step",
    {"torch": wkv7_step_reference, "triton": wkv7_step_triton, "cpu": wkv7_step_cpu},
)

__all__ = [
    "wkv7",
    "wkv7_chunked",
    "wkv7_cpu",
    "wkv7_sequential",
    "wkv7_step",
    "wkv7_step_cpu",
    "wkv7_step_reference",
    "wkv7_step_triton",
    "wkv7_triton",
]
