"""The Mamba-2 hybrids (Bamba, Granite 4.0 hybrid, Nemotron-H) against transformers' own code.

Tiny models from configs with fixed seeds, each with attention layers between its Mamba-2
layers (and, on Nemotron-H, MLP and MoE layers).  The identities of ``_hybrid_checks`` run on
each (the model's logits, ``output_hidden_states``, its own cache after a prefix, an edit of that
cache between two tokens and continuing with the model, its attention layers' keys and values
included, padded rows against each row alone, resumed and forked passes, steered generation
against a greedy loop over the edited cache); this module adds the state layers' refusals, the
padding refused where the model does not honour it, the steering sweep's state mode against the
edited cache, the attach-time drift check and the lenses at every layer.
"""

from __future__ import annotations

import pytest
import torch
from _extract_models import TOKENIZER as BYTES
from _hybrid_checks import *  # noqa: F403  (the checks, run on this module's `tap`)
from _hybrid_checks import (
    attention_layers,
    build,
    check_padding_refused,
    close,
    ids,
    model_state,
    own_cache,
    step_by_step,
)
from transformers import (
    BambaConfig,
    BambaForCausalLM,
    GraniteMoeHybridConfig,
    GraniteMoeHybridForCausalLM,
    NemotronHConfig,
    NemotronHForCausalLM,
)

import statetap
from statetap.adapters.upstream import UpstreamDrift
from statetap.interp.lens import LogitLens, TunedLens
from statetap.interp.provenance import model_identity
from statetap.interp.steering import (
    PromptTemplate,
    SteeringVectors,
    ab_pairs,
    load_ab_items,
    mean_difference,
    sweep,
)

_ATTENTION = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
_MAMBA2 = dict(
    mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=4
)
# name -> (config class, model class, config arguments, the layers with a state, the config
# option that gives the Mamba input projection a bias)
HYBRIDS = {
    "bamba": (
        BambaConfig,
        BambaForCausalLM,
        _ATTENTION
        | _MAMBA2
        | dict(num_hidden_layers=3, intermediate_size=48, attn_layer_indices=[1]),
        (0, 2),
        "mamba_proj_bias",
    ),
    "granitemoehybrid": (
        GraniteMoeHybridConfig,
        GraniteMoeHybridForCausalLM,
        _ATTENTION
        | _MAMBA2
        | dict(
            num_hidden_layers=3,
            intermediate_size=24,
            shared_intermediate_size=24,
            num_local_experts=4,
            num_experts_per_tok=2,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
        ),
        (0, 2),
        "mamba_proj_bias",
    ),
    "nemotron_h": (
        NemotronHConfig,
        NemotronHForCausalLM,
        _ATTENTION
        | dict(
            layers_block_type=[
                "linear_attention",
                "full_attention",
                "mlp",
                "linear_attention",
                "moe",
            ],
            head_dim=8,
            intermediate_size=48,
            ssm_state_size=8,
            mamba_num_heads=8,
            mamba_head_dim=8,
            n_groups=2,
            chunk_size=4,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=16,
            n_group=1,
            topk_group=1,
        ),
        (0, 3),
        "use_bias",
    ),
}


def _build(name: str, **changes):
    return build(HYBRIDS, name, **changes)


@pytest.fixture(scope="module", params=list(HYBRIDS))
def tap(request):
    return statetap.attach(_build(request.param))


def test_state_layers_are_the_mamba_layers(tap):
    model = tap.model
    assert tap.state_layers == next(row[3] for row in HYBRIDS.values() if isinstance(model, row[1]))
    assert attention_layers(tap), "each tiny config has an attention layer"
    attention = attention_layers(tap)[0]
    tokens = ids()
    with pytest.raises(ValueError, match=r"holds no recurrent state .* tap.state_layers = \[0, "):
        tap.run(tokens, emit=[statetap.Emit("ssm", attention)])
    with pytest.raises(ValueError, match=r"tap.state_layers"):
        tap.run(
            tokens,
            inject=[statetap.Inject("conv", attention, torch.zeros(tap.site_shape("conv")))],
        )
    state = tap.run(tokens, keep_state=True).state
    with pytest.raises(ValueError, match=r"state_layers = \[0, "):
        state.get("ssm", attention)
    with pytest.raises(ValueError, match="seq_idx .* attention layers would attend across"):
        tap.run(tokens, seq_idx=torch.zeros_like(tokens, dtype=torch.int32))
    model.train()
    try:
        with pytest.raises(ValueError, match="is in training mode"):  # fused training paths
            tap.run(tokens)
    finally:
        model.eval()
    everything = tap.run(tokens, emit=[statetap.Emit("state"), statetap.Emit("mixer")])
    expected = {(site, layer) for site in ("ssm", "conv") for layer in tap.state_layers}
    expected |= {("mixer", layer) for layer in range(tap.adapter.n_layers)}
    assert set(everything.activations) == expected


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_padding_refused_where_the_input_projection_has_a_bias(name):
    bias = HYBRIDS[name][4]
    check_padding_refused(_build(name, **{bias: True}), bias)


