"""Adapter for transformers' ``RwkvForCausalLM`` (RWKV-4).

The attention calls the module-level ``rwkv_linear_attention``; during a pass it runs
:func:`statetap.kernels.wkv4` with the layer's emission and injection.  State sites:

* ``"wkv"`` ``[3, C]``: the ``(aa, bb, pp)`` triple (``docs/semantics.md``);
* ``"att_shift"`` / ``"ffn_shift"`` ``[H]``: the token-shift vectors of the attention and the
  feed-forward, i.e. the (layer-normed) input of token ``t`` that token ``t+1`` mixes in.
  Injecting at ``t`` changes what token ``t+1`` sees, as editing the cache would.

transformers keeps these as ``state[2..4]`` (wkv), ``state[1]`` (attention shift) and
``state[0]`` (feed-forward shift), each ``[B, C, n_layers]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from statetap import kernels
from statetap.adapters.base import Adapter, gather_positions, hooked
from statetap.adapters.upstream import refuse_unknown
from statetap.kernels import ScanOutput
from statetap.plan import Pass

MODELING_MODULE = "transformers.models.rwkv.modeling_rwkv"
ATTENTION_NAME = "rwkv_linear_attention"  # the function of MODELING_MODULE the attention calls
_CACHE_INDEX = {"ffn_shift": 0, "att_shift": 1}


def wkv4_for_transformers(
    run: Callable[..., ScanOutput],
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    state: list[torch.Tensor] | None = None,
    return_state: bool = False,
    **instrumentation,
) -> ScanOutput:
    """transformers' ``rwkv_linear_attention`` arguments (``time_decay`` ``[C]`` before
    ``-exp``, ``time_first`` ``[C]``, ``key``/``value`` ``[B, L, C]``, ``state`` the list
    ``[aa, bb, pp]`` of ``[B, C]``) computed by ``run``, an op with
    :func:`statetap.kernels.wkv4`'s signature, with ``instrumentation`` passed on."""
    return run(
        -torch.exp(time_decay.float()),
        time_first,
        key,
        value,
        initial_state=None if state is None else torch.stack(state, dim=1).float(),
        output_final_state=return_state or state is not None,
        **instrumentation,
    )


def transformers_wkv4(run: Callable[..., ScanOutput]) -> Callable:
    """A drop-in for transformers' ``rwkv_linear_attention`` computed by ``run`` (an op with
    :func:`statetap.kernels.wkv4`'s signature): returns ``(output [B, L, C], state)``, the state
    as transformers' ``[aa, bb, pp]`` list or None."""

    def rwkv_linear_attention(
        time_decay, time_first, key, value, state=None, return_state=False, **unknown
    ):
        refuse_unknown("transformers", ATTENTION_NAME, unknown)
        out = wkv4_for_transformers(run, time_decay, time_first, key, value, state, return_state)
        return out.y, _state_list(out)

    return rwkv_linear_attention


def _state_list(out: ScanOutput) -> list[torch.Tensor] | None:
    return None if out.final_state is None else list(out.final_state.unbind(1))


