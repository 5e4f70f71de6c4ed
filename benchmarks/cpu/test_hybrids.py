"""End to end on random transformers hybrids (Mamba layers between attention layers): the plain
transformers forward beside ``tap.run`` with nothing requested and with every state + the
residual emitted at 4 positions, each ``tap.run`` row timed in pairs with the plain forward
(``paired_ratio``: the target is <= 1.0).

The issue's size (hidden 1024, 8 layers, B 8, L 512) takes minutes per forward on the project's
2 shared cores; the rows use :data:`HIDDEN` x :data:`LAYERS`, B :data:`BATCH`, L :data:`LENGTH`
(``STATETAP_BENCH_HYBRID_SIZE=1024,8,8,512`` runs the full size; ``STATETAP_BENCH_HYBRID_ROUNDS``
sets the timed rounds per row, default 3).  Each class is a row of
:data:`HYBRIDS`: ``(transformers config class, model class, config arguments)``, the layer
pattern with every third layer attention (Zamba, Zamba2: their shared attention block runs on
those layers, before the layer's Mamba mixer; Falcon-H1 runs attention beside Mamba in every
layer).
"""

from __future__ import annotations

import os

import pytest
import torch
from test_end_to_end import make_call

HIDDEN, LAYERS, BATCH, LENGTH = (
    int(x) for x in os.environ.get("STATETAP_BENCH_HYBRID_SIZE", "256,6,8,256").split(",")
)
ROUNDS = int(os.environ.get("STATETAP_BENCH_HYBRID_ROUNDS", "3"))
VOCAB = 1000
POSITIONS = [LENGTH // 4 - 1, LENGTH // 2 - 1, 3 * LENGTH // 4 - 1, LENGTH - 1]
PATTERN = ["full_attention" if layer % 3 == 1 else "linear_attention" for layer in range(LAYERS)]
_HEADS = dict(num_attention_heads=max(1, HIDDEN // 64), num_key_value_heads=max(1, HIDDEN // 128))
_MAMBA2 = dict(mamba_n_heads=HIDDEN // 32, mamba_d_head=64, mamba_d_state=64, mamba_chunk_size=64)

_MAMBA1 = dict(mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=HIDDEN // 16)
# Zamba's and Zamba2's names for the layers: the shared attention block runs on "hybrid" layers
ZAMBA_PATTERN = ["hybrid" if kind == "full_attention" else kind for kind in PATTERN]

HYBRIDS = {
    "bamba": (
        "BambaConfig",
        "BambaForCausalLM",
        _HEADS
        | _MAMBA2
        | dict(
            num_hidden_layers=LAYERS,
            intermediate_size=2 * HIDDEN,
            attn_layer_indices=[i for i, kind in enumerate(PATTERN) if kind == "full_attention"],
        ),
    ),
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        _HEADS
        | _MAMBA2
        | dict(
            num_hidden_layers=LAYERS,
            intermediate_size=HIDDEN,
            shared_intermediate_size=HIDDEN,
            num_local_experts=4,
            num_experts_per_tok=2,
            layer_types=PATTERN,
        ),
    ),
    "nemotron_h": (
        "NemotronHConfig",
        "NemotronHForCausalLM",
        _HEADS
        | dict(
            layers_block_type=PATTERN,
            head_dim=64,
            intermediate_size=2 * HIDDEN,
            ssm_state_size=64,
            mamba_num_heads=HIDDEN // 32,
            mamba_head_dim=64,
            n_groups=1,
            chunk_size=64,
        ),
    ),
    "jamba": (
        "JambaConfig",
        "JambaForCausalLM",
        _HEADS
        | _MAMBA1
        | dict(
            num_hidden_layers=LAYERS,
            intermediate_size=2 * HIDDEN,
            attn_layer_period=3,
            attn_layer_offset=1,
            num_experts=4,
            num_experts_per_tok=2,
            expert_layer_period=2,
            expert_layer_offset=1,
        ),
    ),
    "zamba": (
        "ZambaConfig",
        "ZambaForCausalLM",
        _HEADS
        | _MAMBA1
        | dict(
            num_hidden_layers=LAYERS,
            intermediate_size=2 * HIDDEN,
            attention_head_dim=128,
            n_mamba_heads=2,
            layers_block_type=ZAMBA_PATTERN,
        ),
    ),
    "zamba2": (
        "Zamba2Config",
        "Zamba2ForCausalLM",
        _HEADS
        | dict(
            num_hidden_layers=LAYERS,
            intermediate_size=2 * HIDDEN,
            layers_block_type=ZAMBA_PATTERN,
            num_mem_blocks=2,
            mamba_d_state=64,
            mamba_headdim=64,
            n_mamba_heads=2 * HIDDEN // 64,
            mamba_ngroups=1,
            chunk_size=64,
        ),
    ),
    "falcon_h1": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        _HEADS
        | dict(
            num_hidden_layers=LAYERS,
            intermediate_size=2 * HIDDEN,
            mamba_d_ssm=2 * HIDDEN,
            mamba_n_heads=2 * HIDDEN // 64,
            mamba_d_head=64,
            mamba_n_groups=1,
            mamba_d_state=64,
            mamba_chunk_size=64,
        ),
    ),
}
IMPLS = ["transformers forward", "tap.run nothing", "tap.run states+residual @4"]


@pytest.fixture(scope="module", params=list(HYBRIDS))
def hybrid(request):
    import transformers

    torch.manual_seed(0)
    config_name, model_name, arguments = HYBRIDS[request.param]
    config = getattr(transformers, config_name)(vocab_size=VOCAB, hidden_size=HIDDEN, **arguments)
    return request.param, getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize("impl", IMPLS)
def test_hybrid_model(record, hybrid, impl):
    name, model = hybrid
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    plain = None if impl == "transformers forward" else (lambda: lambda: model(ids))
    record.time(
        "end to end: hybrids",
        f"transformers {name} d{HIDDEN} x{LAYERS}, B{BATCH} L{LENGTH}",
        impl,
        lambda: make_call(impl, model, ids, POSITIONS),
        ROUNDS,
        paired=plain,
    )
