"""``delta_rule``: the gated delta rule of Qwen3-Next, OLMo-hybrid and Kimi Linear (KDA), the
public op dispatched by device (``reference.py``: the definition; ``mapping.py``: how it runs
on ``wkv7``'s kernels).

``torch``: :func:`~.launch.delta_rule_chunked`; ``triton`` (CUDA tensors):
:func:`~.launch.delta_rule_triton`; ``cpu`` (CPU tensors, where ``statetap._C`` is built):
:func:`~.launch.delta_rule_cpu`; ``delta_rule_step`` is the one-token decode step (state in
place).
"""

from .._backend import dispatching
from .launch import delta_rule_chunked, delta_rule_cpu, delta_rule_triton
from .reference import delta_rule_sequential
from .step import delta_rule_step_cpu, delta_rule_step_reference, delta_rule_step_triton

delta_rule = dispatching(
    "delta_rule",
    {"torch": delta_rule_chunked, "triton": delta_rule_triton, "cpu": delta_rule_cpu},
)
delta_rule_step = dispatching(
    "delta_rule_step",
    {
        "torch": delta_rule_step_reference,
        "triton": delta_rule_step_triton,
        "cpu": delta_rule_step_cpu,
    },
)

__all__ = [
    "delta_rule",
    "delta_rule_chunked",
    "delta_rule_cpu",
    "delta_rule_sequential",
    "delta_rule_step",
    "delta_rule_step_cpu",
    "delta_rule_step_reference",
    "delta_rule_step_triton",
    "delta_rule_triton",
]
