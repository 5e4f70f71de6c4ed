"""Shared pieces of the chunked (blocked) reference forms."""

from __future__ import annotations

import math

import torch


def causal_decay(log_decay: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """Pairwise decays within a chunk, exponentiating only non-positive differences.

    Args:
        log_decay: ``[B, n, H, K]`` per-token log decays ``w``.
        strict: False gives ``exp(sum_{j < m <= i} w_m)`` for ``j <= i`` (the decay from just
            after token ``j`` to just after token ``i``); True gives ``exp(sum_{j < m < i} w_m)``
            for ``j < i`` (to just before token ``i``).  Zero elsewhere.

    Returns:
        ``[B, n, n, H, K]`` indexed ``[b, i, j, h, k]``.
    """
    cum = log_decay.cumsum(1)
    upto = cum - log_decay if strict else cum  # g_{i-1} or g_i
    diff = upto[:, :, None] - cum[:, None, :]
    n = log_decay.shape[1]
    mask = torch.ones(n, n, dtype=torch.bool, device=log_decay.device).tril(-1 if strict else 0)
    return torch.exp(diff.masked_fill(~mask[None, :, :, None, None], -math.inf))
