"""Checkpoint folders written by other RWKV ports, loaded into statetap's own models.

Three layouts are in use on the hub besides BlinkDL's ``.pth`` files:

* ``hf-rwkv5``: the transformers remote-code port of RWKV-5 (``RWKV/v5-Eagle-7B-HF``,
  ``EleutherAI/Hermes-RWKV-v5-7B-HF``; ``model_type`` ``"rwkv5"``): ``rwkv.embeddings``,
  ``rwkv.blocks.{i}.pre_ln`` (layer 0), ``.ln1``, ``.ln2``, ``.attention.*``,
  ``.feed_forward.*``, ``rwkv.ln_out``, ``head``; the mixes are named ``time_mix_key``,
  ``time_mix_value``, ``time_mix_receptance``, ``time_mix_gate``.
* ``hf-rwkv6``: the same port of RWKV-6 (``RWKV/v6-Finch-*-HF``; ``"rwkv6"``), with BlinkDL's
  parameter names (``time_maa_*``, ``time_decay_w1``, ...) under the same modules.
* ``fla-rwkv7``: flash-linear-attention's ``RWKV7ForCausalLM`` (``fla-hub/rwkv7-*``;
  ``"rwkv7"``, older releases ``"rwkv7_fla"``): ``model.embeddings``,
  ``model.layers.{i}.pre_norm`` / ``attn_norm`` / ``ffn_norm``, ``attn.{r,k,v,o}_proj``,
  ``attn.g_norm`` (``ln_x``), the LoRAs as ``attn.{w,a,v,g}_lora.lora.{0,2}`` (``nn.Linear``
  weights, i.e. BlinkDL's ``w1``/``w2`` transposed; ``lora.2.bias`` is ``w0``/``a0``/``v0``; no
  value LoRA in layer 0), ``attn.k_k`` / ``k_a`` / ``ffn.x_k`` as ``[C]``, ``model.norm``,
  ``lm_head``.

Each layout is translated key by key to BlinkDL's names and shapes (an unknown key is refused,
never dropped) and built by :func:`statetap.models.from_blinkdl_state_dict`, so a folder loads
to exactly the model its BlinkDL original loads to. The sizes come from the tensor shapes; the
folder's ``config.json`` must agree with them. ``ln_x``'s eps is each port's own:
``layer_norm_epsilon * head_size_divisor ** 2`` in the HF ports (BlinkDL's 64e-5 when the
divisor is missing) and ``head_dim * norm_eps`` in fla (both 64e-5 for the released models).

The config classes below register these ``model_type`` names with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads such a
folder with no remote code and returns :class:`~statetap.models.Rwkv5ForCausalLM`,
:class:`~statetap.models.Rwkv6ForCausalLM` or :class:`~statetap.models.Rwkv7ForCausalLM`.
Their tokenizer folders (``Rwkv5Tokenizer`` remote code) are not read: the vocabulary is the
World one, :func:`statetap.models.world_tokenizer.world_tokenizer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig
from transformers.utils import cached_file

#: weight files tried in order: one safetensors file, a safetensors index, then pickles
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HUB_ARGUMENTS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
)


class HfRwkv5Config(PreTrainedConfig):
    """``config.json`` of the transformers remote-code RWKV-5 port (``model_type`` ``"rwkv5"``).

    ``num_attention_heads`` is, despite its name, read as the head size by that port; here it is
    kept and ignored (the sizes come from the weights). ``intermediate_size`` is ignored by the
    port too (always ``int(3.5 * C) // 32 * 32``).
    """

    model_type = "rwkv5"
    vocab_size: int = 65536
    hidden_size: int = 768
    num_hidden_layers: int = 24
    attention_hidden_size: int | None = None
    head_size: int = 64
    num_attention_heads: int = 64
    intermediate_size: int | None = None
    layer_norm_epsilon: float = 1e-5
    head_size_divisor: int | None = None
    rescale_every: int = 6
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    tie_word_embeddings: bool = False
    use_cache: bool = True


class HfRwkv6Config(HfRwkv5Config):
    """``config.json`` of the transformers remote-code RWKV-6 port (``model_type`` ``"rwkv6"``)."""

    model_type = "rwkv6"
    head_size_divisor: int | None = 8


class FlaRwkv7Config(PreTrainedConfig):
    """``config.json`` of flash-linear-attention's ``RWKV7ForCausalLM`` (``model_type``
    ``"rwkv7"``). Hybrid models (``attn`` set: some layers are softmax attention) are refused."""

    model_type = "rwkv7"
    attn_mode: str = "chunk"
    hidden_size: int = 2048
    hidden_ratio: float | None = 4
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    head_dim: int | None = 64
    num_heads: int | None = None
    decay_low_rank_dim: int | None = 64
    gate_low_rank_dim: int | None = 128
    a_low_rank_dim: int | None = 64
    v_low_rank_dim: int | None = 16
    hidden_act: str = "sqrelu"
    max_position_embeddings: int = 2048
    norm_first: bool = True
    norm_bias: bool = True
    norm_eps: float = 1e-5
    attn: dict | None = None
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    fuse_norm: bool = True
    fuse_cross_entropy: bool = True
    vocab_size: int = 32000
    value_dim: list | int | None = None


class FlaRwkv7LegacyConfig(FlaRwkv7Config):
    """The same, under the ``model_type`` of older fla releases (``"rwkv7_fla"``)."""

    model_type = "rwkv7_fla"


# ---- key translation ----------------------------------------------------------------------


def _as_is(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _transposed(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 2:
        raise ValueError(f"expected a 2-D LoRA weight, got shape {tuple(tensor.shape)}")
    return tensor.t().contiguous()


def _as_mix(tensor: torch.Tensor) -> torch.Tensor:
    """A per-channel vector ``[C]`` (or ``[1, 1, C]``) as BlinkDL's ``[1, 1, C]``."""
    if tensor.dim() not in (1, 3) or tensor.numel() != tensor.shape[-1]:
        raise ValueError(f"expected a [C] or [1, 1, C] vector, got shape {tuple(tensor.shape)}")
    return tensor.reshape(1, 1, -1)