class RwkvAdapter(Adapter):
    """transformers ``RwkvForCausalLM``."""

    model_classes = ("RwkvForCausalLM",)
    state_sites = ("wkv", "att_shift", "ffn_shift")
    modeling_module = MODELING_MODULE
    probe_calls = ((2, (ATTENTION_NAME,)), (1, (ATTENTION_NAME,)))
    mixer_cache_argument = "state"  # RwkvBlock hands its attention the state list
    mixer_returns_tuple = True

    @property
    def blocks(self):
        return self.model.rwkv.blocks

    @property
    def final_norm(self):
        return self.model.rwkv.ln_out

    def mixer(self, layer: int):
        return self.blocks[layer].attention

    def site_shape(self, site: str) -> tuple[int, ...]:
        if site == "wkv":
            return (3, self.mixer(0).attention_hidden_size)
        if site in _CACHE_INDEX:
            return (self.hidden_size,)
        return super().site_shape(site)

    def output_cache(self, output):
        return output.state

    def skipped_block(self, layer: int, args: tuple, kwargs: dict) -> object:
        # RwkvBlock(hidden, state=...) -> (hidden, state, attentions)
        return args[0], kwargs.get("state"), None

    def check_run(self, batch: int, length: int, continues: bool) -> None:
        if continues and length == 1 and batch > 1:
            # RwkvSelfAttention reads the [B, C] token-shift state against [B, 1, C] inputs
            # and broadcasts to [B, B, C]: wrong logits, silently.
            raise ValueError(
                "transformers' RWKV gets one-token steps from a state wrong when B > 1 (its token "
                "shift broadcasts across rows); continue with two or more tokens, or one row"
            )

    def check_padding(self, attention_mask, keeps_state: bool) -> None:
        # RwkvModel ignores attention_mask: every token, pad or not, enters the state.
        if attention_mask is None or bool(attention_mask.bool().all()):
            return
        if keeps_state:
            raise ValueError(
                "transformers' RWKV-4 ignores attention_mask, so pads would enter the state kept "
                "after each row (keep_state, generate); use rows of equal length, e.g. group the "
                "prompts by length"
            )
        real = attention_mask.bool()
        if bool((real[:, 1:] & ~real[:, :-1]).any()):
            raise ValueError(
                "transformers' RWKV-4 ignores attention_mask, so pads before a row's real tokens "
                "would enter its state; pad on the right (pads after the text change nothing)"
            )

    def cache_kwargs(self, cache) -> dict:
        return {"state": cache, "use_cache": True}

    def select_rows(self, cache, rows: torch.Tensor):
        return [part.index_select(0, rows.to(part.device)) for part in cache]

    def write_state(self, cache, site: str, layer: int, value: torch.Tensor) -> None:
        if site == "wkv":
            for index, part in zip((2, 3, 4), value.unbind(1)):
                cache[index][:, :, layer] = part.to(cache[index].dtype)
        elif site in _CACHE_INDEX:
            cache[_CACHE_INDEX[site]][:, :, layer] = value.to(cache[_CACHE_INDEX[site]].dtype)
        else:
            raise ValueError(f"RwkvForCausalLM has no state site {site!r}")

    def cached_state(self, cache, site: str, layer: int) -> torch.Tensor:
        if site == "wkv":
            return torch.stack([cache[i][:, :, layer] for i in (2, 3, 4)], dim=1)
        if site in _CACHE_INDEX:
            return cache[_CACHE_INDEX[site]][:, :, layer]
        raise ValueError(f"RwkvForCausalLM has no state site {site!r}")

    def substitutions(self, pass_: Pass) -> dict:
        return {ATTENTION_NAME: self._attention(pass_)}

    def instrument_state(self, pass_: Pass, stack: contextlib.ExitStack) -> None:
        handles = []
        for layer in range(self.n_layers):
            block = self.blocks[layer]
            for site, part in (("att_shift", block.attention), ("ffn_shift", block.feed_forward)):
                edited: dict[str, torch.Tensor] = {}  # this call's token-shift sequence, if any
                handles.append(
                    part.register_forward_pre_hook(self._shift_input(pass_, site, layer, edited))
                )
                handles.append(part.time_shift.register_forward_hook(self._shifted(edited)))
                handles.append(part.register_forward_hook(self._shift_cache(site, layer, edited)))
        stack.enter_context(hooked(handles))

    @staticmethod
    def _attention(pass_: Pass):
        def rwkv_linear_attention(
            time_decay, time_first, key, value, state=None, return_state=False, **unknown
        ):
            refuse_unknown("transformers", ATTENTION_NAME, unknown)
            ops = pass_.at("wkv")
            arguments = {} if ops is None else ops.kernel_arguments()
            out = wkv4_for_transformers(
                kernels.wkv4, time_decay, time_first, key, value, state, return_state, **arguments
            )
            if out.states is not None:
                pass_.store("wkv", pass_.layer, ops.expand_states(out.states))
            return out.y, _state_list(out)

        return rwkv_linear_attention

    @staticmethod
    def _shift_input(pass_: Pass, site: str, layer: int, edited: dict):
        """Record the token-shift sequence (the part's input), edited by the injection."""

        def hook(module, args):
            edited.clear()
            ops = pass_.at(site, layer)
            if ops is None:
                return None
            sequence = args[0]
            if ops.injection is not None:
                sequence = ops.injection.apply(sequence)
            edited["sequence"] = sequence
            if ops.emit_at is not None:
                pass_.store(site, layer, gather_positions(sequence, ops.emit_at).float())
            return None

        return hook

    @staticmethod
    def _shifted(edited: dict):
        """Token t+1 mixes in the (edited) input of token t."""

        def hook(module, args, output):
            if "sequence" not in edited:
                return None
            return torch.cat([output[:, :1], edited["sequence"][:, :-1].to(output.dtype)], dim=1)

        return hook

    @staticmethod
    def _shift_cache(site: str, layer: int, edited: dict):
        """The cache keeps the shift after the last token: the edited one."""

        def hook(module, args, output):
            state = output[1]
            if "sequence" in edited and state is not None:
                state[_CACHE_INDEX[site]][:, :, layer] = edited["sequence"][:, -1]
            return output

        return hook
