"""RWKV-6 ("Finch", BlinkDL's x060): configuration, time mix, channel mix and the models.

RWKV-5 with data-dependent token mixing and decay.  On ``x = ln1(h)`` and ``d = x_prev - x``:
``m_w, m_k, m_v, m_r, m_g = tanh((x + d * time_maa_x) time_maa_w1) time_maa_w2`` (a LoRA of
rank ``mix_lora_rank`` per input, in that order), ``x_* = x + d * (time_maa_* + m_*)``; the
log-decay is ``-exp(time_decay + tanh(x_w time_decay_w1) time_decay_w2)`` per token and
channel (rank ``decay_lora_rank``).  The rest, and the padding rule, is RWKV-5's
(:mod:`statetap.models.rwkv5`); the channel mix uses ``x + d * time_maa_*`` inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from statetap.models.common import RwkvBaseForCausalLM, RwkvBaseModel
from statetap.models.rwkv5 import Rwkv5ChannelMix, Rwkv5Config, Rwkv5TimeMix

#: the order of the inputs in ``time_maa_w1`` / ``time_maa_w2``
MIX_ORDER = ("w", "k", "v", "r", "g")


class Rwkv6Config(Rwkv5Config):
    """RWKV-6 sizes: RWKV-5's and the LoRA ranks of the token mixing and of the decay.

    Example:
        >>> Rwkv6Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, head_size=8,
        ...             mix_lora_rank=4).mix_lora_rank
        4
    """

    model_type = "statetap_rwkv6"
    mix_lora_rank: int = 32
    decay_lora_rank: int = 64


class Rwkv6TimeMix(Rwkv5TimeMix):
    """RWKV-6 attention (the ``"mixer"`` site); parameters as BlinkDL's ``blocks.{i}.att.*``."""

    def make_mixing(self, config: Rwkv6Config) -> None:
        width, mix_rank, decay_rank = (
            config.hidden_size,
            config.mix_lora_rank,
            config.decay_lora_rank,
        )
        for name in ("x", *MIX_ORDER):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.zeros(1, 1, width)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(width, len(MIX_ORDER) * mix_rank))
        self.time_maa_w2 = nn.Parameter(torch.zeros(len(MIX_ORDER), mix_rank, width))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, width))
        self.time_decay_w1 = nn.Parameter(torch.zeros(width, decay_rank))
        self.time_decay_w2 = nn.Parameter(torch.zeros(decay_rank, width))

    def init_rwkv_weights(self) -> None:
        for name in ("x", *MIX_ORDER):
            init.uniform_(getattr(self, f"time_maa_{name}"), 0.0, 1.0)
        for matrix in (self.time_maa_w1, self.time_maa_w2, self.time_decay_w1, self.time_decay_w2):
            init.normal_(matrix, 0.0, 0.02)
        init.uniform_(self.time_decay, -3.0, 1.0)
        init.normal_(self.time_faaaa, 0.0, 0.5)

    def mixed_inputs(self, x, shifted) -> dict[str, torch.Tensor]:
        """``{"w", "k", "v", "r", "g"}`` inputs ``[B, L, C]``."""
        batch, length, width = x.shape
        delta = shifted - x
        low = torch.tanh((x + delta * self.time_maa_x) @ self.time_maa_w1)
        low = low.view(batch * length, len(MIX_ORDER), -1).transpose(0, 1)  # [5, B*L, D]
        offsets = torch.bmm(low, self.time_maa_w2).view(len(MIX_ORDER), batch, length, width)
        return {
            name: x + delta * (getattr(self, f"time_maa_{name}") + offset)
            for name, offset in zip(MIX_ORDER, offsets.unbind(0))
        }

    def log_decay(self, inputs) -> torch.Tensor:
        """The log-decay ``[B, L, H, N]`` float32, per token."""
        xw = inputs["w"]
        raw = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        return -torch.exp(raw.float()).view(*xw.shape[:2], self.heads, self.head_size)


class Rwkv6ChannelMix(Rwkv5ChannelMix):
    """RWKV-6 feed-forward; parameters as BlinkDL's ``blocks.{i}.ffn.*``."""

    def make_mixing(self, width: int) -> None:
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, width))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, width))

    def init_rwkv_weights(self) -> None:
        init.uniform_(self.time_maa_k, 0.0, 1.0)
        init.uniform_(self.time_maa_r, 0.0, 1.0)

    def mixed_inputs(self, x, shifted) -> tuple[torch.Tensor, torch.Tensor]:
        delta = shifted - x
        return x + delta * self.time_maa_k, x + delta * self.time_maa_r


class Rwkv6Model(RwkvBaseModel):
    """RWKV-6 backbone (embedding, blocks, ``ln_out``)."""

    config_class = Rwkv6Config
    time_mix_class = Rwkv6TimeMix
    channel_mix_class = Rwkv6ChannelMix


class Rwkv6ForCausalLM(RwkvBaseForCausalLM):
    """RWKV-6 causal LM whose WKV runs :func:`statetap.kernels.wkv6`.

    Example:
        >>> config = Rwkv6Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, head_size=8,
        ...                      mix_lora_rank=4, decay_lora_rank=4)
        >>> out = Rwkv6ForCausalLM(config).eval()(torch.randint(0, 50, (2, 5)), use_cache=True)
        >>> out.logits.shape, out.cache.wkv[0].shape
        (torch.Size([2, 5, 50]), torch.Size([2, 2, 8, 8]))
    """

    config_class = Rwkv6Config
    model_class = Rwkv6Model