#: (pattern over the foreign key, BlinkDL key template, tensor transform); first match wins
Rule = tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]

_HF_V5_MIX = {"key": "k", "value": "v", "receptance": "r", "gate": "g"}

HF_RULES: tuple[Rule, ...] = (
    (r"rwkv\.embeddings\.weight", "emb.weight", _as_is),
    (r"rwkv\.blocks\.0\.pre_ln\.(weight|bias)", r"blocks.0.ln0.\1", _as_is),
    (r"rwkv\.blocks\.(\d+)\.(ln1|ln2)\.(weight|bias)", r"blocks.\1.\2.\3", _as_is),
    (r"rwkv\.blocks\.(\d+)\.attention\.(.+)", r"blocks.\1.att.\2", _as_is),
    (r"rwkv\.blocks\.(\d+)\.feed_forward\.(.+)", r"blocks.\1.ffn.\2", _as_is),
    (r"rwkv\.ln_out\.(weight|bias)", r"ln_out.\1", _as_is),
    (r"head\.weight", "head.weight", _as_is),
)

FLA_RULES: tuple[Rule, ...] = (
    (r"model\.embeddings\.weight", "emb.weight", _as_is),
    (r"model\.norm\.(weight|bias)", r"ln_out.\1", _as_is),
    (r"lm_head\.weight", "head.weight", _as_is),
    (r"model\.layers\.0\.pre_norm\.(weight|bias)", r"blocks.0.ln0.\1", _as_is),
    (r"model\.layers\.(\d+)\.attn_norm\.(weight|bias)", r"blocks.\1.ln1.\2", _as_is),
    (r"model\.layers\.(\d+)\.ffn_norm\.(weight|bias)", r"blocks.\1.ln2.\2", _as_is),
    (r"model\.layers\.(\d+)\.attn\.r_proj\.weight", r"blocks.\1.att.receptance.weight", _as_is),
    (r"model\.layers\.(\d+)\.attn\.k_proj\.weight", r"blocks.\1.att.key.weight", _as_is),
    (r"model\.layers\.(\d+)\.attn\.v_proj\.weight", r"blocks.\1.att.value.weight", _as_is),
    (r"model\.layers\.(\d+)\.attn\.o_proj\.weight", r"blocks.\1.att.output.weight", _as_is),
    (r"model\.layers\.(\d+)\.attn\.g_norm\.(weight|bias)", r"blocks.\1.att.ln_x.\2", _as_is),
    (
        r"model\.layers\.(\d+)\.attn\.([wavg])_lora\.lora\.0\.weight",
        r"blocks.\1.att.\g<2>1",
        _transposed,
    ),
    (
        r"model\.layers\.(\d+)\.attn\.([wavg])_lora\.lora\.2\.weight",
        r"blocks.\1.att.\g<2>2",
        _transposed,
    ),
    (r"model\.layers\.(\d+)\.attn\.([wav])_lora\.lora\.2\.bias", r"blocks.\1.att.\g<2>0", _as_mix),
    (r"model\.layers\.(\d+)\.attn\.(x_[rwkvag]|k_k|k_a)", r"blocks.\1.att.\2", _as_mix),
    (r"model\.layers\.(\d+)\.attn\.r_k", r"blocks.\1.att.r_k", _as_is),
    (r"model\.layers\.(\d+)\.ffn\.x_k", r"blocks.\1.ffn.x_k", _as_mix),
    (r"model\.layers\.(\d+)\.ffn\.(key|value)\.weight", r"blocks.\1.ffn.\2.weight", _as_is),
)

