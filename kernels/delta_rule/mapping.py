"""The gated delta rule as a special case of RWKV-7's WKV (``statetap.kernels.wkv7``).

``wkv7`` computes, per head and with the state ``S`` ``[K, V]`` (the same layout as
transformers' and fla's delta-rule state ``[B, H, K, V]``, so no transpose at the boundary)::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,    y_t = S_t^T (scale r_t)

The gated delta rule (:mod:`.reference`), with ``D_t = diag(exp(g_t))``, expands to::

    S_t = (I - beta_t k_t k_t^T) D_t S_{t-1} + beta_t k_t v_t^T
        = D_t S_{t-1} - beta_t k_t ((D_t k_t)^T S_{t-1}) + (beta_t k_t) v_t^T

(``D_t`` is diagonal, so ``k^T D S = (D k)^T S``: the rank-one term reads the *undecayed*
``S_{t-1}`` as ``wkv7``'s does).  Term by term, ``wkv7`` with

==========  =====================================================================
``wkv7``    delta rule
==========  =====================================================================
``r``       ``q`` (L2-normalised if asked, heads repeated to ``HV``)
``w``       ``g`` as it is (log-space; a per-head gate broadcast over the ``K`` channels)
``k``       ``beta_t k_t``
``v``       ``v``
``a``       ``exp(g_t) * k_t`` (elementwise: ``D_t k_t``)
``b``       ``-beta_t k_t``
``scale``   ``scale`` (default ``K ** -0.5``)
==========  =====================================================================

reproduces it exactly in exact arithmetic, for a gate per head (Qwen3-Next, OLMo-hybrid) and
per key channel (Kimi Linear's KDA) alike: ``wkv7`` takes its decay as the log-decay ``w``
itself (``exp(w)``, no ``exp(-exp(w))`` reparameterisation), so ``alpha = exp(g)`` is
represented as given, for any ``g <= 0`` (a strong gate, ``g`` of -20 or less, only makes
``a`` underflow towards 0 together with the decayed state it multiplies).  In floating point
the mapped inputs are formed once in float32 (float64 for float64 inputs), so the fused
kernels add one rounding of ``beta k``, ``exp(g) k`` and ``-beta k`` to their own;
``tests/test_delta_rule.py`` holds every backend to the float64 definition.  The price of the
mapping: four extra ``[B, L, HV, K]`` float32 tensors (``w``, ``k``, ``a``, ``b``) are
materialised and read, and a query/key head is repeated for each of its value heads.  It serves
the ``torch`` and ``cpu`` backends and Triton's chunked form (``wkv7``'s, ``K <= 128``); Triton's
recurrent form and decode step (:mod:`.fused_recurrent`, what runs at the models' ``K = 128``)
read the models' inputs directly.
"""

from __future__ import annotations

import torch

from .reference import DeltaInputs


def wkv7_arguments(x: DeltaInputs) -> dict[str, torch.Tensor | float]:
    """``wkv7``'s ``(r, w, k, v, a, b, scale)`` keywords for the delta rule ``x``, contiguous
    ``[B, L, HV, K]`` (``v`` ``[B, L, HV, V]``) in ``x``'s compute dtype (table above)."""
    w = x.g.expand_as(x.k).contiguous()
    beta = x.beta[..., None]
    return dict(
        r=x.q.contiguous(),
        w=w,
        k=(beta * x.k).contiguous(),
        v=x.v.contiguous(),
        a=(torch.exp(w) * x.k).contiguous(),
        b=(-beta * x.k).contiguous(),
        scale=x.scale,
    )


__all__ = ["wkv7_arguments"]
