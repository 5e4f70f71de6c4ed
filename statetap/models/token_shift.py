"""RWKV's token shift with padding and instrumentation: what token ``t`` mixes in of the past.

The shift state after token ``t`` is ``s_t`` ``[C]``, the (layer-normed) input of the last
*real* token up to ``t``: a pad leaves it as it was (``s_t = s_{t-1}``).  Token ``t`` mixes in
``s_{t-1}``; ``s_{-1}`` is the cached state (zeros at the start).  An injection at ``t``
changes ``s_t`` after token ``t`` has used ``s_{t-1}``, so it first shows in token ``t + 1``,
exactly as editing the cache between the two tokens would.
"""

from __future__ import annotations

import torch

from statetap.models.instrumentation import Instrumentation, site_ops
from statetap.plan import gather_positions


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` ``[B, L]`` (True: real token) -> ``[B, L]``: the index of the last real token
    at or before each position, ``-1`` where there is none yet."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).cummax(dim=1).values


def token_shift(
    x: torch.Tensor,
    previous: torch.Tensor | None,
    mask: torch.Tensor | None,
    instrumentation: Instrumentation | None,
    site: str,
    layer: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifted sequence and the shift state after the last token.

    Args:
        x: ``[B, L, C]`` the layer-normed inputs.
        previous: ``[B, C]`` float32 shift state before the first token (None: zeros).
        mask: ``[B, L]`` bool, True for real tokens (None: all real).
        instrumentation, site, layer: emit ``s_t`` (float32) / inject into it at ``site``
            (``"att_shift"`` or ``"ffn_shift"``) of ``layer``.

    Returns:
        ``(shifted [B, L, C] in x.dtype, s_{L-1} [B, C] float32)``: ``shifted[:, t] = s_{t-1}``.
    """
    batch, length, width = x.shape
    if previous is None:
        previous = x.new_zeros(batch, width, dtype=torch.float32)
    ops = site_ops(instrumentation, site, layer)
    states = x.float()  # s_t before padding is accounted for
    if ops is not None and ops.injection is not None:
        states = ops.injection.apply(states)
    if mask is not None:
        with_previous = torch.cat([previous[:, None], states], dim=1)  # [B, L + 1, C]
        index = (last_real_index(mask) + 1)[..., None].expand(batch, length, width)
        states = with_previous.gather(1, index)
    if ops is not None and ops.emit_at is not None:
        instrumentation.store(site, layer, gather_positions(states, ops.emit_at))
    shifted = torch.cat([previous[:, None], states[:, :-1]], dim=1).to(x.dtype)
    return shifted, states[:, -1]
