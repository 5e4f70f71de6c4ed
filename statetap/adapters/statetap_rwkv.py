"""Adapter for statetap's own RWKV-5, -6 and -7 models (:mod:`statetap.models`).

The models are ours, so nothing is patched: for the length of a pass the adapter hands the
model the pass itself (``model.instrumented(pass_)``), and each layer asks it what to emit and
inject at its state sites; the WKV passes that to :func:`statetap.kernels.wkv5` / ``wkv6`` /
``wkv7`` as ordinary instrumentation arguments.  State sites, per layer (float32):

* ``"wkv"`` ``[H, K, V]``: the WKV matrix state (``S_t`` after token ``t``);
* ``"att_shift"`` / ``"ffn_shift"`` ``[C]``: the token shifts, the ``ln1`` / ``ln2`` output
  of the last real token, which the next token mixes in.

An injection at ``t`` changes the state after token ``t`` (first seen by token ``t + 1``),
exactly as editing :class:`~statetap.models.RwkvCache` between the two tokens.  These models
honour ``attention_mask`` (pads change no state), so no padding is refused.
"""

from __future__ import annotations

import contextlib

import torch

from statetap.adapters.base import Adapter
from statetap.models import CAUSAL_LMS, RwkvCache
from statetap.plan import Pass, SiteOps

STATE_SITES = ("wkv", "att_shift", "ffn_shift")


class _Recording:
    """A pass that also notes which state sites the model consulted (:meth:`Adapter.verify`)."""

    def __init__(self, pass_: Pass, called: set[str]) -> None:
        self.pass_, self.called = pass_, called

    def at(self, site: str, layer: int) -> SiteOps | None:
        self.called.add(site)
        return self.pass_.at(site, layer)

    def store(self, site: str, layer: int, value: torch.Tensor) -> None:
        self.pass_.store(site, layer, value)


class StatetapRwkvAdapter(Adapter):
    """``statetap.models.Rwkv5ForCausalLM`` / ``Rwkv6ForCausalLM`` / ``Rwkv7ForCausalLM``."""

    model_classes = tuple(model.__name__ for model in CAUSAL_LMS)
    state_sites = STATE_SITES
    package = "statetap"
    modeling_module = "statetap.models"
    #: each forward call must consult every state site (a prefill, then a one-token step)
    probe_calls = ((2, STATE_SITES), (1, STATE_SITES))
    mixer_cache_argument = "cache"  # RwkvBlock hands its time mix the cache as `cache=`
    mixer_returns_tuple = True

    def __init__(self, model) -> None:
        if not isinstance(model, CAUSAL_LMS):
            raise TypeError(
                f"{type(model).__module__}.{type(model).__name__} is not statetap's own model of "
                f"that name; convert it with statetap.models (from_blinkdl, or the CLI's "
                f"conversion of HF folders) and attach the result"
            )
        super().__init__(model)

    @property
    def blocks(self):
        return self.model.model.blocks

    @property
    def final_norm(self):
        return self.model.model.ln_out

    def mixer(self, layer: int):
        return self.blocks[layer].att

    def site_shape(self, site: str) -> tuple[int, ...]:
        config = self.model.config
        if site == "wkv":
            return (config.num_heads, config.head_size, config.head_size)
        if site in ("att_shift", "ffn_shift"):
            return (config.hidden_size,)
        return super().site_shape(site)

    def output_cache(self, output):
        return output.cache

    def cache_kwargs(self, cache) -> dict:
        return {"cache": cache, "use_cache": True}

    def select_rows(self, cache: RwkvCache, rows: torch.Tensor) -> RwkvCache:
        return cache.select_rows(rows)

    def cached_state(self, cache: RwkvCache, site: str, layer: int) -> torch.Tensor:
        return getattr(cache, self._state_site(site))[layer]

    def write_state(self, cache: RwkvCache, site: str, layer: int, value: torch.Tensor) -> None:
        getattr(cache, self._state_site(site))[layer] = value.float().contiguous()

    def substitutions(self, pass_: Pass) -> dict:
        return {}  # nothing to patch: the model takes the pass (instrument)

    def instrument(self, pass_: Pass, called: set[str] | None = None) -> contextlib.ExitStack:
        """The residual and mixer hooks, and the pass handed to the model's layers."""
        stack = super().instrument(pass_, called)
        source = pass_ if called is None else _Recording(pass_, called)
        stack.enter_context(self.model.instrumented(source))
        return stack

    def start_refusal(self, layer: int) -> str | None:
        if layer > 0 and self.model.config.model_type == "statetap_rwkv7":
            return (
                f"start_at={layer}: every RWKV-7 layer after the first mixes in layer 0's value "
                "(v_first), which the residual stream does not carry, so an RWKV-7 pass can only "
                "start at layer 0"
            )
        return None

    def skipped_block(self, layer: int, args: tuple, kwargs: dict) -> object:
        # RwkvBlock(hidden, cache, mask, instrumentation, v_first) -> (hidden, v_first)
        return args[0], args[4]

    def _state_site(self, site: str) -> str:
        if site not in STATE_SITES:
            raise ValueError(f"{type(self.model).__name__} has no state site {site!r}")
        return site
