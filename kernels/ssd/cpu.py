"""Mamba-2 SSD and its decode step on the CPU: the C++ kernels of ``csrc/ssd.cpp``
(``torch.ops.statetap.ssd`` / ``ssd_step``), recurrent form.

Same arguments, validation and results as the references; float64 inputs run the reference
(the exact oracle).
"""

from __future__ import annotations

import math

from .. import _cpu
from .._contract import ScanOutput, float64_runs
from ..selective_scan.step import StepOutput, check_step_injection, emit_buffer
from .reference import ssd_chunked, validate
from .step import _check_step, check_dt_limit, ssd_step_reference


@float64_runs(ssd_chunked)
def ssd_cpu(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    **instrumentation,
) -> ScanOutput:
    """Mamba-2 SSD, C++ forward (recurrent form) with states emitted and injected at any timestep.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.ssd.reference.ssd_chunked`.

    Args:
        x: ``[B, L, H, P]`` (float32, float16 or bfloat16); dt: ``[B, L, H]``; A: ``[H]``;
        B, C: ``[B, L, G, N]``; chunk_size: 256 (validated; the recurrent form does not use it).
        D: ``[H]`` or ``[H, P]``; z: ``[B, L, H, P]``; dt_bias: ``[H]``; dt_softplus: False;
        dt_limit: ``(0, inf)`` (clamp applied when different); initial_states (mamba-ssm's
            name) or initial_state: ``[B, H, P, N]``; seq_idx: ``[B, L]`` integer.
        output_final_state, emit_at, inject_at, inject_value, inject_mode, inject_scale: the
            state contract, state ``[H, P, N]``.

    Returns:
        ``ScanOutput(y [B, L, H, P] in x.dtype, final_state [B, H, P, N] fp32 or None,
        states [B, P', H, P, N] fp32 or None)``.

    Example:
        >>> x, dt = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2)
        >>> A, B, C = -torch.rand(2), torch.randn(1, 10, 1, 16), torch.randn(1, 10, 1, 16)
        >>> out = ssd_cpu(x, dt, A, B, C, dt_softplus=True,
        ...               emit_at=torch.tensor([3, 9]), output_final_state=True)
        >>> torch.equal(out.states[:, 1], out.final_state)
        True
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    instr, reset = validate(
        x, dt, A, B, C, D, z, dt_bias, dt_limit, seq_idx, initial_states, instrumentation
    )
    _cpu.check_device(x.device, "ssd")
    y = _cpu.empty(x.shape, x.dtype)
    args = _cpu.contract_args(instr)
    _cpu.ops().ssd(
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        bool(dt_softplus),
        check_dt_limit(dt_limit),
        float(dt_limit[0]),
        float(min(dt_limit[1], 3.0e38)),
        reset,
        y=y,
        **args,
    )
    return instr.output(y, args["final_state"], args["states"])


@float64_runs(ssd_step_reference)
def ssd_step_cpu(
    state,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    *,
    inject_value=None,
    inject_mode="add",
    inject_scale=None,
    emit=False,
) -> StepOutput:
    """Mamba-2 decode step in C++; same arguments and result as
    :func:`statetap.kernels.ssd.step.ssd_step_reference` (state ``[B, H, P, N]`` updated in
    place; float64 runs the reference)."""
    _check_step(state, x, dt, A, B, C, D, z, dt_bias)
    limited = check_dt_limit(dt_limit)
    value, scale = check_step_injection(inject_value, inject_mode, inject_scale, state)
    _cpu.check_device(state.device, "ssd_step")
    y = _cpu.empty(x.shape, x.dtype)
    out = emit_buffer(emit, state)
    _cpu.ops().ssd_step(
        state,
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        bool(dt_softplus),
        limited,
        float(dt_limit[0]),
        float(min(dt_limit[1], 3.0e38)),
        value,
        scale,
        inject_mode == "set",
        y,
        out,
    )
    return StepOutput(y, out)