#: fla's first RWKV-7 release stored the six mixes stacked as ``attn.x_x`` ``[6, C]``
FLA_STACKED_MIX = re.compile(r"model\.layers\.(\d+)\.attn\.x_x")
FLA_STACKED_ORDER = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")


def translate(
    state_dict: dict[str, torch.Tensor], rules: tuple[Rule, ...], layout: str
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) every tensor of ``state_dict`` by ``rules`` into BlinkDL's layout.

    Raises ``ValueError`` listing the keys no rule matches, or that two keys map to one.
    """
    compiled = [(re.compile(pattern), target, transform) for pattern, target, transform in rules]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        for pattern, target, transform in compiled:
            match = pattern.fullmatch(key)
            if match is not None:
                name = match.expand(target)
                if name in out:
                    raise ValueError(f"{layout}: {key!r} and another key both map to {name!r}")
                out[name] = transform(tensor)
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{layout}: keys that are not part of the layout: {sorted(unknown)[:10]}")
    return out


def hf_rwkv5_to_blinkdl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers RWKV-5 port's keys -> BlinkDL's (``time_mix_key`` -> ``time_mix_k``)."""
    out = translate(state_dict, HF_RULES, "hf-rwkv5")
    renamed = {}
    for key, tensor in out.items():
        match = re.fullmatch(
            r"(blocks\.\d+\.(?:att|ffn))\.time_mix_(key|value|receptance|gate)", key
        )
        renamed[f"{match[1]}.time_mix_{_HF_V5_MIX[match[2]]}" if match else key] = tensor
    return renamed


def hf_rwkv6_to_blinkdl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers RWKV-6 port's keys -> BlinkDL's (only the module paths differ)."""
    return translate(state_dict, HF_RULES, "hf-rwkv6")


def fla_rwkv7_to_blinkdl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flash-linear-attention's RWKV-7 keys -> BlinkDL's (LoRAs transposed, vectors ``[1, 1, C]``,
    a stacked ``attn.x_x`` split into its six mixes)."""
    unstacked = {}
    for key, tensor in state_dict.items():
        match = FLA_STACKED_MIX.fullmatch(key)
        if match is None:
            unstacked[key] = tensor
            continue
        if tensor.dim() != 2 or tensor.shape[0] != len(FLA_STACKED_ORDER):
            raise ValueError(f"fla-rwkv7: {key} must be [6, C], got {tuple(tensor.shape)}")
        for name, row in zip(FLA_STACKED_ORDER, tensor):
            unstacked[f"model.layers.{match[1]}.attn.{name}"] = row
    return translate(unstacked, FLA_RULES, "fla-rwkv7")


