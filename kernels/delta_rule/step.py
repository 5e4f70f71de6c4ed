"""Gated delta rule decode step: one token, the float32 state ``[B, HV, K, V]`` updated in place.

Token inputs are the op's without the time axis (``query``/``key`` ``[B, HK, K]``, ``value``
``[B, HV, V]``, ``g`` ``[B, HV]`` or ``[B, HV, K]``, ``beta`` ``[B, HV]``); the instrumentation
is the op's with ``L = 1`` (``emit_at`` / ``inject_at`` hold ``0`` or ``-1``), as every decode
step of ``statetap.kernels``.  The Triton step runs :mod:`.fused_recurrent` on the token as
given; the C++ step maps it onto ``wkv7_step`` (:mod:`.mapping`).
"""

from __future__ import annotations

from collections.abc import Callable

from .._contract import ScanOutput, float64_runs
from ..wkv6.step import one_token, reference_step
from ..wkv7.cpu import wkv7_step_cpu
from .launch import prepare_delta
from .mapping import wkv7_arguments
from .reference import check_decode_state, delta_inputs, delta_rule_sequential, validate


def delta_rule_step_reference(
    query,
    key,
    value,
    g,
    beta,
    state,
    use_qk_l2norm_in_kernel=False,
    *,
    scale=None,
    **instrumentation,
) -> ScanOutput:
    """One delta-rule token on any device (the definition); arguments as
    :func:`delta_rule_step_triton`.

    Example:
        >>> state = torch.zeros(1, 2, 4, 3)
        >>> q = k = torch.randn(1, 2, 4)
        >>> out = delta_rule_step_reference(q, k, torch.randn(1, 2, 3), -torch.rand(1, 2),
        ...                                 torch.rand(1, 2), state)
        >>> out.y.shape, out.final_state is state
        (torch.Size([1, 2, 3]), True)
    """
    validate(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, token=True)
    check_decode_state(state, query, value)
    options = dict(use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, scale=scale)
    return reference_step(
        delta_rule_sequential, state, [query, key, value, g, beta], [], options | instrumentation
    )


def step_through_wkv7(
    wkv7_step: Callable,
    query,
    key,
    value,
    g,
    beta,
    state,
    use_qk_l2norm_in_kernel,
    scale,
    instrumentation: dict,
) -> ScanOutput:
    """Validate one token, map it onto ``wkv7_step`` (:func:`.mapping.wkv7_arguments`) and run
    it on ``state`` in place; ``y`` ``[B, HV, V]`` back in ``value.dtype``."""
    validate(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, token=True)
    check_decode_state(state, query, value)
    x = delta_inputs(*one_token(query, key, value, g, beta), scale, use_qk_l2norm_in_kernel)
    arguments = {name: t[:, 0] if name != "scale" else t for name, t in wkv7_arguments(x).items()}
    out = wkv7_step(**arguments, state=state, **instrumentation)
    return ScanOutput(out.y.to(value.dtype), state, out.states)


@float64_runs(delta_rule_step_reference)
def delta_rule_step_triton(
    query,
    key,
    value,
    g,
    beta,
    state,
    use_qk_l2norm_in_kernel=False,
    *,
    scale=None,
    **instrumentation,
) -> ScanOutput:
    """One gated-delta-rule decode token on Triton (the recurrent kernel of
    :mod:`.fused_recurrent` with ``L = 1``, reading the token as given), the state updated in
    place.

    Args:
        query, key: ``[B, HK, K]``; value: ``[B, HV, V]``; g: ``[B, HV]`` or ``[B, HV, K]``
            (log gate); beta: ``[B, HV]``.
        state: ``[B, HV, K, V]`` float32 contiguous: ``S_{t-1}`` in, ``S_t`` out.
        use_qk_l2norm_in_kernel: L2-normalise query and key first.
        scale: multiplies the query, default ``K ** -0.5``.
        emit_at, inject_at, inject_value, inject_mode, inject_scale, states_out: as the op's,
            with ``L = 1`` (positions ``0`` or ``-1``).

    Returns:
        ``ScanOutput(y [B, HV, V] in value.dtype, state, states [B, P, HV, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> state = torch.zeros(1, 1, 16, 16)
        >>> q = k = v = torch.randn(1, 1, 16)
        >>> out = delta_rule_step_triton(q, k, v, -torch.rand(1, 1), torch.rand(1, 1), state)
        >>> out.final_state is state
        True
    """
    launch = prepare_delta(
        query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, instrumentation, state=state
    )
    return ScanOutput(launch.run().y, state, launch.instr.states)


def delta_rule_step_cpu(
    query,
    key,
    value,
    g,
    beta,
    state,
    use_qk_l2norm_in_kernel=False,
    *,
    scale=None,
    **instrumentation,
) -> ScanOutput:
    """One gated-delta-rule decode token in C++ (``wkv7_step``), the state updated in place;
    arguments and result as :func:`delta_rule_step_triton`.

    Example:
        >>> state = torch.zeros(1, 2, 4, 4)
        >>> q = k = v = torch.randn(1, 2, 4)
        >>> out = delta_rule_step_cpu(q, k, v, -torch.rand(1, 2), torch.rand(1, 2), state)
        >>> out.final_state is state
        True
    """
    return step_through_wkv7(
        wkv7_step_cpu,
        query,
        key,
        value,
        g,
        beta,
        state,
        use_qk_l2norm_in_kernel,
        scale,
        instrumentation,
    )


__all__ = [
    "delta_rule_step_cpu",
    "delta_rule_step_reference",
    "delta_rule_step_triton",
    "step_through_wkv7",
]
