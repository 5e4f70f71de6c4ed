"""The gated delta rule's fused backends: each maps its inputs onto ``wkv7`` (:mod:`.mapping`)
and runs that op's backend of the same name, which validates the instrumentation and runs.

``torch``: :func:`delta_rule_chunked` (``wkv7``'s chunked pure-torch form); ``triton``:
:func:`delta_rule_triton` (``wkv7``'s Triton kernels); ``cpu``: :func:`delta_rule_cpu`
(``wkv7``'s C++ kernel).  Float64 inputs compute in float64 (``wkv7``'s exact oracle).
"""

from __future__ import annotations

from collections.abc import Callable

from .._contract import ScanOutput
from ..wkv7.cpu import wkv7_cpu
from ..wkv7.launch import wkv7_triton
from ..wkv7.reference import CHUNK_SIZE, wkv7_chunked
from .mapping import wkv7_arguments
from .reference import delta_inputs


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
) -> ScanOutput:
    """Run the delta rule as ``wkv7_form(**wkv7_arguments(...), **options)`` (``options``: the
    state contract and the form's own keywords); ``y`` back in ``value.dtype``."""
    x = delta_inputs(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel)
    out = wkv7_form(**wkv7_arguments(x), **options)
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
    """Gated delta rule on Triton: ``wkv7``'s kernels with emission and injection fused in.

    Arguments and result as :func:`delta_rule_chunked`; ``form`` as ``wkv7``'s (``"auto"``,
    ``"recurrent"``, or ``"chunked"`` for ``K <= 64``).

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> q, k = torch.randn(1, 20, 1, 16), torch.randn(1, 20, 1, 16)
        >>> v, g, beta = torch.randn(1, 20, 1, 16), -torch.rand(1, 20, 1), torch.rand(1, 20, 1)
        >>> out = delta_rule_triton(q, k, v, g, beta, output_final_state=True, form="chunked",
        ...                         emit_at=torch.tensor([19]))
        >>> torch.allclose(out.states[:, 0], out.final_state)
        True
    """
    options = dict(initial_state=initial_state, output_final_state=output_final_state)
    options |= dict(form=form, **instrumentation)
    return through_wkv7(
        wkv7_triton, query, key, value, g, beta, use_qk_l2norm_in_kernel, scale, options
    )


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


__all__ = ["delta_rule_chunked", "delta_rule_cpu", "delta_rule_triton", "through_wkv7"]
