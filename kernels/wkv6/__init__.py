"""``wkv6``: the public op, dispatched by device (see ``reference.py`` for the definitions).

``triton`` (CUDA tensors): :func:`~.launch.wkv6_triton`, chunked for prefill and recurrent
for short sequences; ``cpu`` (CPU tensors, where ``statetap._C`` is built): :func:`~.cpu.wkv6_cpu`;
``wkv6_step`` is the one-token decode step (state in place).
"""

from .._backend import dispatching
from .cpu import wkv6_cpu, wkv6_step_cpu
from .launch import wkv6_triton
from .reference import wkv6_chunked, wkv6_sequential
from .step import wkv6_step_reference, wkv6_step_triton

wkv6 = dispatching("wkv6", {"torch": wkv6_chunked, "triton": wkv6_triton, "cpu": wkv6_cpu})
wkv6_step = dispatching(
    "wkv6_step",
    {"torch": wkv6_step_reference, "triton": wkv6_step_triton, "cpu": wkv6_step_cpu},
)

__all__ = [
    "wkv6",
    "wkv6_chunked",
    "wkv6_cpu",
    "wkv6_sequential",
    "wkv6_step",
    "wkv6_step_cpu",
    "wkv6_step_reference",
    "wkv6_step_triton",
    "wkv6_triton",
]
