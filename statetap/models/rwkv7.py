"""RWKV-7 ("Goose", BlinkDL's x070): configuration, time mix, channel mix and the models.

Time mix of layer ``i`` on ``x = ln1(h)`` ``[B, L, C]`` with the shifted ``x_prev`` and
``d = x_prev - x``: ``x_r = x + d * x_r`` (likewise ``w, k, v, a, g``), then

* ``r = R x_r``, ``k = K x_k``, ``v = V x_v``;
* log-decay ``w = -exp(-1/2) * sigmoid(w0 + tanh(x_w w1) w2)`` (the decay is ``exp(w)``);
* in-context learning rate ``a = sigmoid(a0 + x_a a1 a2)``; ``kk = normalize(k * k_k)`` per
  head; ``k <- k * (1 + (a - 1) * k_a)``;
* value residual: layer 0 keeps its ``v`` as ``v_first``; later layers
  ``v <- v + (v_first - v) * sigmoid(v0 + x_v v1 v2)``;
* ``y = wkv7(r, w, k, v, -kk, kk * a)`` (state ``[H, K, V]``), then
  ``out = O((ln_x(y) + sum_head(r * k * r_k) * v) * (sigmoid(x_g g1) g2))``.

Channel mix: ``value(relu(key(x + (x_prev - x) * x_k))^2)`` (no receptance).
Pads: ``w = 0``, ``k = 0`` and ``kk = 0`` there, so the WKV state is untouched.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from statetap import kernels
from statetap.models.common import RwkvBaseConfig, RwkvBaseForCausalLM, RwkvBaseModel
from statetap.models.group_norm import HeadGroupNorm
from statetap.models.instrumentation import run_wkv
from statetap.models.token_shift import token_shift

#: exp(-1/2): RWKV-7's log-decay is ``-DECAY_SCALE * sigmoid(.)``
DECAY_SCALE = math.exp(-0.5)


class Rwkv7Config(RwkvBaseConfig):
    """RWKV-7 sizes (fields of :class:`~statetap.models.common.RwkvBaseConfig` and the LoRA
    ranks of the decay ``w``, the learning rate ``a``, the value residual ``v`` and the gate
    ``g``).  The channel mix is ``4 * C`` wide by default.

    Example:
        >>> Rwkv7Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, head_size=8).num_heads
        2
    """

    model_type = "statetap_rwkv7"
    decay_lora_rank: int = 64
    a_lora_rank: int = 64
    value_lora_rank: int = 32
    gate_lora_rank: int = 128

    def default_intermediate_size(self) -> int:
        return 4 * self.hidden_size


def _lora(rank: int, width: int, out: int | None = None) -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(torch.zeros(width, rank)), nn.Parameter(torch.zeros(rank, out or width))


class Rwkv7TimeMix(nn.Module):
    """RWKV-7 attention (the ``"mixer"`` site); parameters as BlinkDL's ``blocks.{i}.att.*``."""

    def __init__(self, config: Rwkv7Config, layer: int) -> None:
        super().__init__()
        width, heads, size = config.hidden_size, config.num_heads, config.head_size
        self.layer, self.heads, self.head_size = layer, heads, size
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, width)))
        self.w1, self.w2 = _lora(config.decay_lora_rank, width)
        self.a1, self.a2 = _lora(config.a_lora_rank, width)
        if layer > 0:  # layer 0's value is v_first itself
            self.v0 = nn.Parameter(torch.zeros(1, 1, width))
            self.v1, self.v2 = _lora(config.value_lora_rank, width)
        self.g1, self.g2 = _lora(config.gate_lora_rank, width)
        self.r_k = nn.Parameter(torch.zeros(heads, size))
        self.receptance = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.output = nn.Linear(width, width, bias=False)
        self.ln_x = HeadGroupNorm(heads, width, config.group_norm_epsilon)

    def init_rwkv_weights(self) -> None:
        """A trainable start (the checkpoints overwrite it)."""
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            init.uniform_(getattr(self, name), 0.0, 1.0)
        init.uniform_(self.w0, -2.0, 1.0)
        init.zeros_(self.a0)
        init.constant_(self.k_k, 0.85)
        init.ones_(self.k_a)
        init.zeros_(self.r_k)
        loras = [self.w1, self.w2, self.a1, self.a2, self.g1, self.g2]
        if self.layer > 0:
            init.ones_(self.v0)
            loras += [self.v1, self.v2]
        for matrix in loras:
            init.normal_(matrix, 0.0, 0.02)

    def forward(self, x, cache, mask=None, instrumentation=None, v_first=None):
        """``x`` ``[B, L, C]`` (``ln1`` output) -> ``(output [B, L, C], v_first [B, L, C])``;
        updates ``cache.att_shift`` and ``cache.wkv`` of this layer in place."""
        batch, length, width = x.shape
        heads, size, layer = self.heads, self.head_size, self.layer
        shifted, cache.att_shift[layer] = token_shift(
            x, cache.att_shift[layer], mask, instrumentation, "att_shift", layer
        )
        delta = shifted - x
        xr, xw, xk, xv, xa, xg = (
            x + delta * mix for mix in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        )
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        log_decay = -DECAY_SCALE * torch.sigmoid(
            (self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float()
        )
        rate = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        gate = torch.sigmoid(xg @ self.g1) @ self.g2
        removal = F.normalize((k * self.k_k).view(batch, length, heads, size), dim=-1, p=2.0)
        k = k * (1 + (rate - 1) * self.k_a)
        if layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        per_head = (batch, length, heads, size)
        r4, k4, v4, rate4 = (t.view(per_head) for t in (r, k, v, rate))
        log_decay = log_decay.view(per_head)
        k_in, removal_in = k4, removal
        if mask is not None:
            real = mask[:, :, None, None]
            log_decay = log_decay.masked_fill(~real, 0.0)
            k_in = k4.masked_fill(~real, 0.0)
            removal_in = removal.masked_fill(~real, 0.0)
        out = run_wkv(
            kernels.wkv7,
            layer,
            instrumentation,
            r4,
            log_decay,
            k_in,
            v4,
            -removal_in,
            removal_in * rate4,
            initial_state=cache.wkv[layer],
            scale=1.0,
        )
        cache.wkv[layer] = out.final_state
        bonus = (r4 * k4 * self.r_k).sum(-1, keepdim=True) * v4
        y = self.ln_x(out.y.reshape(batch, length, width)) + bonus.reshape(batch, length, width)
        return self.output(y * gate), v_first


class Rwkv7ChannelMix(nn.Module):
    """RWKV-7 feed-forward; parameters as BlinkDL's ``blocks.{i}.ffn.*``."""

    def __init__(self, config: Rwkv7Config, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.x_k = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.key = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.value = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def init_rwkv_weights(self) -> None:
        init.uniform_(self.x_k, 0.0, 1.0)

    def forward(self, x, cache, mask=None, instrumentation=None):
        """``x`` ``[B, L, C]`` (``ln2`` output) -> ``[B, L, C]``; updates ``cache.ffn_shift``."""
        shifted, cache.ffn_shift[self.layer] = token_shift(
            x, cache.ffn_shift[self.layer], mask, instrumentation, "ffn_shift", self.layer
        )
        hidden = torch.relu(self.key(x + (shifted - x) * self.x_k)) ** 2
        return self.value(hidden)


class Rwkv7Model(RwkvBaseModel):
    """RWKV-7 backbone (embedding, blocks, ``ln_out``)."""

    config_class = Rwkv7Config
    time_mix_class = Rwkv7TimeMix
    channel_mix_class = Rwkv7ChannelMix


class Rwkv7ForCausalLM(RwkvBaseForCausalLM):
    """RWKV-7 causal LM whose WKV runs :func:`statetap.kernels.wkv7`.

    Example:
        >>> config = Rwkv7Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, head_size=8,
        ...                      decay_lora_rank=4, a_lora_rank=4, value_lora_rank=4,
        ...                      gate_lora_rank=4)
        >>> model = Rwkv7ForCausalLM(config).eval()
        >>> out = model(torch.randint(0, 50, (2, 5)), use_cache=True)
        >>> out.logits.shape, out.cache.wkv[0].shape
        (torch.Size([2, 5, 50]), torch.Size([2, 2, 8, 8]))
    """

    config_class = Rwkv7Config
    model_class = Rwkv7Model
