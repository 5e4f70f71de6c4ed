"""RWKV-6 WKV and its decode step on the CPU: the C++ kernel of ``csrc/wkv6.cpp``
(``torch.ops.statetap.wkv6``), which also runs RWKV-5 (a static ``[H, K]`` decay).

Same arguments, validation and results as the references; float64 inputs run the reference
(the exact oracle).
"""

from __future__ import annotations

from .. import _cpu
from .._contract import ScanOutput, check_state, float64_runs
from .reference import validate, wkv6_chunked
from .step import one_token, wkv6_step_reference


def run_wkv6(r, k, v, w, u, scale, instrumentation: dict, state=None) -> ScanOutput:
    """Validate as the reference does and run the C++ kernel.

    ``w`` is ``[B, L, H, K]``, or a broadcast ``[B, L, H, K]`` view of a static ``[H, K]`` decay
    (RWKV-5: the kernel then reads the ``[H, K]`` tensor once).  ``state``: ``[B, H, K, V]``
    float32, read and written in place (the decode step).
    """
    scale, instr = validate(r, k, v, w, u, scale, instrumentation)
    _cpu.check_device(r.device, "wkv6")
    if w.stride(0) == 0 and w.stride(1) == 0:
        w = w[0, 0]
    y = _cpu.empty(v.shape, v.dtype)
    args = _cpu.contract_args(instr, state)
    _cpu.ops().wkv6(r, k, v, w, u, scale, y=y, **args)
    return instr.output(y, args["final_state"], args["states"])


@float64_runs(wkv6_chunked)
def wkv6_cpu(r, k, v, w, u, scale=None, **instrumentation) -> ScanOutput:
    """RWKV-6 WKV, C++ forward with fused emission and injection.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.wkv6.reference.wkv6_chunked`.

    Args:
        r, k, w: ``[B, L, H, K]`` (float32, float16 or bfloat16; ``w`` log-decay ``<= 0``).
        v: ``[B, L, H, V]``; u: ``[H, K]``; scale: multiplies ``r``, default ``K ** -0.5``.
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the state contract; the state ``S`` is ``[H, K, V]``, float32.

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example:
        >>> r, k, v = (torch.randn(1, 9, 2, 4) for _ in range(3))
        >>> w, u = -torch.rand(1, 9, 2, 4), torch.randn(2, 4)
        >>> out = wkv6_cpu(r, k, v, w, u, emit_at=torch.tensor([8]), output_final_state=True)
        >>> torch.equal(out.states[:, 0], out.final_state)
        True
    """
    return run_wkv6(r, k, v, w, u, scale, instrumentation)


@float64_runs(wkv6_step_reference)
def wkv6_step_cpu(r, k, v, w, u, state, scale=None, **instrumentation) -> ScanOutput:
    """One RWKV-6 decode token in C++, the state updated in place; arguments and result as
    :func:`statetap.kernels.wkv6.step.wkv6_step_triton` (float64 runs the reference).

    Example:
        >>> state = torch.zeros(1, 2, 4, 4)
        >>> r = k = v = torch.randn(1, 2, 4)
        >>> out = wkv6_step_cpu(r, k, v, -torch.rand(1, 2, 4), torch.randn(2, 4), state)
        >>> out.final_state is state
        True
    """
    check_state(state, (r.shape[0], *u.shape, v.shape[-1]), ("B", "H", "K", "V"), r.device)
    out = run_wkv6(*one_token(r, k, v, w), u, scale, instrumentation, state=state)
    return ScanOutput(out.y[:, 0], state, out.states)


__all__ = ["run_wkv6", "wkv6_cpu", "wkv6_step_cpu"]
