"""Mamba-1 selective scan and its decode step on the CPU: the C++ kernels of
``csrc/selective_scan.cpp`` (``torch.ops.statetap.selective_scan`` / ``selective_scan_step``).

Same arguments, validation and results as the references; float64 inputs run the reference
(the exact oracle).
"""

from __future__ import annotations

import torch

from .. import _cpu
from .._contract import ScanOutput, float64_runs
from .reference import selective_scan as selective_scan_reference
from .reference import validate
from .step import (
    StepOutput,
    _check_step,
    check_step_injection,
    emit_buffer,
    selective_scan_step_reference,
)


@float64_runs(selective_scan_reference)
def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    emit_at: torch.Tensor | None = None,
    inject_at: torch.Tensor | None = None,
    inject_value: torch.Tensor | None = None,
    inject_mode: str = "add",
    inject_scale: torch.Tensor | float | None = None,
    states_out: torch.Tensor | None = None,
) -> ScanOutput:
    """Mamba-1 selective scan, C++ forward with fused emission and injection.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.selective_scan.reference.selective_scan`.

    Args:
        u, delta: ``[B, D, L]`` (float32, float16 or bfloat16).
        A: ``[D, N]``; B, C: ``[D, N]`` shared, ``[B, N, L]`` or grouped ``[B, G, N, L]``.
        D: ``[D]`` or None; z: ``[B, D, L]`` or None; delta_bias: ``[D]`` or None;
        delta_softplus: False.
        initial_state ``[B, D, N]``, output_final_state (False), emit_at ``[B, P]``/``[P]``,
        inject_at ``[B, Q]``/``[Q]``, inject_value (broadcastable to ``[B, Q, D, N]``),
        inject_mode (``"add"``), inject_scale (None), states_out (None): the state contract.

    Returns:
        ``ScanOutput(y [B, D, L] in u.dtype, final_state [B, D, N] fp32 or None,
        states [B, P, D, N] fp32 or None)``.

    Example:
        >>> u, delta = torch.randn(2, 8, 5), torch.randn(2, 8, 5)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 1, 4, 5), torch.randn(2, 1, 4, 5)
        >>> out = selective_scan_cpu(u, delta, A, B, C, delta_softplus=True,
        ...                          emit_at=torch.tensor([0, 4]), output_final_state=True)
        >>> torch.equal(out.states[:, 1], out.final_state)
        True
    """
    instrumentation = dict(
        initial_state=initial_state,
        output_final_state=output_final_state,
        emit_at=emit_at,
        inject_at=inject_at,
        inject_value=inject_value,
        inject_mode=inject_mode,
        inject_scale=inject_scale,
        states_out=states_out,
    )
    B, C, instr = validate(u, delta, A, B, C, D, z, delta_bias, instrumentation)
    _cpu.check_device(u.device, "selective_scan")
    y = _cpu.empty(u.shape, u.dtype)
    args = _cpu.contract_args(instr)
    _cpu.ops().selective_scan(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), y=y, **args
    )
    return instr.output(y, args["final_state"], args["states"])


@float64_runs(selective_scan_step_reference)
def selective_scan_step_cpu(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    inject_value: torch.Tensor | None = None,
    inject_mode: str = "add",
    inject_scale: torch.Tensor | float | None = None,
    emit: bool | torch.Tensor = False,
) -> StepOutput:
    """Mamba-1 decode step in C++; same arguments and result as
    :func:`statetap.kernels.selective_scan.step.selective_scan_step_reference`
    (state ``[B, D, N]`` updated in place; float64 runs the reference)."""
    _check_step(state, u, delta, A, B, C, D, z, delta_bias)
    value, scale = check_step_injection(inject_value, inject_mode, inject_scale, state)
    _cpu.check_device(state.device, "selective_scan_step")
    y = _cpu.empty(u.shape, u.dtype)
    out = emit_buffer(emit, state)
    _cpu.ops().selective_scan_step(
        state,
        u,
        delta,
        A,
        B if B.dim() == 3 else B[:, None],
        C if C.dim() == 3 else C[:, None],
        D,
        z,
        delta_bias,
        bool(delta_softplus),
        value,
        scale,
        inject_mode == "set",
        y,
        out,
    )
    return StepOutput(y, out)
