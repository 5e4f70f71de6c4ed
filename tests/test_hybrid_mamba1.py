"""The Mamba-1 hybrids (Jamba, Zamba) against transformers' own code.

Tiny models from configs with fixed seeds: Jamba with attention layers between its Mamba layers
and a mixture of experts on every other layer; Zamba with its shared attention block on two of
its three Mamba layers and two Mamba heads per layer (one scan call per head).  The identities of
``_hybrid_checks`` run on each (the model's logits, ``output_hidden_states``, its own cache after
a prefix, an edit of that cache between two tokens, padded rows against each row alone, resumed
and forked passes, steered generation against a greedy loop over the edited cache).
"""

from __future__ import annotations

import pytest
import torch
from _hybrid_checks import *  # noqa: F403  (the checks, run on this module's `tap`)
from _hybrid_checks import build, check_padding_refused, ids
from transformers import JambaConfig, JambaForCausalLM, ZambaConfig, ZambaForCausalLM

import statetap

_LAYERS = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4)
_MAMBA1 = dict(mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4)
# name -> (config class, model class, config arguments, the layers with a state)
HYBRIDS = {
    "jamba": (
        JambaConfig,
        JambaForCausalLM,
        _LAYERS
        | _MAMBA1
        | dict(
            num_key_value_heads=2,
            attn_layer_period=2,
            attn_layer_offset=1,  # attention on layer 1
            num_experts=4,
            num_experts_per_tok=2,
            expert_layer_period=2,
            expert_layer_offset=0,  # experts after layers 0 and 2
        ),
        (0, 2),
    ),
    "zamba": (
        ZambaConfig,
        ZambaForCausalLM,
        _LAYERS
        | _MAMBA1
        | dict(
            num_key_value_heads=4,
            attention_head_dim=16,
            n_mamba_heads=2,
            layers_block_type=["linear_attention", "hybrid", "hybrid"],
        ),
        (0, 1, 2),
    ),
}


def _build(name: str, **changes):
    return build(HYBRIDS, name, **changes)


@pytest.fixture(scope="module", params=list(HYBRIDS))
def tap(request):
    return statetap.attach(_build(request.param))


def test_state_layers_are_the_mamba_layers(tap):
    expected = HYBRIDS[tap.model.config.model_type][3]
    assert tap.state_layers == expected
    attention = [layer for layer in range(3) if layer not in expected]
    for layer in attention:
        with pytest.raises(ValueError, match=rf"layer {layer} .*state_layers = \[0, 2\]"):
            tap.run(ids(), emit=[statetap.Emit("ssm", layers=layer)])
        with pytest.raises(ValueError, match=r"state_layers = \[0, 2\]"):
            tap.run(ids(), inject=[statetap.Inject("conv", layer, torch.zeros(64, 4))])
    result = tap.run(ids(), emit=[statetap.Emit("state")])
    assert sorted(result.activations) == sorted(
        (site, layer) for site in ("ssm", "conv") for layer in expected
    )


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_padding_refused_where_the_input_projection_has_a_bias(name):
    check_padding_refused(_build(name, mamba_proj_bias=True), "mamba_proj_bias")
