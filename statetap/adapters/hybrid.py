"""Hybrid models: Mamba layers interleaved with attention (and MLP) layers.

transformers' hybrids (Bamba, Granite 4.0 hybrid, Nemotron-H; Jamba, Zamba, Zamba2, Falcon-H1)
run their Mamba layers through the same module-level functions as the pure Mamba models
(``causal_conv1d_fn`` / ``causal_conv1d_update`` and ``mamba2_chunk_scan`` /
``mamba2_selective_state_update``, or the Mamba-1 pair): statetap attaches to them exactly as to
``Mamba2ForCausalLM`` / ``MambaForCausalLM``, with the same substitutions and the same probe
pass at ``attach``.  :class:`HybridMamba` adds what differs:

* **which layers hold a state** (:attr:`HybridMamba.state_layers`): those whose token mixer is
  the modeling file's Mamba mixer class (:attr:`HybridMamba.mamba_mixer_class`).  The state
  sites ``"ssm"`` and ``"conv"`` exist on those layers only; ``"residual"`` and ``"mixer"`` on
  every layer.
* **the token mixer of each layer** (:meth:`HybridMamba.mixer`): the first block attribute of
  :attr:`HybridMamba.token_mixer_attributes` that holds a module (Mamba, attention, or on
  Nemotron-H an MLP / MoE layer); attention mixers return ``(output, weights)``, the others a
  tensor, and the ``"mixer"`` site reads either.
* **the cache each mixer is handed**, read off each mixer's signature: attention layers take it
  as ``cache`` (or ``past_key_values``), MLP layers take none.
* **the hybrid cache** (transformers 5.25: one ``DynamicCache`` built from the config, a
  ``LinearAttentionLayer`` per Mamba layer holding ``conv_states[0]`` ``[B, C, K]`` and
  ``recurrent_states[0]``, a ``DynamicLayer`` of keys and values per attention layer, a
  ``DummyLayer`` per MLP layer): statetap reads and edits the Mamba layers' entries and leaves the
  keys and values as the model wrote them; ``select_rows`` (fork, resume) selects the rows of
  every layer, keys and values included, so that a resumed pass or generation continues the
  attention layers exactly too.
* ``seq_idx`` (packed sequences) is refused: the attention layers would attend across sequences.

A hybrid adapter names its scan by its second base, :class:`~statetap.adapters.mamba.MambaAdapter`
(Mamba-1) or :class:`~statetap.adapters.mamba.Mamba2Adapter` (Mamba-2), and its structure by
the attributes below.
"""

from __future__ import annotations

import functools
import inspect

import torch

from statetap.adapters.base import block_input
from statetap.adapters.hybrid_padding import BiasFreePadding
from statetap.adapters.mamba import Mamba2Adapter, _MambaFamily
from statetap.adapters.upstream import cache_argument, drift

#: the names under which transformers' attention mixers take the cache, newest first
ATTENTION_CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


