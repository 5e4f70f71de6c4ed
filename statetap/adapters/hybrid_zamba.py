"""Adapters for transformers' ``ZambaForCausalLM`` (Mamba-1) and ``Zamba2ForCausalLM`` (Mamba-2).

Every Zamba layer is a Mamba layer (``ZambaMambaDecoderLayer``, ``Zamba2MambaDecoderLayer``), so
every layer holds a state (:attr:`state_layers` is all of them).  Every few layers
(``config.layers_block_type == "hybrid"``) the layer is a ``*HybridLayer`` that first runs a
*shared* attention block: one set of weights (Zamba: one block; Zamba2:
``config.num_mem_blocks`` blocks used in turn, each with per-use LoRA adapters on its
projections) fed with the residual stream concatenated with the input embeddings.  Its output,
through the layer's own ``linear``, is added to the Mamba layer's input before its norm; its
keys and values are cached under the hybrid layer's own index, so every use of the shared block
has its own keys and values.  Layers are numbered by position in ``model.layers`` (the shared
block has no number of its own), and the sites follow:

* ``"mixer"`` is the Mamba mixer's output on every layer; the shared block's output is part of
  the Mamba layer's input, not a site;
* ``"residual"`` after a layer is that layer's output, shared block included.

Zamba's mixer splits its channels into ``config.n_mamba_heads`` heads, and calls the modeling
file's ``mamba_selective_scan`` (prefill) or ``mamba_selective_state_update`` (decode) once per
head, each with its own ``[D/H, N]`` slice of the cached ``[H, D/H, N]`` state.  statetap hands
each call its head's slice of the layer's initial state, emissions and injections, and joins the
heads' emitted states: the ``"ssm"`` site is ``[H, D/H, N]`` as the cache holds it.
transformers' own prefill scan starts from a zero state even after a cache; statetap's continues
from the cached state.

Zamba2's mixer is Mamba-2 (``mamba2_chunk_scan`` / ``mamba2_selective_state_update``,
``config.mamba_ngroups`` groups of ``B`` and ``C``) and is attached exactly as
``Mamba2ForCausalLM``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from statetap.adapters.hybrid import HybridMamba
from statetap.adapters.hybrid_padding import BiasFreePadding
from statetap.adapters.mamba import Mamba2Adapter, MambaAdapter
from statetap.adapters.upstream import drift
from statetap.plan import Pass


class _ZambaLayers(BiasFreePadding, HybridMamba):
    """The layer structure Zamba and Zamba2 share: a Mamba mixer in every layer, inside
    ``mamba_decoder`` on the hybrid layers."""

    final_norm_name = "final_layernorm"

    def mixer(self, layer: int):
        block = self.blocks[layer]
        decoder = getattr(block, "mamba_decoder", block)  # a hybrid layer's Mamba layer
        if not hasattr(decoder, "mamba"):
            raise drift(
                self.package,
                type(block).__name__,
                f"(layer {layer}) has no Mamba mixer as .mamba or .mamba_decoder.mamba",
            )
        return decoder.mamba


class ZambaAdapter(_ZambaLayers, MambaAdapter):
    """transformers ``ZambaForCausalLM``: ssm state ``[H, D/H, N]`` (H = ``n_mamba_heads``, D =
    ``mamba_expand * hidden_size``) and conv window ``[D, K]`` on every layer."""

    model_classes = ("ZambaForCausalLM",)
    modeling_module = "transformers.models.zamba.modeling_zamba"
    mamba_mixer_class = "ZambaMambaMixer"
    bias_option = "mamba_proj_bias"

    def __init__(self, model) -> None:
        super().__init__(model)
        self._head = 0  # the head the running layer's next scan call is for
        self._head_states: list[torch.Tensor] = []  # heads' emitted states, in order

    def ssm_shape(self, mixer) -> tuple[int, ...]:
        return (mixer.n_mamba_heads, mixer.mamba_head_dim, mixer.ssm_state_size)

    def enter_layer(self, pass_: Pass, layer: int, kwargs: dict) -> None:
        super().enter_layer(pass_, layer, kwargs)
        self._head, self._head_states = 0, []

    def substitutions(self, pass_: Pass) -> dict:
        replacements = super().substitutions(pass_)
        for name in (self.scan_name, self.step_name):
            replacements[name] = self._per_head(pass_, replacements[name], name)
        return replacements

    def _per_head(self, pass_: Pass, run: Callable, name: str) -> Callable:
        """``run`` (a scan drop-in for one ``[B, D/H, ...]`` head) called on the running
        layer's next head: with that head's slice of the initial state and of the ``"ssm"``
        work, its emitted states kept until the last head joins them ``[B, P, H, D/H, N]``."""

        def head_call(*args, **kwargs):
            mixer = self.mixer(pass_.layer)
            head, heads = self._head, mixer.n_mamba_heads
            channels = args[1].shape[1]  # the hidden states: [B, D/H, L] or [B, D/H]
            if head >= heads or channels != mixer.mamba_head_dim:
                raise drift(
                    self.package,
                    f"{self.modeling_module}.{name}",
                    f"was called for head {head} with {channels} channels; statetap expects one "
                    f"call per head, {heads} heads of {mixer.mamba_head_dim} channels",
                )
            self._head += 1
            key = ("ssm", pass_.layer)
            whole, initial = pass_.ops.get(key), pass_.layer_state
            with contextlib.ExitStack() as restore:
                # each head's emission is joined below, then stored (offloaded) once
                restore.callback(setattr, pass_, "offload", pass_.offload)
                pass_.offload = False
                if whole is not None:
                    pass_.ops[key] = _head_ops(whole, head)
                    restore.callback(pass_.ops.__setitem__, key, whole)
                if initial is not None:
                    pass_.layer_state = initial[:, head]
                    restore.callback(setattr, pass_, "layer_state", initial)
                result = run(*args, **kwargs)
            if whole is not None and whole.emit_at is not None:
                self._head_states.append(pass_.results.pop(key))
                if head == heads - 1:
                    pass_.store("ssm", pass_.layer, torch.stack(self._head_states, dim=2))
            return result

        return head_call


def _head_ops(ops, head: int):
    """The ``"ssm"`` work ``ops`` of a ``[H, D/H, N]`` state restricted to head ``head``."""
    injection = ops.injection
    if injection is not None:
        injection = dataclasses.replace(injection, value=injection.value[:, :, head])
    return dataclasses.replace(ops, injection=injection)


class Zamba2Adapter(_ZambaLayers, Mamba2Adapter):
    """transformers ``Zamba2ForCausalLM``: ssm state ``[H, P, N]`` (H = ``n_mamba_heads``,
    P = ``mamba_headdim``) and conv window ``[D + 2 G N, K]`` on every layer."""

    model_classes = ("Zamba2ForCausalLM",)
    modeling_module = "transformers.models.zamba2.modeling_zamba2"
    mamba_mixer_class = "Zamba2MambaMixer"
    bias_option = "add_bias_linear"
