"""The Mamba-2 hybrids Zamba2 and Falcon-H1 against transformers' own code.

Tiny models from configs with fixed seeds: Zamba2 with two shared attention blocks used in turn
on its hybrid layers (LoRA adapters per use, rotary positions) and two groups of ``B``/``C``;
Falcon-H1 with attention and Mamba-2 side by side in every layer and its muP multipliers made
different from one.  The identities of ``_hybrid_checks`` run on each (the model's logits,
``output_hidden_states``, its own cache after a prefix, an edit of that cache between two
tokens, padded rows against each row alone, resumed and forked passes, steered generation
against a greedy loop over the edited cache).
"""

from __future__ import annotations

import pytest
from _hybrid_checks import *  # noqa: F403  (the checks, run on this module's `tap`)
from _hybrid_checks import build, check_padding_refused, ids
from transformers import FalconH1Config, FalconH1ForCausalLM, Zamba2Config, Zamba2ForCausalLM

import statetap

_ATTENTION = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4)
# name -> (config class, model class, config arguments, the config option of in_proj's bias)
HYBRIDS = {
    "zamba2": (
        Zamba2Config,
        Zamba2ForCausalLM,
        _ATTENTION
        | dict(
            num_hidden_layers=4,
            num_key_value_heads=4,
            layers_block_type=["hybrid", "linear_attention", "hybrid", "hybrid"],
            num_mem_blocks=2,  # blocks A, B, A on layers 0, 2, 3
            use_shared_attention_adapter=True,
            adapter_rank=4,
            use_mem_rope=True,
            mamba_d_state=8,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_headdim=8,
            n_mamba_heads=8,
            mamba_ngroups=2,
            chunk_size=4,
        ),
        "add_bias_linear",
    ),
    "falcon_h1": (
        FalconH1Config,
        FalconH1ForCausalLM,
        _ATTENTION
        | dict(
            num_hidden_layers=2,
            num_key_value_heads=2,
            mamba_d_ssm=64,
            mamba_d_head=8,
            mamba_n_heads=8,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_d_conv=4,
            mamba_chunk_size=4,
            # muP multipliers away from one, so that each is exercised
            embedding_multiplier=1.5,
            lm_head_multiplier=0.5,
            ssm_in_multiplier=0.8,
            ssm_out_multiplier=1.2,
            attention_in_multiplier=0.7,
            attention_out_multiplier=1.3,
            ssm_multipliers=[0.9, 1.1, 0.8, 1.2, 1.05],
            mlp_multipliers=[0.9, 1.1],
        ),
        "mamba_proj_bias",
    ),
}


def _build(name: str, **changes):
    return build(HYBRIDS, name, **changes)


@pytest.fixture(scope="module", params=list(HYBRIDS))
def tap(request):
    return statetap.attach(_build(request.param))


def test_every_layer_holds_a_state(tap):
    assert tap.state_layers == tuple(range(tap.adapter.n_layers))
    result = tap.run(ids(), emit=[statetap.Emit("state")])
    assert sorted(result.activations) == sorted(
        (site, layer) for site in ("ssm", "conv") for layer in tap.state_layers
    )


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_padding_refused_where_the_input_projection_has_a_bias(name):
    bias = HYBRIDS[name][3]
    check_padding_refused(_build(name, **{bias: True}), bias)
