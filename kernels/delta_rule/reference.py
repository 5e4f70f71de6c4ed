"""Gated delta rule (Qwen3-Next, OLMo-hybrid, Kimi Linear's KDA): the pure-torch definition.

Layout ``[B, L, H, K]`` as transformers and flash-linear-attention pass it, state ``S``
``[HV, K, V]`` per row (transformers' and fla's ``[B, HV, K, V]``).  Per value head, with
``alpha_t = exp(g_t)`` (``g <= 0`` the log gate: one per head, or one per key channel for KDA)::

    S_t = (I - beta_t k_t k_t^T) diag(alpha_t) S_{t-1} + beta_t k_t v_t^T
    y_t = S_t^T (scale * q_t)

which is transformers' ``torch_recurrent_gated_delta_rule`` (decay the state, read the value
it predicts for ``k_t``, write ``beta_t`` times the error back along ``k_t``).  ``y_t`` reads
the state *after* token ``t``.  With ``use_qk_l2norm_in_kernel`` the query and key are first
divided by ``sqrt(|x|^2 + 1e-6)`` in the compute dtype, as the models ask; ``scale`` defaults
to ``K ** -0.5``.  Grouped heads (Qwen3-Next: ``HV = 2 HK``): each query/key head serves
``HV / HK`` consecutive value heads, as transformers' ``repeat_interleave``.

:func:`delta_rule_sequential` is the definition (float64-capable: float64 inputs compute in
float64); the fast backends map the recurrence onto ``wkv7`` (:mod:`.mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._contract import (
    Instrumentation,
    ScanOutput,
    check_state,
    check_tensor,
    compute_dtype,
    sequence_dims,
)

#: added to ``|x|^2`` before the square root of the query/key L2 norm (transformers' and fla's)
L2NORM_EPS = 1e-6


@dataclass
class DeltaInputs:
    """Validated inputs in the compute dtype, value heads expanded: what every form computes on.

    ``q`` and ``k`` are L2-normalised when asked and repeated to the ``HV`` value heads; ``q`` is
    *not* multiplied by ``scale`` yet."""

    q: torch.Tensor  # [B, L, HV, K]
    k: torch.Tensor  # [B, L, HV, K]
    v: torch.Tensor  # [B, L, HV, V]
    g: torch.Tensor  # [B, L, HV, K] or [B, L, HV, 1]: log gate (per channel or per head)
    beta: torch.Tensor  # [B, L, HV]
    scale: float

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """``(HV, K, V)``: the per-row state."""
        return (self.v.shape[2], self.k.shape[3], self.v.shape[3])


def l2_normalised(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(|x|^2 + 1e-6)`` over the last axis (the models' in-kernel query/key norm)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def validate(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel, token=False) -> float:
    """Check the inputs' types, shapes and devices; return the scale (default ``K ** -0.5``).
    Shared by every backend.  ``token``: one decode token, inputs without the time axis."""
    names = sequence_dims(("B", "L", "HK", "K"), token)
    check_tensor("query", query, (None,) * len(names), names)
    key_heads, key_dim = query.shape[-2:]
    device = query.device
    check_tensor("key", key, tuple(query.shape), names, device=device)
    v_names = (*names[:-2], "HV", "V")
    check_tensor("value", value, (*query.shape[:-2], None, None), v_names, device=device)
    value_heads = value.shape[-2]
    if value_heads % key_heads:
        raise ValueError(
            f"value must have a multiple of query's {key_heads} heads (HV = n * HK: each query/key "
            f"head serves HV / HK value heads), got HV = {value_heads}"
        )
    head_shape = (*query.shape[:-2], value_heads)
    head_names = (*names[:-2], "HV")
    check_tensor("beta", beta, head_shape, head_names, device=device)
    if isinstance(g, torch.Tensor) and g.dim() == len(names):
        check_tensor("g", g, (*head_shape, key_dim), (*head_names, "K"), device=device)
    else:
        check_tensor("g", g, head_shape, head_names, device=device)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a float or None (K ** -0.5), got {type(scale).__name__}")
    if not isinstance(use_qk_l2norm_in_kernel, bool):
        raise TypeError(
            f"use_qk_l2norm_in_kernel must be a bool, got {type(use_qk_l2norm_in_kernel).__name__}"
        )
    return key_dim**-0.5 if scale is None else float(scale)


def delta_inputs(
    query, key, value, g, beta, scale=None, use_qk_l2norm_in_kernel=False
) -> DeltaInputs:
    """Validate ``[B, L, ...]`` inputs and bring them to the compute dtype (float64 when any
    is, else float32), normalised and with the value heads expanded (:class:`DeltaInputs`)."""
    scale = validate(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel)
    dtype = compute_dtype(query, key, value, g, beta)
    q, k, v, g, beta = (t.to(dtype) for t in (query, key, value, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = l2_normalised(q), l2_normalised(k)
    group = v.shape[2] // q.shape[2]
    if group > 1:
        q, k = q.repeat_interleave(group, 2), k.repeat_interleave(group, 2)
    if g.dim() == 3:
        g = g[..., None]
    return DeltaInputs(q, k, v, g, beta, scale)


def check_decode_state(state, query, value) -> None:
    """The decode ``state`` must be float32 contiguous ``[B, HV, K, V]`` on the inputs'
    device (``query`` ``[B, HK, K]``, ``value`` ``[B, HV, V]``)."""
    shape = (query.shape[0], value.shape[1], query.shape[-1], value.shape[-1])
    check_state(state, shape, ("B", "HV", "K", "V"), query.device)


def delta_rule_sequential(
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
    """Gated delta rule one token at a time: the definition.

    Args:
        query, key: ``[B, L, HK, K]``; value: ``[B, L, HV, V]`` (``HV`` a multiple of ``HK``).
        g: log gate ``<= 0``, ``[B, L, HV]`` (Qwen3-Next, OLMo-hybrid: one per head) or
            ``[B, L, HV, K]`` (Kimi Linear's KDA: one per key channel); the state is multiplied
            by ``exp(g_t)`` before token ``t`` writes.
        beta: ``[B, L, HV]`` write strength (``(0, 1)``, or ``(0, 2)`` with negative eigenvalues).
        initial_state, output_final_state: as transformers' (the state ``[B, HV, K, V]``).
        use_qk_l2norm_in_kernel: L2-normalise query and key first (the models pass True).
        scale: multiplies the query; default ``K ** -0.5``.
        emit_at, inject_at, inject_value, inject_mode, inject_scale, states_out: the state
            contract (``docs/semantics.md``), state ``S`` ``[HV, K, V]``, float32 (float64 for
            float64 inputs).

    Returns:
        ``ScanOutput(y [B, L, HV, V] in value.dtype, final_state [B, HV, K, V] | None,
        states [B, P, HV, K, V] | None)``.

    Example:
        >>> q, k = torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4)
        >>> v, g, beta = torch.randn(1, 5, 2, 3), -torch.rand(1, 5, 2), torch.rand(1, 5, 2)
        >>> out = delta_rule_sequential(q, k, v, g, beta, use_qk_l2norm_in_kernel=True,
        ...                             emit_at=torch.tensor([4]), output_final_state=True)
        >>> torch.equal(out.states[:, 0], out.final_state)
        True
    """
    x = delta_inputs(query, key, value, g, beta, scale, use_qk_l2norm_in_kernel)
    instr = Instrumentation(
        batch=x.q.shape[0],
        length=x.q.shape[1],
        state_shape=x.state_shape,
        device=x.q.device,
        dtype=x.q.dtype,
        initial_state=initial_state,
        output_final_state=output_final_state,
        **instrumentation,
    )
    q = x.q * x.scale

    def step(state: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        k_t = x.k[:, t]  # [B, HV, K]
        state = torch.exp(x.g[:, t])[..., None] * state  # diag(alpha_t) S_{t-1}
        error = x.v[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, state)  # v_t - S^T k_t
        state = state + k_t[..., None] * (x.beta[:, t, :, None] * error)[:, :, None, :]
        return state, torch.einsum("bhk,bhkv->bhv", q[:, t], state)[:, None]

    ys, final, states = instr.run_steps(step)
    return instr.output(torch.cat(ys, 1).to(value.dtype), final, states)


__all__ = [
    "DeltaInputs",
    "L2NORM_EPS",
    "check_decode_state",
    "delta_inputs",
    "delta_rule_sequential",
    "l2_normalised",
    "validate",
]
