"""The RWKV ports' checkpoint folders, written from a BlinkDL state dict the way their own
converters write them: transformers' remote-code RWKV-5/6 (``convert_rwkv5_checkpoint_to_hf``)
and flash-linear-attention's RWKV-7 (``utils/convert_from_rwkv7.py``), with their config.json
fields. Written from the ports' descriptions, independently of
``statetap.models.foreign_layouts`` (which reads them back)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

HF_V5_MIX_NAMES = {"k": "key", "v": "value", "r": "receptance", "g": "gate"}


def hf_layout(state: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    """transformers' ``convert_rwkv5_checkpoint_to_hf``-style keys (``rwkv.`` prefix, ``att`` ->
    ``attention``, ``ffn`` -> ``feed_forward``, v5's ``time_mix_k`` -> ``time_mix_key``)."""
    out = {}
    for key, tensor in state.items():
        if key == "head.weight":
            out[key] = tensor
            continue
        name = key.replace("emb.", "embeddings.").replace("blocks.0.ln0", "blocks.0.pre_ln")
        name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        if version == "x052" and ".time_mix_" in name:
            stem, short = name.rsplit("_", 1)
            name = f"{stem}_{HF_V5_MIX_NAMES[short]}"
        out["rwkv." + name] = tensor.clone()
    return out


FLA_MODULES = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
FLA_PROJ = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}


def fla_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flash-linear-attention ``convert_from_rwkv7``-style keys and shapes."""
    top = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight"}
    top |= {"ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
    out = {}
    for key, tensor in state.items():
        if key in top:
            out[top[key]] = tensor.clone()
            continue
        _, layer, module, *rest = key.split(".")
        prefix = f"model.layers.{layer}"
        if module in FLA_MODULES:
            out[f"{prefix}.{FLA_MODULES[module]}.{rest[0]}"] = tensor.clone()
        elif module == "ffn":
            out[f"{prefix}.ffn.{'.'.join(rest)}"] = (
                tensor.reshape(-1) if rest == ["x_k"] else tensor
            )
        elif rest[0] in FLA_PROJ:
            out[f"{prefix}.attn.{FLA_PROJ[rest[0]]}.weight"] = tensor.clone()
        elif rest[0] == "ln_x":
            out[f"{prefix}.attn.g_norm.{rest[1]}"] = tensor.clone()
        elif len(rest[0]) == 2 and rest[0][0] in "wavg" and rest[0][1] in "012":
            if layer == "0" and rest[0][0] == "v":
                continue  # fla has no value LoRA in layer 0
            lora = f"{prefix}.attn.{rest[0][0]}_lora.lora"
            slot = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}[rest[0][1]]
            value = tensor.reshape(-1) if slot.endswith("bias") else tensor.t().contiguous()
            out[f"{lora}.{slot}"] = value
        elif rest[0] in ("k_k", "k_a"):
            out[f"{prefix}.attn.{rest[0]}"] = tensor.reshape(-1)
        else:  # x_r ... x_g [1, 1, C], r_k [H, N]
            out[f"{prefix}.attn.{rest[0]}"] = tensor.clone()
    return out


def hf_config(config, version: str) -> dict:
    """config.json of ``RWKV/v5-Eagle-7B-HF`` / ``RWKV/v6-Finch-*-HF``, shrunk."""
    kind = {"x052": "rwkv5", "x060": "rwkv6"}[version]
    return {
        "architectures": [f"Rwkv{kind[-1]}ForCausalLM"],
        "auto_map": {
            "AutoConfig": f"configuration_{kind}.Rwkv{kind[-1]}Config",
            "AutoModelForCausalLM": f"modeling_{kind}.Rwkv{kind[-1]}ForCausalLM",
        },
        "attention_hidden_size": config.hidden_size,
        "bos_token_id": 0,
        "context_length": 4096,
        "eos_token_id": 0,
        "head_size": config.head_size,
        "head_size_divisor": 8,
        "hidden_size": config.hidden_size,
        "intermediate_size": None,
        "layer_norm_epsilon": 1e-05,
        "model_type": kind,
        "num_attention_heads": 64,
        "num_hidden_layers": config.num_hidden_layers,
        "rescale_every": 6,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


def fla_config(config, model_type: str = "rwkv7") -> dict:
    """config.json of ``fla-hub/rwkv7-*``, shrunk."""
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": model_type,
        "attn": None,
        "attn_mode": "chunk",
        "a_low_rank_dim": config.a_lora_rank,
        "decay_low_rank_dim": config.decay_lora_rank,
        "gate_low_rank_dim": config.gate_lora_rank,
        "v_low_rank_dim": config.value_lora_rank,
        "head_dim": config.head_size,
        "hidden_act": "sqrelu",
        "hidden_ratio": 4.0,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "norm_bias": True,
        "norm_eps": 1e-05,
        "norm_first": True,
        "num_heads": None,
        "num_hidden_layers": config.num_hidden_layers,
        "value_dim": [config.hidden_size] * config.num_hidden_layers,
        "fuse_norm": True,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "vocab_size": config.vocab_size,
        "torch_dtype": "bfloat16",
    }


def write_folder(folder, config: dict, tensors: dict[str, torch.Tensor], shards: int = 1):
    """config.json and the weights (one file, or several with an index)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return folder
    keys = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[shard::shards]
        save_file({k: tensors[k] for k in part}, folder / name)
        weight_map |= dict.fromkeys(part, name)
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder
