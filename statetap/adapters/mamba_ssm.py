"""Adapter for mamba-ssm's ``MambaLMHeadModel`` with Mamba-1 mixers (``state-spaces/mamba-*``).

mamba-ssm's mixer (``mamba_ssm.modules.mamba_simple.Mamba``) calls module-level functions of
``mamba_simple`` for the convolution (``causal_conv1d_fn`` / ``causal_conv1d_update``, torch
when the causal-conv1d package is absent), the scan (``selective_scan_fn``) and the decode
step (``selective_state_update``).  During a pass those names point at statetap's, with each
mixer's fused ``use_fast_path`` switched off (the fused path hides the convolution and the
state), so the recurrence runs through :mod:`statetap.kernels` with the layer's emission and
injection.  The models' code is not copied or forked.

Differences from transformers' models that the adapter absorbs:

* a block returns ``(hidden, residual)``; the residual stream after block ``l`` is their sum
  (``"residual"`` reads and edits it there, also when ``fused_add_norm`` folds the final
  addition into the last norm);
* the cache is an ``InferenceParams`` whose ``key_value_memory_dict[l]`` holds
  ``(conv_state [B, C, K], ssm_state [B, D, N])``; mamba-ssm itself decodes one token at a
  time from it, statetap also continues with several tokens (from the cached window and
  state);
* there is no attention mask: a batch with padding is refused, not silently run over pads.

State sites: ``"ssm"`` ``[D, N]`` (float32) and ``"conv"`` ``[C, K]`` (C = D = d_inner).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib

import torch

from statetap.adapters.base import Adapter, patched, stop_forward
from statetap.adapters.conv import (
    causal_conv1d,
    causal_conv1d_update,
    conv_update_with_window_ops,
    convolve_with_window_ops,
)
from statetap.adapters.mamba import MambaAdapter
from statetap.adapters.upstream import refuse_unknown
from statetap.plan import Pass, gather_positions

_MODELING = "mamba_ssm.modules.mamba_simple"
_CACHE_INDEX = {"conv": 0, "ssm": 1}


class MambaSsmAdapter(MambaAdapter):
    """mamba-ssm ``MambaLMHeadModel`` whose every layer is a Mamba-1 mixer."""

    model_classes = ("MambaLMHeadModel",)
    package = "mamba-ssm"
    modeling_module = _MODELING
    scan_name = "selective_scan_fn"
    step_name = "selective_state_update"
    cache_arguments = ("inference_params",)
    records_hidden_states = False  # MambaLMHeadModel.forward has no output_hidden_states

    def __init__(self, model) -> None:
        for index, block in enumerate(model.backbone.layers):
            kind = type(block.mixer).__name__
            if kind != "Mamba":
                raise TypeError(
                    f"statetap supports MambaLMHeadModel with Mamba-1 mixers only; layer {index} "
                    f"is a {kind}. For Mamba-2 use transformers' Mamba2ForCausalLM"
                )
        super().__init__(model)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @property
    def output_embedding(self):
        return self.model.lm_head  # MambaLMHeadModel has no get_output_embeddings

    def ssm_shape(self, mixer) -> tuple[int, ...]:
        return (mixer.d_inner, mixer.d_state)

    def site_shape(self, site: str) -> tuple[int, ...]:
        if site == "conv":
            mixer = self.mixer(0)
            return (mixer.d_inner, mixer.d_conv)
        return super().site_shape(site)

    # ------------------------------------------------------------------ the cache
    def cached_state(self, cache, site: str, layer: int) -> torch.Tensor:
        if site not in _CACHE_INDEX:
            raise ValueError(f"MambaLMHeadModel has no state site {site!r}")
        return cache.key_value_memory_dict[layer][_CACHE_INDEX[site]]

    def select_rows(self, cache, rows: torch.Tensor):
        selected = dataclasses.replace(
            cache, max_batch_size=rows.shape[0], key_value_memory_dict={}, lengths_per_sample=None
        )
        for layer, states in cache.key_value_memory_dict.items():
            selected.key_value_memory_dict[layer] = tuple(
                state.detach().index_select(0, rows.to(state.device)) for state in states
            )
        return selected

    # ------------------------------------------------------------------ calls
    def check_padding(self, attention_mask, keeps_state: bool) -> None:
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                "mamba-ssm's MambaLMHeadModel takes no attention mask and would run its scan over "
                "pad tokens; pass rows of equal length (or use transformers' MambaForCausalLM)"
            )

    def forward(self, input_ids, attention_mask, cache, keep_state, **kwargs):
        from mamba_ssm.utils.generation import InferenceParams

        batch, length = input_ids.shape
        if cache is None and keep_state:
            cache = InferenceParams(max_seqlen=length, max_batch_size=batch)
        if cache is None:
            return self.model(input_ids, **kwargs), None
        offset = cache.seqlen_offset
        # mamba-ssm steps one token when seqlen_offset > 0; several tokens take its prefill
        # path, where statetap's convolution and scan start from the cached window and state.
        cache.seqlen_offset = offset if length == 1 else 0
        try:
            output = self.model(input_ids, inference_params=cache, **kwargs)
        finally:
            cache.seqlen_offset = offset + length
        return output, (cache if keep_state else None)

    def generate(self, input_ids, attention_mask, **kwargs):
        """mamba-ssm's ``generate`` (which takes no attention mask: see :meth:`check_padding`);
        ``max_new_tokens`` is accepted for ``max_length``."""
        if "max_new_tokens" in kwargs:
            kwargs["max_length"] = input_ids.shape[1] + kwargs.pop("max_new_tokens")
        return self.model.generate(input_ids, **kwargs)

    # ------------------------------------------------------------------ one pass
    def hook_residual(self, pass_: Pass, layer: int):
        def hook(module, args, output):
            ops = pass_.at("residual", layer)
            if ops is None:
                return None
            hidden, residual = output
            injection = ops.injection
            if injection is not None:
                if injection.mode == "set":  # the stream becomes value: hidden = value - residual
                    shifted = injection.value - gather_positions(residual, injection.positions)
                    injection = dataclasses.replace(injection, value=shifted)
                hidden = injection.apply(hidden)  # add: (hidden + v) + residual
            if ops.emit_at is not None:
                stream = (hidden + residual).to(hidden.dtype)
                pass_.store("residual", layer, gather_positions(stream, ops.emit_at))
            return hidden, residual

        return self.blocks[layer].register_forward_hook(hook)

    def start_refusal(self, layer: int) -> str | None:
        if layer > 0:
            return (
                f"start_at={layer}: mamba-ssm's blocks hand each other the residual stream as two "
                "tensors (hidden, residual) whose split the 'residual' site does not keep, so a "
                "MambaLMHeadModel pass can only start at layer 0"
            )
        return None

    def stop_hook(self, layer: int):
        # the residual stream is read from the block's own output (:meth:`hook_residual`)
        return self.blocks[layer].register_forward_hook(stop_forward)

    def enter_layer(self, pass_: Pass, layer: int, kwargs: dict) -> None:
        Adapter.enter_layer(self, pass_, layer, kwargs)
        cache = pass_.cache
        states = None if cache is None else cache.key_value_memory_dict.get(layer)
        pass_.layer_state = None if states is None else states[1]
        # Several tokens after a cached window: mamba-ssm overwrites the window with the new
        # tokens before its convolution, so keep the old one for statetap's.
        continues = states is not None and cache.seqlen_offset == 0
        pass_.conv_window = states[0].clone() if continues else None

    def substitutions(self, pass_: Pass) -> dict:
        module = importlib.import_module(_MODELING)
        conv = module.causal_conv1d_fn or causal_conv1d
        update = conv_update_with_window_ops(
            pass_,
            module.causal_conv1d_update or causal_conv1d_update,
            conv,
            (self.package, self.conv_step_name),
        )

        def prefill_conv(x, weight, bias=None, activation=None, **unknown):
            refuse_unknown(self.package, self.conv_name, unknown)
            previous = pass_.conv_window
            full = x if previous is None else torch.cat([previous.to(x.dtype), x], dim=-1)
            out, window = convolve_with_window_ops(pass_, conv, full, weight, bias, activation)
            if pass_.cache is not None:
                self.cached_state(pass_.cache, "conv", pass_.layer).copy_(window)
            return out[..., -x.shape[-1] :]

        def step_conv(x, conv_state, weight, bias=None, activation=None, **unknown):  # x: [B, C]
            refuse_unknown(self.package, self.conv_step_name, unknown)
            return update(x[..., None], conv_state, weight, bias, activation)[..., 0]

        return {
            self.conv_name: prefill_conv,
            self.conv_step_name: step_conv,
            self.scan_name: self.scan(pass_),
            self.step_name: self.step(pass_),
        }

    def instrument_state(self, pass_: Pass, stack: contextlib.ExitStack) -> None:
        for layer in range(self.n_layers):
            stack.enter_context(patched(self.mixer(layer), "use_fast_path", False))
