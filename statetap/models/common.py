"""What RWKV-5, -6 and -7 share: the configuration fields, the block, the backbone and the
causal LM around them (transformers-style, so ``generate``, ``save_pretrained`` and the Auto
classes work).  Each architecture file supplies its time mix and channel mix.

Module tree and parameter names follow BlinkDL's checkpoints, under ``model.`` (the head is
``head``): ``model.emb``, ``model.blocks.{i}.ln0`` (layer 0 only), ``.ln1``, ``.ln2``,
``.att.*``, ``.ffn.*``, ``model.ln_out``, ``head``; every parameter keeps BlinkDL's shape
(``[1, 1, C]`` mixes, ``[H, N]`` per-head vectors, LoRA matrices ``[in, out]``), so a
BlinkDL state dict loads with the ``model.`` prefix and nothing else changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.generation.utils import ALL_CACHE_NAMES as GENERATION_CACHE_NAMES
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import ModelOutput

from statetap.models.cache import RwkvCache
from statetap.models.group_norm import BLINKDL_EPS
from statetap.models.instrumentation import Instrumentation


class RwkvBaseConfig(PreTrainedConfig):
    """Fields every RWKV-5/6/7 configuration has (each architecture adds its LoRA ranks).

    Attributes:
        vocab_size, hidden_size (``C``), num_hidden_layers: as in transformers.
        head_size (``N``): channels per head; ``num_heads`` (``H``) defaults to ``C // N`` and
            ``H * N`` must equal ``C``.
        intermediate_size (``F``): the channel mix's width (default: the architecture's).
        layer_norm_epsilon: of ``ln0``/``ln1``/``ln2``/``ln_out`` (1e-5).
        group_norm_epsilon: of ``ln_x``, BlinkDL's 64e-5 (``statetap.models.group_norm``).
    """

    vocab_size: int = 65536
    hidden_size: int = 768
    num_hidden_layers: int = 12
    head_size: int = 64
    num_heads: int | None = None
    intermediate_size: int | None = None
    layer_norm_epsilon: float = 1e-5
    group_norm_epsilon: float = BLINKDL_EPS
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "head_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_heads is None:
            self.num_heads = self.hidden_size // self.head_size
        if self.num_heads * self.head_size != self.hidden_size:
            raise ValueError(
                f"num_heads * head_size must equal hidden_size, got {self.num_heads} * "
                f"{self.head_size} != {self.hidden_size}"
            )
        if self.intermediate_size is None:
            self.intermediate_size = self.default_intermediate_size()
        super().__post_init__(**kwargs)

    def default_intermediate_size(self) -> int:
        raise NotImplementedError


@dataclass
class RwkvCausalLMOutput(ModelOutput):
    """``logits`` ``[B, L, V]``, ``cache`` (:class:`RwkvCache`, with ``use_cache``), ``loss``
    (with ``labels``) and ``hidden_states`` (with ``output_hidden_states``: the input of every
    block, then the last block's output, each ``[B, L, C]``)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: RwkvCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class RwkvBlock(nn.Module):
    """One layer: ``x += att(ln1(x))``, ``x += ffn(ln2(x))`` (layer 0 first applies ``ln0``)."""

    def __init__(self, config: RwkvBaseConfig, layer: int, time_mix: type, channel_mix: type):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_epsilon
        self.layer = layer
        if layer == 0:
            self.ln0 = nn.LayerNorm(width, eps=eps)
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.att = time_mix(config, layer)
        self.ffn = channel_mix(config, layer)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: RwkvCache,
        mask: torch.Tensor | None,
        instrumentation: Instrumentation | None,
        v_first: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden`` ``[B, L, C]`` -> the block's output and RWKV-7's first-layer value."""
        if self.layer == 0:
            hidden = self.ln0(hidden)
        mixed, v_first = self.att(
            self.ln1(hidden),
            cache=cache,
            mask=mask,
            instrumentation=instrumentation,
            v_first=v_first,
        )
        hidden = hidden + mixed
        hidden = hidden + self.ffn(
            self.ln2(hidden), cache=cache, mask=mask, instrumentation=instrumentation
        )
        return hidden, v_first


class RwkvBasePreTrainedModel(PreTrainedModel):
    """Weight init and the instrumentation switch shared by the statetap RWKV models."""

    base_model_prefix = "model"
    _input_embed_layer = "emb"  # transformers' get/set_input_embeddings find it by this name
    _no_split_modules = ["RwkvBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False
    #: set for the length of an instrumented pass (:meth:`instrumented`)
    instrumentation: Instrumentation | None = None

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults, but linear maps keep their inputs' scale (std
        ``in_features ** -0.5``: 0.02 would start a small RWKV with near-zero logits and
        vanishing gradients), and each mix module's own parameters."""
        super()._init_weights(module)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, 0.0, module.in_features**-0.5)
        init_mixing = getattr(module, "init_rwkv_weights", None)
        if init_mixing is not None:
            init_mixing()

    @contextlib.contextmanager
    def instrumented(self, instrumentation: Instrumentation) -> Iterator[None]:
        """Route every forward call of the block through ``instrumentation``."""
        previous = self.instrumentation
        self.instrumentation = instrumentation
        try:
            yield
        finally:
            self.instrumentation = previous


