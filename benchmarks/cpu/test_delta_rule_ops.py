"""Gated delta rule (``statetap.kernels.delta_rule``, running on ``wkv7``'s C++ kernel) beside
transformers' torch forms (``torch_recurrent_gated_delta_rule`` and
``torch_chunk_gated_delta_rule`` of Qwen3-Next) and fla's ``naive_recurrent_gated_delta_rule``.

Shapes: Qwen3-Next's linear-attention head layout (H 16, K 128, V 128; one gate per head; query
and key L2-normalised in the kernel) at B 1 and 8, L 512 and 2048; only B 1 L 512 runs by
default, the others are ``slow`` (the peers' token loops take minutes there: ``-m slow``).
fla's naive form has no in-kernel norm: it gets query and key normalised before the clock
starts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import OURS, cpu_backend, emission, plain_of

HEADS, KEY_DIM, VALUE_DIM = 16, 128, 128
SHAPES = [  # B, L
    (1, 512),
    pytest.param((8, 512), marks=pytest.mark.slow),
    pytest.param((1, 2048), marks=pytest.mark.slow),
    pytest.param((8, 2048), marks=pytest.mark.slow),
]
QWEN3_NEXT = "transformers.models.qwen3_next.modeling_qwen3_next"
PEERS = {
    "transformers torch_recurrent_gated_delta_rule": "torch_recurrent_gated_delta_rule",
    "transformers torch_chunk_gated_delta_rule": "torch_chunk_gated_delta_rule",
}
FLA = "fla naive_recurrent_gated_delta_rule"
IMPLS = [OURS, f"{OURS} emit 1%", "statetap torch", *PEERS, FLA]
#: per state element and token in ``csrc/wkv7.cpp`` (what the op runs): e^w S, + b (a^T S) and
#: + k v (FMAs), + r S and the next a^T S (FMAs)
WKV7_OPS = 5


def inputs_of(batch: int, length: int) -> dict:
    """Qwen3-Next-like inputs: ``g = -exp(A_log) softplus(.)`` per head, ``beta = sigmoid(.)``."""
    shape = (batch, length, HEADS)
    return dict(
        query=torch.randn(*shape, KEY_DIM),
        key=torch.randn(*shape, KEY_DIM),
        value=torch.randn(*shape, VALUE_DIM),
        g=-torch.exp(torch.randn(HEADS)) * F.softplus(torch.randn(shape)),
        beta=torch.sigmoid(torch.randn(shape)),
    )


def call(impl: str, inputs: dict):
    from statetap import kernels
    from statetap.check_references import torch_function

    if impl.startswith(OURS) or impl == "statetap torch":
        public = kernels.delta_rule
        fn = cpu_backend(public) if impl.startswith(OURS) else public.implementations["torch"]
        extra = emission(impl, inputs["key"].shape[1])
        return lambda: fn(**inputs, use_qk_l2norm_in_kernel=True, **extra)
    if impl in PEERS:
        fn = torch_function(QWEN3_NEXT, PEERS[impl]).function
        return lambda: fn(**inputs, use_qk_l2norm_in_kernel=True)
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    q, k = (F.normalize(inputs[n], dim=-1) for n in ("query", "key"))
    x = inputs
    return lambda: naive_recurrent_gated_delta_rule(q, k, x["value"], x["beta"], x["g"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-L{s[1]}")
def test_delta_rule(record, shape, impl):
    batch, length = shape
    inputs = inputs_of(batch, length)
    tokens = batch * length * HEADS
    updates = tokens * KEY_DIM * VALUE_DIM
    record.time(
        "delta_rule",
        f"B{batch} L{length} H{HEADS} K{KEY_DIM} V{VALUE_DIM}",
        impl,
        lambda: call(impl, inputs),
        5 if impl.startswith(OURS) else 1,
        paired=plain_of(impl, lambda: call(OURS, inputs)),
        updates=updates,
        ops=WKV7_OPS * updates,
        exps=tokens * KEY_DIM,  # the mapped per-channel decay exp(w)
        bytes=4 * tokens * (3 * KEY_DIM + 2 * VALUE_DIM + 2),  # q, k, v, g, beta, y; + the state
    )
