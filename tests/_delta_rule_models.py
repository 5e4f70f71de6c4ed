"""Tiny gated delta-rule hybrids (Qwen3-Next, OLMo-hybrid, Kimi Linear) and the model's own
torch path, the reference of ``tests/test_delta_rule_models.py``.

With fla-core installed, transformers 5.25 routes the delta rule (and the short convolution,
with causal-conv1d) through ``use_kernel_func_from_hub_with_fallback``: a ``Func`` module per
function that calls the installed package's kernel, or the modeling file's own torch function
where the package does not run on the inputs' device.  Which one ran must not decide what a
test compares against: :func:`transformers_torch_path` points each of those module attributes
at the torch function the modeling file defines (the function transformers wrapped), read off
the ``Func`` module itself, so the reference is transformers' torch code whatever is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator

import torch
from transformers import (
    KimiLinearConfig,
    KimiLinearForCausalLM,
    OlmoHybridConfig,
    OlmoHybridForCausalLM,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

VOCAB = 61
#: a delta layer, an attention layer, a delta layer: state sites on layers 0 and 2 only
LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention"]
STATE_LAYERS = (0, 2)
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=len(LAYER_TYPES),
    layer_types=LAYER_TYPES,
    num_attention_heads=2,
    linear_conv_kernel_dim=4,
    # The gated norm after the delta rule divides y_t = S_t^T q_t by its RMS per head; early in
    # a sequence y_t of a head whose query misses the few keys written is ~1e-3, and with the
    # released 1e-6 a 1e-7 rounding difference (statetap's chunking against transformers')
    # comes out as 1e-4.  1e-3 bounds that gain, so equality holds to rounding at every token.
    rms_norm_eps=1e-3,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)

#: name -> (config class, model class, config arguments, modeling module, hub-routed functions)
ARCHITECTURES = {
    # grouped heads: 2 query/key heads serve 4 value heads (HV = 2 HK), K != V
    "qwen3_next": (
        Qwen3NextConfig,
        Qwen3NextForCausalLM,
        _COMMON
        | _MOE
        | dict(
            num_key_value_heads=1,
            head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=6,
            num_experts=4,
            shared_expert_intermediate_size=16,
            decoder_sparse_step=1,
        ),
        "transformers.models.qwen3_next.modeling_qwen3_next",
        (
            "torch_chunk_gated_delta_rule",
            "torch_recurrent_gated_delta_rule",
            "causal_conv1d_fn",
            "causal_conv1d_update",
        ),
    ),
    # beta in (0, 2): negative eigenvalues of the transition
    "olmo_hybrid": (
        OlmoHybridConfig,
        OlmoHybridForCausalLM,
        _COMMON
        | dict(
            num_key_value_heads=1,
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_allow_neg_eigval=True,
        ),
        "transformers.models.olmo_hybrid.modeling_olmo_hybrid",
        (
            "torch_chunk_gated_delta_rule",
            "torch_recurrent_gated_delta_rule",
            "causal_conv1d_fn",
            "causal_conv1d_update",
        ),
    ),
    # KDA: one log gate per key channel; MLA attention layer
    "kimi_linear": (
        KimiLinearConfig,
        KimiLinearForCausalLM,
        _COMMON
        | _MOE
        | dict(
            num_key_value_heads=2,
            kv_lora_rank=8,
            qk_rope_head_dim=4,
            qk_nope_head_dim=8,
            v_head_dim=8,
            linear_num_heads=2,
            linear_head_dim=8,
            num_local_experts=4,
        ),
        "transformers.models.kimi_linear.modeling_kimi_linear",
        (
            "chunk_kimi_delta_attention",
            "recurrent_kimi_delta_attention",
            "causal_conv1d_fn",
            "causal_conv1d_update",
        ),
    ),
}
MODELS = list(ARCHITECTURES)


def build(name: str, vocab: int = VOCAB) -> torch.nn.Module:
    """The tiny model ``name`` over ``vocab`` tokens with fixed weights, in eval mode.
    Matrices and convolution filters are redrawn at unit gain and the decay rates
    ``exp(A_log)`` in ``[0.05, 0.37]`` (transformers' 0.02 gain and rates up to 16 leave the
    states near zero and the logits blind to them)."""
    torch.manual_seed(4321)
    config_class, model_class, arguments, _, _ = ARCHITECTURES[name]
    model = model_class(config_class(**arguments | dict(vocab_size=vocab))).eval()
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter.dim() >= 2:  # linear [out, in], depthwise convolution [C, 1, K]
                parameter.normal_(0.0, parameter[0].numel() ** -0.5)
            elif parameter_name.endswith("A_log"):
                parameter.uniform_(-3.0, -1.0)
    return model


def transformers_torch_function(hub_function: object):
    """The torch function transformers' modeling file defines behind ``hub_function`` (the
    ``Func`` module ``use_kernel_func_from_hub_with_fallback`` made of it)."""
    routed = inspect.getclosurevars(type(hub_function).forward).nonlocals["func"]
    return inspect.unwrap(routed)


@contextlib.contextmanager
def transformers_torch_path(name: str) -> Iterator[None]:
    """Within the block, model ``name`` runs transformers' own torch delta rule and
    convolution, whatever fla or causal-conv1d would have been routed to."""
    _, _, _, modeling, functions = ARCHITECTURES[name]
    module = importlib.import_module(modeling)
    originals = {function: getattr(module, function) for function in functions}
    try:
        for function, hub_function in originals.items():
            setattr(module, function, transformers_torch_function(hub_function))
        yield
    finally:
        for function, hub_function in originals.items():
            setattr(module, function, hub_function)