class RwkvBaseModel(RwkvBasePreTrainedModel):
    """Embedding, blocks and final norm; subclasses name their time and channel mix."""

    time_mix_class: type = nn.Module
    channel_mix_class: type = nn.Module

    def __init__(self, config: RwkvBaseConfig) -> None:
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(
            RwkvBlock(config, layer, self.time_mix_class, self.channel_mix_class)
            for layer in range(config.num_hidden_layers)
        )
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_init()

    def empty_cache(self, batch: int, device: torch.device) -> RwkvCache:
        """The zero state for ``batch`` rows."""
        config = self.config
        return RwkvCache.empty(
            config.num_hidden_layers,
            batch,
            config.hidden_size,
            config.num_heads,
            config.head_size,
            device,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: RwkvCache | None = None,
        output_hidden_states: bool = False,
        instrumentation: Instrumentation | None = None,
    ) -> tuple[torch.Tensor, RwkvCache, tuple[torch.Tensor, ...] | None]:
        """``input_ids`` ``[B, L]`` (or ``inputs_embeds`` ``[B, L, C]``) -> ``(ln_out output
        [B, L, C], the cache after the last token, hidden states or None)``.

        ``attention_mask`` ``[B, L']`` (``L' >= L``; its last ``L`` columns are these tokens,
        as ``generate`` passes it): pads (0) leave every state exactly as it was.  ``cache`` is
        updated in place (a fresh zero state when None).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        mask = padding_mask(attention_mask, batch, length)
        if cache is None:
            cache = self.empty_cache(batch, hidden.device)
        elif not isinstance(cache, RwkvCache) or cache.layers != len(self.blocks):
            raise TypeError(
                f"cache must be an RwkvCache of {len(self.blocks)} layers, got {cache!r}"
            )
        elif cache.batch != batch:
            raise ValueError(f"cache holds {cache.batch} rows but the input has {batch}")
        states = [] if output_hidden_states else None
        v_first = None
        for block in self.blocks:
            if states is not None:
                states.append(hidden)
            hidden, v_first = block(hidden, cache, mask, instrumentation, v_first)
        if states is not None:
            states.append(hidden)
        return self.ln_out(hidden), cache, None if states is None else tuple(states)


def padding_mask(attention_mask: torch.Tensor | None, batch: int, length: int):
    """``[B, L]`` bool (True: real token) from an ``attention_mask`` ``[B, L' >= L]``, or None
    when every token is real."""
    if attention_mask is None:
        return None
    if (
        not isinstance(attention_mask, torch.Tensor)
        or attention_mask.dim() != 2
        or attention_mask.shape[0] != batch
        or attention_mask.shape[1] < length
    ):
        raise ValueError(
            f"attention_mask must be a [B={batch}, L>={length}] tensor, got "
            f"{getattr(attention_mask, 'shape', attention_mask)!r}"
        )
    mask = attention_mask[:, attention_mask.shape[1] - length :].bool()
    return None if bool(mask.all()) else mask


class RwkvBaseForCausalLM(RwkvBasePreTrainedModel, GenerationMixin):
    """The backbone and the head ``head`` ``[V, C]``; subclasses name their backbone."""

    model_class: type = RwkvBaseModel

    def __init__(self, config: RwkvBaseConfig) -> None:
        super().__init__(config)
        self.model = self.model_class(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, head: nn.Linear) -> None:
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: RwkvCache | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> RwkvCausalLMOutput:
        """Logits ``[B, L, V]`` for ``input_ids`` ``[B, L]``, continuing from ``cache``.

        Args:
            input_ids / inputs_embeds: the tokens (``[B, L]``) or their embeddings.
            attention_mask: ``[B, L']`` with ``L' >= L`` (0: pad; pads change no state).
            cache: the state to continue from (updated in place); None: the zero state.
            use_cache: return the cache (default ``config.use_cache``).
            labels: ``[B, L]`` for the shifted language-modelling loss (-100: ignored).
            output_hidden_states: also return every block's input and the last output.
            logits_to_keep: as transformers' (0: every position).
        """
        use_cache = self.config.use_cache if use_cache is None else use_cache
        hidden, cache, states = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            output_hidden_states=bool(output_hidden_states),
            instrumentation=self.instrumentation,
        )
        logits = self.head(slice_logits_to_keep(hidden, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return RwkvCausalLMOutput(
            loss=loss, logits=logits, cache=cache if use_cache else None, hidden_states=states
        )

    def _update_model_kwargs_for_generation(
        self,
        outputs: RwkvCausalLMOutput,
        model_kwargs: dict,
        is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
    ) -> dict:
        """``generate`` hands the cache to the next step as ``cache`` on every transformers.

        transformers 5.23 carries a cache only under the names it knows (``past_key_values``,
        ``cache_params``, ``state``: ``GENERATION_CACHE_NAMES``), and reorders beams only there;
        without this each step would start from the zero state.  There the cache also travels
        as ``state`` (the one object: beam search's in-place reorder reaches both)."""
        if outputs.cache is not None:
            model_kwargs["cache"] = outputs.cache
            if "cache" not in GENERATION_CACHE_NAMES:
                model_kwargs["state"] = outputs.cache
        return super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder, num_new_tokens
        )
