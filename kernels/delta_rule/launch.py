"""The gated delta rule's fused backends and the choice of Triton kernel.

``torch``: :func:`delta_rule_chunked` (``wkv7``'s chunked pure-torch form on the mapped inputs,
:mod:`.mapping`); ``cpu``: :func:`delta_rule_cpu` (``wkv7``'s C++ kernel, mapped likewise);
``triton``: :func:`delta_rule_triton`, the recurrent kernel of :mod:`.fused_recurrent` on the
models' own inputs, or ``wkv7``'s chunked kernels on the mapped ones.  Float64 inputs compute in
float64 (the exact oracle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import _triton
from .._contract import Instrumentation, ScanOutput, float64_runs
from .._triton import KernelInstrumentation
from ..wkv6.launch import choose_form
from ..wkv7.chunk import AUTO_MAX_KEY_DIM
from ..wkv7.cpu import wkv7_cpu
from ..wkv7.launch import wkv7_triton
from ..wkv7.reference import CHUNK_SIZE, wkv7_chunked
from .fused_recurrent import launch_recurrent
from .mapping import wkv7_arguments
from .reference import check_decode_state, delta_inputs, validate


def through_wkv7(
    wkv7_form: Callable,
    query,
    key,
    value,
    g,
    beta,
    use_qk_l2norm_in_kernel: bool,
    scale: float | None,
    options: dict,
    value_as_given: bool = False,
) -> ScanOutput:
    """Run the delta rule as ``wkv7_form(**wkv7_arguments(...), **options)`` (``options``: the
    state contract and the form's own keywords); ``y`` back in ``value.dtype``.
    ``value_as_given``: hand ``value`` over in its own dtype (not rounded: it is the caller's
    tensor), so that ``wkv7``'s chunked Triton form runs its products on tensor cores for half
    values as it does for RWKV-7's (the other mapped inputs are float32)."""
    x = delta_inputs(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel)
    arguments = wkv7_arguments(x)
    if value_as_given:
        arguments["v"] = value.contiguous()
    out = wkv7_form(**arguments, **options)
    return ScanOutput(out.y.to(value.dtype), out.final_state, out.states)


def delta_rule_chunked(
    query,
    key,
    value,
    g,
    beta,
    initial_state=None,
    output_final_state=False,
    use_qk_l2norm_in_kernel=False,
    *,
    scale=None,
    chunk_size=CHUNK_SIZE,
    **instrumentation,
) -> ScanOutput:
    """Gated delta rule (Qwen3-Next, OLMo-hybrid, Kimi Linear) with state emission and
    injection; the ``torch`` backend: ``wkv7``'s chunked pure-torch form (:mod:`.mapping`).

    Argument names follow transformers' ``torch_recurrent_gated_delta_rule``; the definition
    is :func:`.reference.delta_rule_sequential`.

    Args:
        query, key: ``[B, L, HK, K]``; value: ``[B, L, HV, V]`` (``HV`` a multiple of ``HK``:
            each query/key head serves ``HV / HK`` consecutive value heads).
        g: log gate ``<= 0``, ``[B, L, HV]`` (one per head: Qwen3-Next, OLMo-hybrid) or
            ``[B, L, HV, K]`` (one per key channel: Kimi Linear's KDA).
        beta: ``[B, L, HV]`` write strength.
        initial_state: ``[B, HV, K, V]`` or None (zeros); output_final_state: return
            ``S_{L-1}``.
        use_qk_l2norm_in_kernel: L2-normalise query and key first (the models pass True).
        scale: multiplies the query; default ``K ** -0.5``.
        chunk_size: tokens per chunk of the torch form.
        emit_at, inject_at, inject_value, inject_mode, inject_scale, states_out: the state
            contract (``docs/semantics.md``); the state ``S`` is ``[HV, K, V]``, float32.

    Returns:
        ``ScanOutput(y [B, L, HV, V] in value.dtype, final_state [B, HV, K, V] | None,
        states [B, P, HV, K, V] | None)``.

    Example:
        >>> q, k = torch.randn(1, 9, 2, 8), torch.randn(1, 9, 2, 8)
        >>> v, g, beta = torch.randn(1, 9, 4, 8), -torch.rand(1, 9, 4), torch.rand(1, 9, 4)
        >>> out = delta_rule_chunked(q, k, v, g, beta, use_qk_l2norm_in_kernel=True,
        ...                          emit_at=torch.tensor([3]), inject_at=torch.tensor([5]),
        ...                          inject_value=torch.ones(4, 8, 8), output_final_state=True)
        >>> out.y.shape, out.states.shape
        (torch.Size([1, 9, 4, 8]), torch.Size([1, 1, 4, 8, 8]))
    """
    options = dict(initial_state=initial_state, output_final_state=output_final_state)
    options |= dict(chunk_size=chunk_size, **instrumentation)
    return through_wkv7(
        wkv7_chunked, query, key, value, g, beta, use_qk_l2norm_in_kernel, scale, options
    )


@dataclass(slots=True)
class DeltaLaunch:
    """One launch of :func:`~.fused_recurrent.delta_rule_recurrent_kernel`: ``inputs``
    ``(query, key, value, g, beta)`` contiguous as the caller passed them, ``y`` ``[B, L, HV, V]``
    in ``value.dtype`` (uninitialised), the instrumentation.  A decode step's tensors have no
    time axis (the same memory as ``L = 1``)."""

    inputs: tuple[torch.Tensor, ...]
    scale: float
    y: torch.Tensor
    instr: KernelInstrumentation
    dims: tuple[int, int, int, int, int]  # (B, L, HV, K, V): a decode step's L is 1
    group: int  # value heads per query/key head
    gate_per_channel: bool
    l2norm: bool

    def run(self) -> ScanOutput:
        """Launch the recurrent kernel and return the contract's result."""
        launch_recurrent(self)
        return self.instr.output(self.y)


def prepare_delta(
    query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, instrumentation: dict, state=None
) -> DeltaLaunch:
    """Validate as the reference does and lay out one recurrent launch (``state``: decode one
    token in place, inputs without the time axis)."""
    token = state is not None
    scale = validate(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, token=token)
    if token:
        check_decode_state(state, query, value)
    _triton.check_launchable(query.device, "delta_rule")
    batch, length = query.shape[0], 1 if token else query.shape[1]
    heads, key_dim, value_dim = value.shape[-2], query.shape[-1], value.shape[-1]
    instr = Instrumentation(
        batch=batch,
        length=length,
        state_shape=(heads, key_dim, value_dim),
        device=query.device,
        dtype=torch.float32,
        **instrumentation,
    )
    inputs = tuple(t.contiguous() for t in (query, key, value, g, beta))
    return DeltaLaunch(
        inputs=inputs,
        scale=scale,
        y=_triton.empty(value.shape, value.dtype, value.device),
        instr=KernelInstrumentation.build(instr, state),
        dims=(batch, length, heads, key_dim, value_dim),
        group=heads // query.shape[-2],
        gate_per_channel=g.dim() == query.dim(),
        l2norm=use_qk_l2norm_in_kernel,
    )


@float64_runs(delta_rule_chunked)
def delta_rule_triton(
    query,
    key,
    value,
    g,
    beta,
    initial_state=None,
    output_final_state=False,
    use_qk_l2norm_in_kernel=False,
    *,
    scale=None,
    form="auto",
    **instrumentation,
) -> ScanOutput:
    """Gated delta rule on Triton, with emission and injection fused in.

    Arguments and result as :func:`delta_rule_chunked`; ``form``: ``"recurrent"`` (the kernel
    of :mod:`.fused_recurrent` on these inputs), ``"chunked"`` (``wkv7``'s chunked kernels on
    the mapped inputs, ``K <= 128``) or ``"auto"`` (``wkv7``'s rule,
    :func:`~..wkv6.launch.choose_form`: recurrent for short sequences and ``K > 64``).

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> q, k = torch.randn(1, 20, 1, 16), torch.randn(1, 20, 1, 16)
        >>> v, g, beta = torch.randn(1, 20, 1, 16), -torch.rand(1, 20, 1), torch.rand(1, 20, 1)
        >>> out = delta_rule_triton(q, k, v, g, beta, output_final_state=True, form="chunked",
        ...                         emit_at=torch.tensor([19]))
        >>> torch.allclose(out.states[:, 0], out.final_state)
        True
    """
    options = dict(initial_state=initial_state, output_final_state=output_final_state)
    options |= instrumentation
    validate(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel)
    dims = (query.shape[0], query.shape[1], value.shape[2], query.shape[3], value.shape[3])
    if choose_form(form, dims, AUTO_MAX_KEY_DIM) == "chunked":
        return through_wkv7(
            wkv7_triton,
            query,
            key,
            value,
            g,
            beta,
            use_qk_l2norm_in_kernel,
            scale,
            options | dict(form="chunked"),
            value_as_given=True,
        )
    launch = prepare_delta(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, options)
    return launch.run()


def delta_rule_cpu(
    query,
    key,
    value,
    g,
    beta,
    initial_state=None,
    output_final_state=False,
    use_qk_l2norm_in_kernel=False,
    *,
    scale=None,
    **instrumentation,
) -> ScanOutput:
    """Gated delta rule in C++ (``wkv7``'s CPU kernel); arguments and result as
    :func:`delta_rule_chunked`.

    Example:
        >>> q, k = torch.randn(1, 7, 2, 4), torch.randn(1, 7, 2, 4)
        >>> v, g, beta = torch.randn(1, 7, 2, 4), -torch.rand(1, 7, 2, 4), torch.rand(1, 7, 2)
        >>> out = delta_rule_cpu(q, k, v, g, beta, output_final_state=True,
        ...                      emit_at=torch.tensor([6]))
        >>> torch.equal(out.states[:, 0], out.final_state)
        True
    """
    options = dict(initial_state=initial_state, output_final_state=output_final_state)
    return through_wkv7(
        wkv7_cpu,
        query,
        key,
        value,
        g,
        beta,
        use_qk_l2norm_in_kernel,
        scale,
        options | instrumentation,
    )


__all__ = [
    "DeltaLaunch",
    "delta_rule_chunked",
    "delta_rule_cpu",
    "delta_rule_triton",
    "prepare_delta",
    "through_wkv7",
]