# ---- the three layouts ----------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignLayout:
    """How one port's folder maps onto a statetap model.

    Attributes:
        name: ``"hf-rwkv5"``, ``"hf-rwkv6"`` or ``"fla-rwkv7"``.
        version: BlinkDL's name of the architecture the weights must be (``"x052"``, ...).
        to_blinkdl: the key translation.
        agreement: ``(foreign config field, statetap config field)`` pairs that must be equal
            where the foreign field is set.
        group_norm_epsilon: ``ln_x``'s eps as the port computes it from its config.
        layer_norm_field: the config field holding the LayerNorms' eps.
    """

    name: str
    version: str
    to_blinkdl: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    agreement: tuple[tuple[str, str], ...]
    group_norm_epsilon: Callable[[PreTrainedConfig], float]
    layer_norm_field: str = "layer_norm_epsilon"


def _hf_group_norm_epsilon(config: PreTrainedConfig) -> float:
    from statetap.models.group_norm import BLINKDL_EPS

    if config.head_size_divisor is None:
        return BLINKDL_EPS
    return config.layer_norm_epsilon * config.head_size_divisor**2


def _fla_head_size(config: PreTrainedConfig) -> int:
    if config.head_dim is not None:
        return config.head_dim
    if not config.num_heads:
        raise ValueError("fla-rwkv7: config.json sets neither head_dim nor num_heads")
    return config.hidden_size // config.num_heads


_HF_AGREEMENT = (
    ("vocab_size", "vocab_size"),
    ("hidden_size", "hidden_size"),
    ("num_hidden_layers", "num_hidden_layers"),
    ("attention_hidden_size", "hidden_size"),
    ("head_size", "head_size"),
)

LAYOUTS = {
    "hf-rwkv5": ForeignLayout(
        "hf-rwkv5", "x052", hf_rwkv5_to_blinkdl, _HF_AGREEMENT, _hf_group_norm_epsilon
    ),
    "hf-rwkv6": ForeignLayout(
        "hf-rwkv6", "x060", hf_rwkv6_to_blinkdl, _HF_AGREEMENT, _hf_group_norm_epsilon
    ),
    "fla-rwkv7": ForeignLayout(
        "fla-rwkv7",
        "x070",
        fla_rwkv7_to_blinkdl,
        (
            ("vocab_size", "vocab_size"),
            ("hidden_size", "hidden_size"),
            ("num_hidden_layers", "num_hidden_layers"),
            ("head_dim", "head_size"),
            ("num_heads", "num_heads"),
            ("intermediate_size", "intermediate_size"),
            ("decay_low_rank_dim", "decay_lora_rank"),
            ("a_low_rank_dim", "a_lora_rank"),
            ("v_low_rank_dim", "value_lora_rank"),
            ("gate_low_rank_dim", "gate_lora_rank"),
        ),
        lambda config: _fla_head_size(config) * config.norm_eps,
        "norm_eps",
    ),
}
CONFIG_LAYOUTS = {
    HfRwkv5Config: "hf-rwkv5",
    HfRwkv6Config: "hf-rwkv6",
    FlaRwkv7Config: "fla-rwkv7",
    FlaRwkv7LegacyConfig: "fla-rwkv7",
}


def _refuse_unsupported(config: PreTrainedConfig, layout: ForeignLayout) -> None:
    if layout.name != "fla-rwkv7":
        if config.tie_word_embeddings:
            raise ValueError(f"{layout.name}: tie_word_embeddings=True is not an RWKV checkpoint")
        return
    if config.attn is not None:
        raise ValueError(
            f"fla-rwkv7: hybrid models (attn={config.attn!r}: softmax-attention layers) are not "
            "supported; only pure RWKV-7 folders load"
        )
    for field, expected in (("hidden_act", "sqrelu"), ("norm_first", True), ("norm_bias", True)):
        if getattr(config, field) != expected:
            raise ValueError(
                f"fla-rwkv7: {field} must be {expected!r}, got {getattr(config, field)!r}"
            )
    widths = config.value_dim if isinstance(config.value_dim, list) else [config.value_dim]
    if any(width not in (None, config.hidden_size) for width in widths):
        raise ValueError(f"fla-rwkv7: value_dim must equal hidden_size, got {config.value_dim!r}")
    if config.tie_word_embeddings:
        raise ValueError("fla-rwkv7: tie_word_embeddings=True is not an RWKV-7 checkpoint")


