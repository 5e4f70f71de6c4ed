"""RWKV-4 WKV and its decode step on the CPU: the C++ kernel of ``csrc/wkv4.cpp``
(``torch.ops.statetap.wkv4``), the stable ``(aa, bb, pp)`` form of ``reference.py``.

Same arguments, validation and results as the references; float64 inputs run the reference
(the exact oracle).
"""

from __future__ import annotations

from .. import _cpu
from .._contract import ScanOutput, check_state, float64_runs
from ..wkv6.step import one_token
from .reference import validate, wkv4
from .step import wkv4_step_reference


def run_wkv4(w, u, k, v, instrumentation: dict, state=None) -> ScanOutput:
    """Validate as the reference does and run the C++ kernel.  ``state``: ``[B, 3, C]`` float32,
    read and written in place (the decode step)."""
    instr = validate(w, u, k, v, instrumentation)
    _cpu.check_device(k.device, "wkv4")
    y = _cpu.empty(v.shape, v.dtype)
    args = _cpu.contract_args(instr, state)
    _cpu.ops().wkv4(w, u, k, v, y=y, **args)
    return instr.output(y, args["final_state"], args["states"])


@float64_runs(wkv4)
def wkv4_cpu(w, u, k, v, **instrumentation) -> ScanOutput:
    """RWKV-4 WKV, C++ forward with fused emission and injection.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.wkv4.reference.wkv4`.

    Args:
        w: ``[C]`` log-decay (``<= 0``); u: ``[C]`` bonus (``time_first``).
        k, v: ``[B, L, C]`` (float32, float16 or bfloat16).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the state contract; the state ``S`` is ``[3, C]`` = ``(aa, bb, pp)``,
            float32; the empty state is ``(0, 0, -1e38)``.

    Returns:
        ``ScanOutput(y [B, L, C] in v.dtype, final_state [B, 3, C] | None,
        states [B, P, 3, C] | None)``.

    Example:
        >>> k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
        >>> out = wkv4_cpu(-torch.rand(8), torch.randn(8), k, v, emit_at=torch.tensor([5]),
        ...                output_final_state=True)
        >>> torch.equal(out.states[:, 0], out.final_state)
        True
    """
    return run_wkv4(w, u, k, v, instrumentation)


@float64_runs(wkv4_step_reference)
def wkv4_step_cpu(w, u, k, v, state, **instrumentation) -> ScanOutput:
    """One RWKV-4 decode token in C++, the state updated in place; arguments and result as
    :func:`statetap.kernels.wkv4.step.wkv4_step_triton` (float64 runs the reference).

    Example:
        >>> state = torch.zeros(1, 3, 8)
        >>> state[:, 2] = -1e38
        >>> out = wkv4_step_cpu(-torch.rand(8), torch.randn(8), torch.randn(1, 8),
        ...                     torch.randn(1, 8), state)
        >>> out.final_state is state
        True
    """
    check_state(state, (k.shape[0], 3, k.shape[-1]), ("B", "3", "C"), k.device)
    out = run_wkv4(w, u, *one_token(k, v), instrumentation, state=state)
    return ScanOutput(out.y[:, 0], state, out.states)


__all__ = ["run_wkv4", "wkv4_cpu", "wkv4_step_cpu"]
