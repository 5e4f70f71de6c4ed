"""BlinkDL's ``.pth`` checkpoints (RWKV-LM / ChatRWKV) of RWKV-5.2, -6 and -7 -> statetap models.

The version and every size come from the tensors: ``C`` and ``V`` from ``emb.weight``, the
layers from the largest ``blocks.{i}``, the heads and head size from ``att.time_decay``
(x052, ``[H, N]``), ``att.time_faaaa`` (x060) or ``att.r_k`` (x070), the channel-mix width
from ``ffn.key.weight`` and each LoRA rank from its matrix.  The parameters keep BlinkDL's
names and shapes (:mod:`statetap.models.common`), so loading adds the ``model.`` prefix;
RWKV-7's layer-0 value LoRA (``blocks.0.att.v0/v1/v2``), which no computation reads, is
dropped.
"""

from __future__ import annotations

import os
import re

import torch

from statetap.models.common import RwkvBaseConfig, RwkvBaseForCausalLM
from statetap.models.rwkv5 import Rwkv5Config, Rwkv5ForCausalLM
from statetap.models.rwkv6 import MIX_ORDER, Rwkv6Config, Rwkv6ForCausalLM
from statetap.models.rwkv7 import Rwkv7Config, Rwkv7ForCausalLM

#: BlinkDL's name of each architecture -> (configuration, causal LM)
VERSIONS: dict[str, tuple[type[RwkvBaseConfig], type[RwkvBaseForCausalLM]]] = {
    "x052": (Rwkv5Config, Rwkv5ForCausalLM),
    "x060": (Rwkv6Config, Rwkv6ForCausalLM),
    "x070": (Rwkv7Config, Rwkv7ForCausalLM),
}
#: RWKV-7 keys present in BlinkDL's files but unused by the model (layer 0's value LoRA)
UNUSED_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def blinkdl_version(state_dict: dict[str, torch.Tensor]) -> str:
    """``"x052"``, ``"x060"`` or ``"x070"``, from the keys of layer 0.

    Raises:
        ValueError: not an RWKV-5.2/6/7 state dict (RWKV-4 and the earlier RWKV-5 have no
            per-head ``[H, N]`` decay; they are not supported here).
    """
    if "emb.weight" not in state_dict or "blocks.0.att.key.weight" not in state_dict:
        raise ValueError(
            "state_dict is not a BlinkDL RWKV checkpoint: it lacks emb.weight or "
            "blocks.0.att.key.weight"
        )
    if "blocks.0.att.r_k" in state_dict:
        return "x070"
    if "blocks.0.att.time_maa_x" in state_dict:
        return "x060"
    decay = state_dict.get("blocks.0.att.time_decay")
    if decay is not None and decay.dim() == 2 and "blocks.0.att.time_faaaa" in state_dict:
        return "x052"
    raise ValueError(
        "state_dict is an RWKV checkpoint of an unsupported version: expected RWKV-7 "
        "(att.r_k), RWKV-6 (att.time_maa_x) or RWKV-5.2 (att.time_decay [H, N] and "
        "att.time_faaaa); RWKV-4 loads with transformers' RwkvForCausalLM"
    )


def config_from_blinkdl(state_dict: dict[str, torch.Tensor]) -> RwkvBaseConfig:
    """The configuration of a BlinkDL state dict, every size read off its tensors."""
    version = blinkdl_version(state_dict)
    vocab, width = state_dict["emb.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    att = "blocks.0.att."
    per_head = {"x052": "time_decay", "x060": "time_faaaa", "x070": "r_k"}[version]
    heads, head_size = state_dict[att + per_head].shape
    sizes = dict(
        vocab_size=int(vocab),
        hidden_size=int(width),
        num_hidden_layers=layers,
        num_heads=int(heads),
        head_size=int(head_size),
        intermediate_size=int(state_dict["blocks.0.ffn.key.weight"].shape[0]),
    )
    if version == "x060":
        sizes["mix_lora_rank"] = state_dict[att + "time_maa_w1"].shape[1] // len(MIX_ORDER)
        sizes["decay_lora_rank"] = state_dict[att + "time_decay_w1"].shape[1]
    elif version == "x070":
        sizes["decay_lora_rank"] = state_dict[att + "w1"].shape[1]
        sizes["a_lora_rank"] = state_dict[att + "a1"].shape[1]
        sizes["gate_lora_rank"] = state_dict[att + "g1"].shape[1]
        value_lora = state_dict.get("blocks.1.att.v1", state_dict.get(att + "v1"))
        if value_lora is not None:
            sizes["value_lora_rank"] = value_lora.shape[1]
    if heads * head_size != width:
        raise ValueError(
            f"state_dict has {heads} heads of {head_size} channels but a width of {width}; "
            "statetap needs heads * head_size == n_embd (dim_att == n_embd)"
        )
    return VERSIONS[version][0](**{k: int(v) for k, v in sizes.items()})


def hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BlinkDL's keys -> the statetap model's (``model.`` prefix; ``head.weight`` stays)."""
    return {
        key if key == "head.weight" else f"model.{key}": tensor
        for key, tensor in state_dict.items()
        if not key.startswith(UNUSED_KEYS)
    }


def from_blinkdl_state_dict(
    state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> RwkvBaseForCausalLM:
    """The statetap model (eval mode, on the CPU, in ``dtype``) holding ``state_dict``.

    Raises:
        ValueError: an unsupported version, or keys/shapes the architecture does not have.
    """
    config = config_from_blinkdl(state_dict)
    model_class = VERSIONS[blinkdl_version(state_dict)][1]
    with torch.device("meta"):
        model = model_class(config)
    weights = hf_state_dict(state_dict)
    expected = dict(model.state_dict())
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{key} {list(weights[key].shape)} (expected {list(expected[key].shape)})"
        for key in set(expected) & set(weights)
        if weights[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"state_dict does not fit a {model_class.__name__} of its own sizes: "
            f"missing {missing or 'none'}; unexpected {unexpected or 'none'}; "
            f"wrong shapes {wrong or 'none'}"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, assign=True)
    return model.eval()


def from_blinkdl(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> RwkvBaseForCausalLM:
    """Load a BlinkDL ``.pth`` (RWKV-5.2 x052, RWKV-6 x060 or RWKV-7 x070) as a statetap model.

    Args:
        path: the ``.pth`` file (a ``torch.save`` of the state dict).
        dtype: the parameters' dtype (float32, bfloat16 or float16); states stay float32.

    Returns:
        ``Rwkv5ForCausalLM`` / ``Rwkv6ForCausalLM`` / ``Rwkv7ForCausalLM`` in eval mode.

    Raises:
        ValueError: not a state dict of a supported version; TypeError: a bad ``dtype``.

    Example:
        >>> model = from_blinkdl("RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth")  # doctest: +SKIP
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be torch.float32, bfloat16 or float16, got {dtype!r}")
    state_dict = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict")
    return from_blinkdl_state_dict(state_dict, dtype)
