"""RWKV-7 WKV and its decode step on the CPU: the C++ kernel of ``csrc/wkv7.cpp``
(``torch.ops.statetap.wkv7``).

Same arguments, validation and results as the references; float64 inputs run the reference
(the exact oracle).
"""

from __future__ import annotations

from .. import _cpu
from .._contract import ScanOutput, check_state, float64_runs
from ..wkv6.step import one_token
from .reference import validate, wkv7_chunked
from .step import wkv7_step_reference


def run_wkv7(r, w, k, v, a, b, scale, instrumentation: dict, state=None) -> ScanOutput:
    """Validate as the reference does and run the C++ kernel.  ``state``: ``[B, H, K, V]``
    float32, read and written in place (the decode step)."""
    scale, instr = validate(r, w, k, v, a, b, scale, instrumentation)
    _cpu.check_device(r.device, "wkv7")
    y = _cpu.empty(v.shape, v.dtype)
    args = _cpu.contract_args(instr, state)
    _cpu.ops().wkv7(r, w, k, v, a, b, scale, y=y, **args)
    return instr.output(y, args["final_state"], args["states"])


@float64_runs(wkv7_chunked)
def wkv7_cpu(r, w, k, v, a, b, scale=1.0, **instrumentation) -> ScanOutput:
    """RWKV-7 WKV, C++ forward with fused emission and injection.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.wkv7.reference.wkv7_chunked`.

    Args:
        r, w, k, a, b: ``[B, L, H, K]`` (float32, float16 or bfloat16; ``w`` log-decay ``<= 0``,
            transition ``diag(exp(w_t)) + b_t a_t^T``); v: ``[B, L, H, V]``.
        scale: multiplies ``r`` (default 1.0).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the state contract; the state ``S`` is ``[H, K, V]``, float32.

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example:
        >>> r, k, v = (torch.randn(1, 7, 2, 4) for _ in range(3))
        >>> kappa = torch.nn.functional.normalize(torch.randn(1, 7, 2, 4), dim=-1)
        >>> out = wkv7_cpu(r, -0.6 * torch.rand(1, 7, 2, 4), k, v, -kappa, 0.5 * kappa,
        ...                emit_at=torch.tensor([6]), output_final_state=True)
        >>> torch.equal(out.states[:, 0], out.final_state)
        True
    """
    return run_wkv7(r, w, k, v, a, b, scale, instrumentation)


@float64_runs(wkv7_step_reference)
def wkv7_step_cpu(r, w, k, v, a, b, state, scale=1.0, **instrumentation) -> ScanOutput:
    """One RWKV-7 decode token in C++, the state updated in place; arguments and result as
    :func:`statetap.kernels.wkv7.step.wkv7_step_triton` (float64 runs the reference).

    Example:
        >>> state = torch.zeros(1, 2, 4, 4)
        >>> x = torch.randn(1, 2, 4)
        >>> out = wkv7_step_cpu(x, -torch.rand(1, 2, 4), x, x, -x, x, state)
        >>> out.final_state is state
        True
    """
    check_state(state, (*r.shape, v.shape[-1]), ("B", "H", "K", "V"), r.device)
    out = run_wkv7(*one_token(r, w, k, v, a, b), scale, instrumentation, state=state)
    return ScanOutput(out.y[:, 0], state, out.states)


__all__ = ["run_wkv7", "wkv7_cpu", "wkv7_step_cpu"]
