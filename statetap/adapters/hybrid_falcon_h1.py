"""The adapter for transformers' ``FalconH1ForCausalLM``: Mamba-2 and attention in parallel.

Every Falcon-H1 decoder layer runs a Mamba-2 mixer (``FalconH1DecoderLayer.mamba``, a
``FalconH1Mixer``) and an attention block (``.self_attn``) side by side on the same normed
input, and adds both to the residual stream (``ssm_out``, ``attention_in``, ``attention_out``
are ``config.*_multiplier``)::

    h = norm(x)
    x = x + ssm_out * mamba(h) + attention_out * self_attn(attention_in * h)
    x = x + mlp(norm(x))

so every layer holds a state (:attr:`state_layers` is all of them) and keys and values, both in
the layer's one cache entry.  The ``"mixer"`` site is the Mamba branch's output, before
``ssm_out_multiplier`` scales it and the attention branch is added: the branch whose state the
``"ssm"`` and ``"conv"`` sites hold.  The attention branch is not a site.

The multipliers of muP (maximal update parametrisation) are the model's own and stay where it
applies them: ``embedding_multiplier`` on the embeddings (the input of layer 0),
``ssm_in_multiplier`` and the per-channel ``mup_vector`` (``config.ssm_multipliers``) inside the
mixer before the convolution (the ``"conv"`` window holds the scaled inputs), the attention and
MLP multipliers, and ``lm_head_multiplier`` on the logits (the tuned lens reads the logits the
model's unembedding gives: :attr:`unembedding` applies it).

The mixer calls ``mamba2_chunk_scan`` / ``mamba2_selective_state_update`` as
``Mamba2ForCausalLM``'s does (``config.mamba_n_groups`` groups of ``B`` and ``C``), and is
attached the same way.
"""

from __future__ import annotations

from torch import nn

from statetap.adapters.base import block_input
from statetap.adapters.hybrid import HybridMamba
from statetap.adapters.hybrid_padding import BiasFreePadding
from statetap.adapters.mamba import Mamba2Adapter


class FalconH1Adapter(BiasFreePadding, HybridMamba, Mamba2Adapter):
    """transformers ``FalconH1ForCausalLM``: ssm state ``[H, P, N]`` and conv window
    ``[D + 2 G N, K]`` on every layer (D = ``mamba_d_ssm``, H x P = D)."""

    model_classes = ("FalconH1ForCausalLM",)
    modeling_module = "transformers.models.falcon_h1.modeling_falcon_h1"
    final_norm_name = "final_layernorm"
    token_mixer_attributes = ("mamba",)
    mamba_mixer_class = "FalconH1Mixer"
    bias_option = "mamba_proj_bias"

    @property
    def unembedding(self) -> nn.Module:
        """The output embedding followed by ``lm_head_multiplier``, as the model computes its
        logits from the final norm's output ``[..., H]``."""
        return _Scaled(self.output_embedding, self.model.model.lm_head_multiplier)

    def skipped_block(self, layer: int, args: tuple, kwargs: dict) -> object:
        return (block_input(args, kwargs),)  # FalconH1DecoderLayer -> (hidden,)


class _Scaled(nn.Module):
    """``module`` followed by a constant factor."""

    def __init__(self, module: nn.Module, factor: float) -> None:
        super().__init__()
        self.module, self.factor = module, factor

    @property
    def weight(self):
        """The output embedding's weight (its dtype is the one the head computes in)."""
        return self.module.weight

    def forward(self, hidden):
        return self.module(hidden) * self.factor
