"""``ln_x``: the per-head GroupNorm on the WKV output of RWKV-5, -6 and -7.

BlinkDL trains it as ``GroupNorm(H, C)`` of ``y / head_size_divisor`` (8) with eps 1e-5, which
is ``GroupNorm(H, C)`` of ``y`` with eps ``1e-5 * 8**2 = 64e-5``; the released models and the
``rwkv`` package use the latter, whatever the head size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: BlinkDL's eps, 1e-5 * head_size_divisor ** 2 with head_size_divisor = 8
BLINKDL_EPS = 64e-5


class HeadGroupNorm(nn.GroupNorm):
    """GroupNorm with one group per head over ``[B, L, H * N]``, computed in float32.

    Example:
        >>> norm = HeadGroupNorm(heads=2, width=8)
        >>> norm(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, heads: int, width: int, eps: float = BLINKDL_EPS) -> None:
        super().__init__(heads, width, eps=eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` ``[B, L, H * N]`` -> normalised per head, in ``y.dtype``."""
        flat = y.reshape(-1, y.shape[-1]).float()
        normed = F.group_norm(
            flat, self.num_groups, self.weight.float(), self.bias.float(), self.eps
        )
        return normed.view(y.shape).to(y.dtype)