class HybridMamba(_MambaFamily):
    """The Mamba layers of a hybrid; put before :class:`MambaAdapter` / :class:`Mamba2Adapter`
    in a subclass's bases, which then names :attr:`model_classes`, :attr:`modeling_module`
    and the attributes below."""

    backbone_name = "model"
    final_norm_name = "norm"
    takes_cache_mask = True
    #: block attributes that may hold the token mixer, in the order they are tried
    token_mixer_attributes: tuple[str, ...] = ()
    #: the class name, in :attr:`modeling_module`, of the Mamba mixer
    mamba_mixer_class: str = ""

    def mixer(self, layer: int):
        block = self.blocks[layer]
        for name in self.token_mixer_attributes:
            module = getattr(block, name, None)
            if module is not None:
                return module
        raise drift(
            self.package,
            f"{type(block).__name__}",
            f"(layer {layer}) has none of the token mixers statetap knows "
            f"({', '.join(self.token_mixer_attributes)})",
        )

    def mamba_mixer(self, layer: int):
        mixer = self.mixer(layer)
        return mixer if isinstance(mixer, self._mamba_class) else None

    @functools.cached_property
    def _mamba_class(self) -> type:
        return self.modeling_attribute(self.mamba_mixer_class)

    @functools.cached_property
    def state_layers(self) -> tuple[int, ...]:
        layers = tuple(
            layer for layer in range(self.n_layers) if self.mamba_mixer(layer) is not None
        )
        if not layers:
            raise ValueError(
                f"this {type(self.model).__name__} has no {self.mamba_mixer_class} layer (its "
                f"config makes every layer attention or MLP); statetap instruments the Mamba "
                f"layers of a hybrid"
            )
        return layers

    @functools.cached_property
    def _cache_arguments(self) -> tuple[str | None, ...]:
        """Per layer, the keyword under which its mixer takes the cache: a Mamba mixer must take
        one statetap knows (else :class:`UpstreamDrift`), others may take none (MLP layers)."""
        names = []
        for layer in range(self.n_layers):
            forward = type(self.mixer(layer)).forward
            if layer in self.state_layers:
                names.append(cache_argument(self.package, forward, self.cache_arguments))
            else:
                parameters = inspect.signature(forward).parameters
                known = [name for name in ATTENTION_CACHE_ARGUMENTS if name in parameters]
                names.append(known[0] if known else None)
        return tuple(names)

    def layer_cache_argument(self, layer: int) -> str | None:
        return self._cache_arguments[layer]

    def mixer_output(self, output):
        return output[0] if isinstance(output, tuple) else output

    def with_mixer_output(self, output, tensor: torch.Tensor):
        return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

    def forward(self, input_ids, attention_mask, cache, keep_state, seq_idx=None, **kwargs):
        """As :meth:`Adapter.forward`; ``seq_idx`` is refused (see the module docstring)."""
        if seq_idx is not None:
            raise ValueError(
                f"seq_idx (packed sequences) is not supported on {type(self.model).__name__}: "
                "its attention layers would attend across the sequences; pass one sequence per "
                "row (padded) instead"
            )
        return super().forward(input_ids, attention_mask, cache, keep_state, **kwargs)

    def cached_state(self, cache, site: str, layer: int) -> torch.Tensor:
        if layer not in self.state_layers:
            raise ValueError(
                f"layer {layer} holds no recurrent state; the layers with one are "
                f"state_layers = {list(self.state_layers)}"
            )
        return super().cached_state(cache, site, layer)


class BambaAdapter(BiasFreePadding, HybridMamba, Mamba2Adapter):
    """transformers ``BambaForCausalLM``: Mamba-2 layers and attention layers
    (``config.layers_block_type``), each followed by a gated MLP."""

    model_classes = ("BambaForCausalLM",)
    modeling_module = "transformers.models.bamba.modeling_bamba"
    final_norm_name = "final_layernorm"
    token_mixer_attributes = ("mamba", "self_attn")
    mamba_mixer_class = "BambaMixer"
    bias_option = "mamba_proj_bias"

    def skipped_block(self, layer: int, args: tuple, kwargs: dict) -> object:
        return block_input(args, kwargs), None  # BambaDecoderLayer -> (hidden, attn weights)

    def forward(self, input_ids, attention_mask, cache, keep_state, **kwargs):
        """As :meth:`HybridMamba.forward`, with ``position_ids`` after the cached tokens when the
        pass continues from ``cache`` and the caller gave none: ``BambaModel`` numbers every
        forward's positions from 0 (its siblings add the cache's length), so its own continuation
        would rotate the new queries as if they came first (``generate`` passes positions)."""
        if cache is not None and kwargs.get("position_ids") is None:
            start = cache.get_seq_length()
            positions = torch.arange(input_ids.shape[1], device=input_ids.device) + start
            kwargs["position_ids"] = positions[None]
        return super().forward(input_ids, attention_mask, cache, keep_state, **kwargs)


class GraniteMoeHybridAdapter(BiasFreePadding, HybridMamba, Mamba2Adapter):
    """transformers ``GraniteMoeHybridForCausalLM`` (Granite 4.0 hybrid): Mamba-2 layers and
    attention layers (``config.layer_types``), each followed by a mixture of experts and a shared
    MLP.  The ``"mixer"`` site is the mixer's output before ``config.residual_multiplier``."""

    model_classes = ("GraniteMoeHybridForCausalLM",)
    modeling_module = "transformers.models.granitemoehybrid.modeling_granitemoehybrid"
    token_mixer_attributes = ("mamba", "self_attn")
    mamba_mixer_class = "GraniteMoeHybridMambaLayer"
    bias_option = "mamba_proj_bias"


class NemotronHAdapter(BiasFreePadding, HybridMamba, Mamba2Adapter):
    """transformers ``NemotronHForCausalLM``: one mixer per block, Mamba-2, attention, MLP or
    mixture of experts by ``config.layers_block_type``.  The ``"mixer"`` site of an MLP or MoE
    block is that block's MLP output (the block has no token mixer)."""

    model_classes = ("NemotronHForCausalLM",)
    modeling_module = "transformers.models.nemotron_h.modeling_nemotron_h"
    final_norm_name = "norm_f"
    token_mixer_attributes = ("mixer",)
    mamba_mixer_class = "NemotronHMamba2Mixer"
    bias_option = "use_bias"