def read_weights(path: str, **hub: object) -> dict[str, torch.Tensor]:
    """Every tensor of a folder (or hub id): ``model.safetensors``, a sharded safetensors
    index, or ``pytorch_model.bin`` (one file or an index), on the CPU."""
    for name in WEIGHT_FILES:
        resolved = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub)
        if resolved is None:
            continue
        if not name.endswith(".index.json"):
            return _load_one(resolved)
        with open(resolved, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_load_one(cached_file(path, shard, **hub)))
        return tensors
    raise FileNotFoundError(f"{path} holds none of the weight files {', '.join(WEIGHT_FILES)}")


def _load_one(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        return load_file(file, device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)


def _resolve_dtype(
    dtype, config: PreTrainedConfig, tensors: dict[str, torch.Tensor]
) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        stored = getattr(config, "dtype", None)
        if stored is None:
            return next(iter(tensors.values())).dtype
        return getattr(torch, stored) if isinstance(stored, str) else stored
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch dtype, its name or 'auto', got {dtype!r}")
    return dtype


def load_foreign_folder(
    path: str,
    config: PreTrainedConfig | None = None,
    dtype: torch.dtype | str | None = None,
    **hub: object,
):
    """A folder (or hub id) in one of the three foreign layouts as a statetap model.

    Args:
        path: the folder with ``config.json`` and the weights.
        config: its configuration (default: read from ``config.json``); its class names the
            layout (:class:`HfRwkv5Config`, :class:`HfRwkv6Config`, :class:`FlaRwkv7Config`).
        dtype: parameter dtype (default float32; ``"auto"``: the folder's).
        hub: ``revision``, ``cache_dir``, ... as ``transformers.utils.cached_file`` takes them.

    Returns:
        ``Rwkv5ForCausalLM``, ``Rwkv6ForCausalLM`` or ``Rwkv7ForCausalLM`` in eval mode, whose
        logits equal those of the same weights loaded from BlinkDL's ``.pth``.

    Raises:
        ValueError: a key outside the layout, a config field that disagrees with the weights,
            or a model the layout cannot express (fla hybrids).
    """
    from statetap.models.blinkdl import blinkdl_version, from_blinkdl_state_dict

    if config is None:
        config = AutoConfig.from_pretrained(path, **hub)
    layout_name = CONFIG_LAYOUTS.get(type(config))
    if layout_name is None:
        raise TypeError(
            f"config must be one of {', '.join(c.__name__ for c in CONFIG_LAYOUTS)}, "
            f"got {type(config).__name__}"
        )
    layout = LAYOUTS[layout_name]
    _refuse_unsupported(config, layout)
    tensors = read_weights(path, **hub)
    state_dict = layout.to_blinkdl(tensors)
    version = blinkdl_version(state_dict)
    if version != layout.version:
        raise ValueError(
            f"{path}: the weights are BlinkDL's {version}, but config.json's model_type "
            f"{config.model_type!r} is {layout.version}"
        )
    model = from_blinkdl_state_dict(state_dict, dtype=_resolve_dtype(dtype, config, tensors))
    set_norm_epsilons(
        model, layout.group_norm_epsilon(config), getattr(config, layout.layer_norm_field)
    )
    disagree = [
        f"{theirs}={getattr(config, theirs)!r} (weights: {getattr(model.config, ours)!r})"
        for theirs, ours in layout.agreement
        if getattr(config, theirs, None) is not None
        and getattr(config, theirs) != getattr(model.config, ours)
    ]
    if disagree:
        raise ValueError(f"{path}: config.json disagrees with the weights: {'; '.join(disagree)}")
    keep_special_ids(model, PreTrainedConfig.get_config_dict(path, **hub)[0])
    return model.eval()


#: the token ids a port's config states and the rebuilt model keeps (:func:`keep_special_ids`)
SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def keep_special_ids(model, stated: dict) -> None:
    """Give ``model`` (its config and generation config) the pad, bos and eos ids that the
    port's ``config.json`` (``stated``, as read) states, None included (fla's RWKV-7: pad None,
    bos 1, eos 2): the model is rebuilt from the weights, whose config would otherwise carry the
    World tokenizer's ids (0) instead of the port's.  An id the file does not state stays 0."""
    for name in SPECIAL_IDS:
        if name in stated:
            setattr(model.config, name, stated[name])
            if model.generation_config is not None:
                setattr(model.generation_config, name, stated[name])


def set_norm_epsilons(model, group_norm_epsilon: float, layer_norm_epsilon: float) -> None:
    """Give every ``ln_x`` (``HeadGroupNorm``) and every LayerNorm of ``model`` these eps, in
    its modules and its config (eps is read only in the forward pass)."""
    from statetap.models.group_norm import HeadGroupNorm

    for module in model.modules():
        if isinstance(module, HeadGroupNorm):
            module.eps = group_norm_epsilon
        elif isinstance(module, torch.nn.LayerNorm):
            module.eps = layer_norm_epsilon
    model.config.group_norm_epsilon = group_norm_epsilon
    model.config.layer_norm_epsilon = layer_norm_epsilon


class ForeignLayoutLoader:
    """``AutoModelForCausalLM`` entry for one foreign layout: ``from_pretrained`` returns the
    statetap model (:func:`load_foreign_folder`); ``from_config`` is refused (a statetap model
    is built from its own configuration)."""

    config_class: type[PreTrainedConfig] = PreTrainedConfig

    @classmethod
    def from_pretrained(
        cls, path, *model_args, config=None, dtype=None, torch_dtype=None, **kwargs
    ):
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments")
        hub = {name: kwargs.pop(name) for name in HUB_ARGUMENTS if name in kwargs}
        for ignored in ("_from_auto", "trust_remote_code"):
            kwargs.pop(ignored, None)
        # the Auto classes pass their hub revision and token here for PEFT adapters
        adapter = set(kwargs.pop("adapter_kwargs", None) or ()) - {"revision", "token"}
        if adapter:
            raise TypeError(f"adapter_kwargs {sorted(adapter)} are not supported for RWKV ports")
        if kwargs:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got arguments it does not support: "
                f"{', '.join(sorted(kwargs))} (it takes config, dtype and the hub arguments)"
            )
        if dtype is not None and torch_dtype is not None:
            raise TypeError("pass dtype or torch_dtype, not both")
        return load_foreign_folder(path, config, dtype if dtype is not None else torch_dtype, **hub)

    @classmethod
    def _from_config(cls, config, **kwargs):
        raise TypeError(
            f"{type(config).__name__} describes a foreign checkpoint layout: load a folder with "
            "from_pretrained, or build statetap.models' own Rwkv5Config/Rwkv6Config/Rwkv7Config"
        )


class HfRwkv5Loader(ForeignLayoutLoader):
    config_class = HfRwkv5Config


class HfRwkv6Loader(ForeignLayoutLoader):
    config_class = HfRwkv6Config


class FlaRwkv7Loader(ForeignLayoutLoader):
    config_class = FlaRwkv7Config


class FlaRwkv7LegacyLoader(ForeignLayoutLoader):
    config_class = FlaRwkv7LegacyConfig


def register_foreign_layouts() -> None:
    """Register the four ``model_type`` names with ``AutoConfig`` and ``AutoModelForCausalLM``
    (done when this module is imported, as :mod:`statetap.models` does)."""
    for loader in (HfRwkv5Loader, HfRwkv6Loader, FlaRwkv7Loader, FlaRwkv7LegacyLoader):
        AutoConfig.register(loader.config_class.model_type, loader.config_class, exist_ok=True)
        AutoModelForCausalLM.register(loader.config_class, loader, exist_ok=True)


register_foreign_layouts()
