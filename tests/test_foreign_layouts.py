"""Folders in the layouts of the other RWKV ports (transformers remote code for RWKV-5/6,
flash-linear-attention for RWKV-7), written here from a BlinkDL state dict of random weights
with the ports' own key names, shapes and config.json fields, load into statetap's models with
exactly the logits of the same weights loaded by ``from_blinkdl``."""

from __future__ import annotations

import json

import pytest
import torch
from rwkv_blinkdl_cases import SIZES, random_checkpoint
from rwkv_port_layouts import fla_config, fla_layout, hf_config, hf_layout, write_folder
from transformers import AutoConfig, AutoModelForCausalLM

import statetap.models  # noqa: F401  (registers the Auto classes)
from statetap.models import (
    Rwkv5ForCausalLM,
    Rwkv6ForCausalLM,
    Rwkv7ForCausalLM,
    from_blinkdl,
    from_blinkdl_state_dict,
)
from statetap.models.foreign_layouts import load_foreign_folder

VOCAB = SIZES["x070"]["vocab"]
CLASSES = {"x052": Rwkv5ForCausalLM, "x060": Rwkv6ForCausalLM, "x070": Rwkv7ForCausalLM}


def blinkdl_reference(state, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(state, path)
    return from_blinkdl(path)


def fla_reference(state):
    """The BlinkDL weights with fla's ``ln_x`` eps, ``head_dim * norm_eps`` (BlinkDL's 64e-5
    only when the head size is 64; these test heads are smaller)."""
    model = from_blinkdl_state_dict(state)
    for block in model.model.blocks:
        block.att.ln_x.eps = SIZES["x070"]["head_size"] * 1e-5
    return model


def assert_same_logits(model, reference, vocab: int = VOCAB):
    ids = torch.randint(0, vocab, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


# ---- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["x052", "x060"])
def test_hf_remote_code_folder_loads_to_the_blinkdl_logits(tmp_path, version, fresh_seed):
    state = random_checkpoint(version, fresh_seed)
    reference = blinkdl_reference(state, tmp_path)
    folder = write_folder(
        tmp_path / "hf", hf_config(reference.config, version), hf_layout(state, version), shards=2
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model) is CLASSES[version]
    assert not model.training
    assert_same_logits(model, reference)


#: RWKV-7 at head size 64, where fla's ln_x eps (head_dim * norm_eps) is BlinkDL's 64e-5
X070_HEAD_64 = SIZES["x070"] | {"heads": 2, "head_size": 64, "ffn": 67}


@pytest.mark.parametrize("layout", ["hf-x060", "fla-x070"])
def test_a_port_folder_keeps_its_special_token_ids(tmp_path, layout, fresh_seed):
    kind, version = layout.split("-")
    state = random_checkpoint(version, fresh_seed)
    reference = from_blinkdl_state_dict(state)
    if kind == "hf":
        stated = hf_config(reference.config, version) | {"eos_token_id": 7}  # states no pad
        tensors = hf_layout(state, version)
    else:
        stated = fla_config(reference.config) | {"pad_token_id": None}  # bos 1, eos 2: fla's
        tensors = fla_layout(state)
    model = AutoModelForCausalLM.from_pretrained(write_folder(tmp_path / kind, stated, tensors))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        expected = stated.get(name, 0)  # an id the port does not state stays statetap's 0
        assert getattr(model.config, name) == expected, name
        assert getattr(model.generation_config, name) == expected, name


@pytest.mark.parametrize("model_type", ["rwkv7", "rwkv7_fla"])
def test_fla_folder_loads_to_the_blinkdl_logits(tmp_path, model_type, fresh_seed):
    state = random_checkpoint("x070", fresh_seed, X070_HEAD_64)
    reference = blinkdl_reference(state, tmp_path)
    tensors = fla_layout(state)
    assert "model.layers.0.attn.v_lora.lora.0.weight" not in tensors
    rank_v, width = SIZES["x070"]["ranks"][2], reference.config.hidden_size
    assert tensors["model.layers.1.attn.v_lora.lora.0.weight"].shape == (rank_v, width)
    folder = write_folder(tmp_path / "fla", fla_config(reference.config, model_type), tensors)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert type(model) is Rwkv7ForCausalLM
    assert_same_logits(model, reference)


def test_fla_ln_x_eps_at_other_head_sizes_is_fla_s(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    reference = fla_reference(state)
    folder = write_folder(tmp_path / "fla", fla_config(reference.config), fla_layout(state))
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.model.blocks[2].att.ln_x.eps == pytest.approx(SIZES["x070"]["head_size"] * 1e-5)
    assert_same_logits(model, reference)


def test_fla_stacked_mixes_of_the_first_release(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    reference = fla_reference(state)
    tensors = fla_layout(state)
    for layer in range(SIZES["x070"]["layers"]):
        names = [f"model.layers.{layer}.attn.x_{m}" for m in "rwkvag"]
        tensors[f"model.layers.{layer}.attn.x_x"] = torch.cat([tensors.pop(n)[0] for n in names])
    folder = write_folder(tmp_path / "fla", fla_config(reference.config), tensors)
    assert_same_logits(AutoModelForCausalLM.from_pretrained(folder), reference)


def test_dtype_auto_reads_the_folder_dtype(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    config = blinkdl_reference(state, tmp_path).config
    tensors = {k: v.to(torch.bfloat16) for k, v in fla_layout(state).items()}
    folder = write_folder(tmp_path / "fla", fla_config(config), tensors)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    assert model.head.weight.dtype == torch.bfloat16
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    assert torch.equal(model.head.weight, bf16["head.weight"])
    assert AutoModelForCausalLM.from_pretrained(folder).head.weight.dtype == torch.float32


def test_ln_x_eps_follows_each_port(tmp_path, fresh_seed):
    state = random_checkpoint("x060", fresh_seed)
    config = hf_config(blinkdl_reference(state, tmp_path).config, "x060")
    config["head_size_divisor"] = 4
    model = AutoModelForCausalLM.from_pretrained(
        write_folder(tmp_path / "hf", config, hf_layout(state, "x060"))
    )
    assert model.config.group_norm_epsilon == pytest.approx(16e-5)
    assert model.model.blocks[1].att.ln_x.eps == pytest.approx(16e-5)


# ---- refusals --------------------------------------------------------------------------------


def test_config_that_disagrees_with_the_weights_is_refused(tmp_path, fresh_seed):
    state = random_checkpoint("x052", fresh_seed)
    config = hf_config(blinkdl_reference(state, tmp_path).config, "x052")
    config["num_hidden_layers"] = 5
    folder = write_folder(tmp_path / "hf", config, hf_layout(state, "x052"))
    with pytest.raises(ValueError, match=r"num_hidden_layers=5 \(weights: 2\)"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_wrong_model_type_for_the_weights_is_refused(tmp_path, fresh_seed):
    state = random_checkpoint("x052", fresh_seed)
    config = hf_config(blinkdl_reference(state, tmp_path).config, "x052")
    config["model_type"] = "rwkv6"
    folder = write_folder(tmp_path / "hf", config, hf_layout(state, "x052"))
    with pytest.raises(
        ValueError, match="weights are BlinkDL's x052, but config.json's model_type"
    ):
        AutoModelForCausalLM.from_pretrained(folder)


def test_unknown_key_is_refused_not_dropped(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    config = blinkdl_reference(state, tmp_path).config
    tensors = fla_layout(state) | {"model.layers.1.attn.extra_gate": torch.zeros(3)}
    folder = write_folder(tmp_path / "fla", fla_config(config), tensors)
    with pytest.raises(ValueError, match="not part of the layout.*extra_gate"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_missing_tensor_is_refused(tmp_path, fresh_seed):
    state = random_checkpoint("x060", fresh_seed)
    config = hf_config(blinkdl_reference(state, tmp_path).config, "x060")
    tensors = hf_layout(state, "x060")
    del tensors["rwkv.blocks.1.attention.time_decay_w2"]
    with pytest.raises(ValueError, match="missing.*time_decay_w2"):
        AutoModelForCausalLM.from_pretrained(write_folder(tmp_path / "hf", config, tensors))


def test_hybrid_fla_model_is_refused(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    config = fla_config(blinkdl_reference(state, tmp_path).config)
    config["attn"] = {"layers": [1], "num_heads": 2}
    folder = write_folder(tmp_path / "fla", config, fla_layout(state))
    with pytest.raises(ValueError, match="hybrid models"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_folder_without_weights_and_bad_arguments_are_refused(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    config = fla_config(blinkdl_reference(state, tmp_path).config)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(OSError, match="holds none of the weight files"):
        load_foreign_folder(str(tmp_path / "empty"))
    folder = write_folder(tmp_path / "fla", config, fla_layout(state))
    with pytest.raises(TypeError, match="does not support: device_map"):
        AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    with pytest.raises(TypeError, match="dtype must be a torch dtype"):
        load_foreign_folder(str(folder), dtype="float33")
    with pytest.raises(TypeError, match="describes a foreign checkpoint layout"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
