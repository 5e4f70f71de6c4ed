"""RWKV-5 ("Eagle", BlinkDL's x052): configuration, time mix, channel mix and the models.

Time mix of layer ``i`` on ``x = ln1(h)`` ``[B, L, C]`` and the shifted ``x_prev``: each input
is a lerp ``x_* = x * time_mix_* + x_prev * (1 - time_mix_*)``; ``r, k, v`` are linear maps
of ``x_r, x_k, x_v``, ``g = silu(gate(x_g))``; the WKV runs with the static log-decay
``w = -exp(time_decay)`` ``[H, N]`` (decay ``exp(-exp(time_decay))``) and the bonus
``u = time_faaaa``: ``y = wkv5(r, k, v, w, u, scale=1)``, ``out = output(ln_x(y) * g)``.

Channel mix: ``sigmoid(receptance(x_r)) * value(relu(key(x_k))^2)`` with lerp mixes.
Pads: the decay is 1 (``w = 0``) and ``k = 0`` there, so the state is untouched; a batch with
pads runs :func:`statetap.kernels.wkv6` with the decay spelled out per token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from statetap import kernels
from statetap.models.common import RwkvBaseConfig, RwkvBaseForCausalLM, RwkvBaseModel
from statetap.models.group_norm import HeadGroupNorm
from statetap.models.instrumentation import run_wkv
from statetap.models.token_shift import token_shift


class Rwkv5Config(RwkvBaseConfig):
    """RWKV-5 sizes (:class:`~statetap.models.common.RwkvBaseConfig`); the channel mix is
    ``int(3.5 * C) // 32 * 32`` wide by default.

    Example:
        >>> config = Rwkv5Config(vocab_size=50, hidden_size=64, num_hidden_layers=2, head_size=16)
        >>> config.num_heads, config.intermediate_size
        (4, 224)
    """

    model_type = "statetap_rwkv5"

    def default_intermediate_size(self) -> int:
        return int(3.5 * self.hidden_size) // 32 * 32


def squared_relu_gated(ffn: nn.Module, xk: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """RWKV-5/6 channel mix after its token mixing: ``sigmoid(R x_r) * V relu(K x_k)^2``."""
    return torch.sigmoid(ffn.receptance(xr)) * ffn.value(torch.relu(ffn.key(xk)) ** 2)


class Rwkv5TimeMix(nn.Module):
    """RWKV-5 attention (the ``"mixer"`` site); parameters as BlinkDL's ``blocks.{i}.att.*``.

    :class:`~statetap.models.rwkv6.Rwkv6TimeMix` extends it with data-dependent mixing and
    decay (:meth:`make_mixing`, :meth:`mixed_inputs`, :meth:`log_decay`).
    """

    def __init__(self, config: RwkvBaseConfig, layer: int) -> None:
        super().__init__()
        width, heads, size = config.hidden_size, config.num_heads, config.head_size
        self.layer, self.heads, self.head_size = layer, heads, size
        self.make_mixing(config)
        self.time_faaaa = nn.Parameter(torch.zeros(heads, size))
        self.receptance = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.gate = nn.Linear(width, width, bias=False)
        self.output = nn.Linear(width, width, bias=False)
        self.ln_x = HeadGroupNorm(heads, width, config.group_norm_epsilon)

    def make_mixing(self, config: RwkvBaseConfig) -> None:
        """The token-mixing and decay parameters."""
        width = config.hidden_size
        for name in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, width)))
        self.time_decay = nn.Parameter(torch.zeros(config.num_heads, config.head_size))

    def init_rwkv_weights(self) -> None:
        """A trainable start (the checkpoints overwrite it)."""
        for name in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g"):
            init.uniform_(getattr(self, name), 0.0, 1.0)
        init.uniform_(self.time_decay, -3.0, 1.0)
        init.normal_(self.time_faaaa, 0.0, 0.5)

    def mixed_inputs(self, x: torch.Tensor, shifted: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"r", "k", "v", "g"}`` inputs ``[B, L, C]`` mixed from ``x`` and its shift."""
        return {
            name: x * mix + shifted * (1 - mix)
            for name, mix in (
                ("r", self.time_mix_r),
                ("k", self.time_mix_k),
                ("v", self.time_mix_v),
                ("g", self.time_mix_g),
            )
        }

    def log_decay(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The log-decay, float32: ``[H, N]`` here (static)."""
        return -torch.exp(self.time_decay.float())

    def forward(self, x, cache, mask=None, instrumentation=None, v_first=None):
        """``x`` ``[B, L, C]`` (``ln1`` output) -> ``(output [B, L, C], v_first)`` (``v_first``
        passes through); updates ``cache.att_shift`` and ``cache.wkv`` of this layer."""
        batch, length, width = x.shape
        layer = self.layer
        shifted, cache.att_shift[layer] = token_shift(
            x, cache.att_shift[layer], mask, instrumentation, "att_shift", layer
        )
        inputs = self.mixed_inputs(x, shifted)
        per_head = (batch, length, self.heads, self.head_size)
        r = self.receptance(inputs["r"]).view(per_head)
        k = self.key(inputs["k"]).view(per_head)
        v = self.value(inputs["v"]).view(per_head)
        gate = F.silu(self.gate(inputs["g"]))
        log_decay = self.log_decay(inputs)
        u = self.time_faaaa.float()
        if log_decay.dim() == 2 and mask is None:
            kernel = kernels.wkv5
        else:  # a decay per token: data-dependent (RWKV-6) or stopped at the pads
            kernel = kernels.wkv6
            log_decay = log_decay.expand(per_head)
            if mask is not None:
                log_decay = log_decay.masked_fill(~mask[:, :, None, None], 0.0)
                k = k.masked_fill(~mask[:, :, None, None], 0.0)
        out = run_wkv(
            kernel,
            layer,
            instrumentation,
            r,
            k,
            v,
            log_decay,
            u,
            initial_state=cache.wkv[layer],
            scale=1.0,
        )
        cache.wkv[layer] = out.final_state
        y = self.ln_x(out.y.reshape(batch, length, width))
        return self.output(y * gate), v_first


class Rwkv5ChannelMix(nn.Module):
    """RWKV-5 feed-forward; parameters as BlinkDL's ``blocks.{i}.ffn.*``."""

    def __init__(self, config: RwkvBaseConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        width = config.hidden_size
        self.make_mixing(width)
        self.key = nn.Linear(width, config.intermediate_size, bias=False)
        self.receptance = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(config.intermediate_size, width, bias=False)

    def make_mixing(self, width: int) -> None:
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, width))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, width))

    def init_rwkv_weights(self) -> None:
        init.uniform_(self.time_mix_k, 0.0, 1.0)
        init.uniform_(self.time_mix_r, 0.0, 1.0)

    def mixed_inputs(self, x, shifted) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_k, x_r)`` ``[B, L, C]``."""
        return (
            x * self.time_mix_k + shifted * (1 - self.time_mix_k),
            x * self.time_mix_r + shifted * (1 - self.time_mix_r),
        )

    def forward(self, x, cache, mask=None, instrumentation=None):
        """``x`` ``[B, L, C]`` (``ln2`` output) -> ``[B, L, C]``; updates ``cache.ffn_shift``."""
        shifted, cache.ffn_shift[self.layer] = token_shift(
            x, cache.ffn_shift[self.layer], mask, instrumentation, "ffn_shift", self.layer
        )
        return squared_relu_gated(self, *self.mixed_inputs(x, shifted))


class Rwkv5Model(RwkvBaseModel):
    """RWKV-5 backbone (embedding, blocks, ``ln_out``)."""

    config_class = Rwkv5Config
    time_mix_class = Rwkv5TimeMix
    channel_mix_class = Rwkv5ChannelMix


class Rwkv5ForCausalLM(RwkvBaseForCausalLM):
    """RWKV-5 causal LM whose WKV runs :func:`statetap.kernels.wkv5`.

    Example:
        >>> config = Rwkv5Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, head_size=8)
        >>> out = Rwkv5ForCausalLM(config).eval()(torch.randint(0, 50, (2, 5)), use_cache=True)
        >>> out.logits.shape, out.cache.wkv[0].shape
        (torch.Size([2, 5, 50]), torch.Size([2, 2, 8, 8]))
    """

    config_class = Rwkv5Config
    model_class = Rwkv5Model