TEMPLATE = PromptTemplate("Q: {question}", " A: (")


def _pairs(n: int):
    rows = []
    for _ in range(n):
        question = "".join(
            "abcdefgh "[int(i)] for i in torch.randint(0, 9, (int(torch.randint(3, 9, ())),))
        )
        a_matches = bool(torch.rand(()) < 0.5)
        rows.append(
            {
                "question": f"{question}\n(A) yes\n(B) no",
                "answer_matching_behavior": "(A)" if a_matches else "(B)",
                "answer_not_matching_behavior": "(B)" if a_matches else "(A)",
            }
        )
    return ab_pairs(load_ab_items(rows), BYTES, TEMPLATE)


@torch.no_grad()
def test_state_steering_sweep_equals_editing_the_hybrid_cache(tap):
    """The sweep's state mode at a Mamba layer == the paper's procedure on the model's own code:
    prefill all but the last token, add m * delta to that layer's ssm and conv entries of the
    hybrid cache, step the last token.  A state mode at an attention layer is refused."""
    model = tap.model
    pairs, layer = _pairs(4), tap.state_layers[-1]
    vectors = mean_difference(tap, *pairs.completions(), batch_size=3, progress=False)
    assert {key for key in vectors.vectors if key[0] != "residual"} == {
        (site, state_layer) for site in ("ssm", "conv") for state_layer in tap.state_layers
    }
    vectors = SteeringVectors(
        {key: 3.0 * torch.randn(value.shape) for key, value in vectors.vectors.items()},
        dict(identity=model_identity(model)),
    )
    multipliers = [-1.0, 2.0]
    result = sweep(
        tap, pairs, vectors, multipliers, [layer], modes=["state"], batch_size=3, progress=False
    )
    moved = 0.0
    for row, prompt in enumerate(pairs.prompts.ids):
        yes, no = int(pairs.matching[row]), int(pairs.not_matching[row])
        for j, m in enumerate(multipliers):
            cache = own_cache(model, torch.tensor([prompt[:-1]]))
            for site in ("ssm", "conv"):
                model_state(cache, site, layer).add_(m * vectors[site, layer])
            logits = step_by_step(model, cache, torch.tensor([prompt[-1:]]))[0, -1]
            p = logits.double().softmax(-1)
            close(p[yes] / (p[yes] + p[no]), result.p_match[0, 0, j, row].double(), 1e-5)
            moved = max(
                moved, abs(float(p[yes] / (p[yes] + p[no])) - float(result.baseline_p_match[row]))
            )
    assert moved > 1e-3
    attention = attention_layers(tap)[0]
    with pytest.raises(ValueError, match=r"hold no recurrent state.*tap.state_layers"):
        sweep(tap, pairs, vectors, multipliers, [attention], modes=["both"], progress=False)


@pytest.mark.parametrize("name", ["causal_conv1d_update", "mamba2_chunk_scan"])
def test_a_function_the_modeling_file_no_longer_has_is_refused_at_attach(tap, monkeypatch, name):
    model = tap.model
    module = __import__(statetap.adapters.adapter_for(model).modeling_module, fromlist=["x"])
    monkeypatch.delattr(module, name)
    with pytest.raises(UpstreamDrift, match=f"{name} does not exist any more"):
        statetap.attach(model)


@torch.no_grad()
def test_lenses_read_every_layer_through_the_attention_layers(tap):
    """The logit lens at each layer == the final norm and unembedding of the residual stream
    after that block as the model's ``output_hidden_states`` holds it."""
    model, tokens = tap.model, ids(2, 7)
    predictions = LogitLens(model).predictions(tokens)
    hidden = model(tokens, output_hidden_states=True).hidden_states
    for layer in range(tap.adapter.n_layers - 1):
        block = hidden[tap.adapter.hidden_states_index(layer)]
        close(model.lm_head(tap.adapter.final_norm(block)), predictions[layer])
    close(model(tokens).logits, predictions[-1])
    assert torch.equal(TunedLens(model).predictions(tokens), predictions)
