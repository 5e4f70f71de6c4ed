"""The adapter for transformers' ``JambaForCausalLM``: Mamba-1 layers between attention layers.

Jamba's decoder layers are of two kinds (``config.layers_block_type``): a Mamba layer
(``JambaMambaDecoderLayer.mamba``, a ``JambaMambaMixer``: Mamba-1 with RMS norms on ``dt``,
``B`` and ``C``) and an attention layer (``JambaAttentionDecoderLayer.self_attn``), one every
``config.attn_layer_period`` layers.  Either is followed by a feed-forward block, a mixture of
experts on every ``config.expert_layer_period``-th layer: the experts sit after the token mixer,
so they change neither the ``"mixer"`` site nor the state; the ``"residual"`` site after such a
layer includes their output.

The Mamba mixers call the modeling file's ``mamba_selective_scan`` (prefill) and
``mamba_selective_state_update`` (decode), through ``mamba_scan_forward``: statetap substitutes
those two and the convolution pair exactly as for ``MambaForCausalLM``
(:class:`~statetap.adapters.mamba.MambaAdapter`).  transformers' own prefill scan starts from a
zero state even after a cache; statetap's continues from the cached state.
"""

from __future__ import annotations

from statetap.adapters.hybrid import HybridMamba
from statetap.adapters.hybrid_padding import BiasFreePadding
from statetap.adapters.mamba import MambaAdapter


class JambaAdapter(BiasFreePadding, HybridMamba, MambaAdapter):
    """transformers ``JambaForCausalLM``: ssm state ``[D, N]`` (D = ``mamba_expand *
    hidden_size``) and conv window ``[D, K]`` on the Mamba layers (:attr:`state_layers`)."""

    model_classes = ("JambaForCausalLM",)
    modeling_module = "transformers.models.jamba.modeling_jamba"
    final_norm_name = "final_layernorm"
    token_mixer_attributes = ("mamba", "self_attn")
    mamba_mixer_class = "JambaMambaMixer"
    bias_option = "mamba_proj_bias"
