"""RWKV WKV v4-v7: statetap cpu / torch beside fla's naive recurrences (the same recurrence:
``naive_recurrent_rwkv6`` for v5/v6, ``dplr_recurrence`` for v7 with q=r, gk=w, alpha=a, beta=b).

Shapes: the issue's target (B 4, L 512, H 8, K 64) and the RWKV 7B head layout (H 64, K 64)
at B 1 and 8.  BlinkDL's ``rwkv`` package runs whole checkpoints only (no separate WKV op on
its CPU path), so it has no row here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import OURS, cpu_backend, emission, plain_of

SHAPES = [  # B, L, H, K (V = K)
    (4, 512, 8, 64),
    (1, 2048, 64, 64),
    (8, 512, 64, 64),
]
PEERS = {"wkv5": "fla naive_recurrent_rwkv6", "wkv6": "fla naive_recurrent_rwkv6"}
PEERS["wkv7"] = "fla dplr_recurrence"
ids = [f"B{b}-L{l}-H{h}-K{k}" for b, l, h, k in SHAPES]
#: float operations per channel and token besides the two exps (csrc/wkv4.cpp): per exp pair a
#: difference, |.|, a negation and two selects (10); u + k, the output's two products, two
#: sums and a division (6); pp + w, the updates of aa (2) and bb (2), the new max (6)
WKV4_OPS = 22
#: per state element and token (the [K, V] loops of csrc/wkv6.cpp and wkv7.cpp): RWKV-5/6
#: + r S (FMA), e^w S, + k v (FMA); RWKV-7 e^w S, + b (a^T S) and + k v (FMAs), + r S and the
#: next a^T S (FMAs)
MATRIX_OPS = {"wkv5": 3, "wkv6": 3, "wkv7": 5}


def inputs_of(op: str, batch: int, length: int, heads: int, dim: int) -> dict:
    shape = (batch, length, heads, dim)
    if op == "wkv4":
        channels = heads * dim
        return dict(
            w=-torch.exp(torch.randn(channels)),
            u=torch.randn(channels),
            k=torch.randn(batch, length, channels),
            v=torch.randn(batch, length, channels),
        )
    if op == "wkv7":
        kappa = F.normalize(torch.randn(shape), dim=-1)
        return dict(
            r=torch.randn(shape),
            w=F.logsigmoid(torch.randn(shape)),
            k=torch.randn(shape),
            v=torch.randn(shape),
            a=-kappa,
            b=kappa * torch.sigmoid(torch.randn(shape)),
        )
    w = F.logsigmoid(torch.randn(heads, dim) if op == "wkv5" else torch.randn(shape))
    return dict(
        r=torch.randn(shape),
        k=torch.randn(shape),
        v=torch.randn(shape),
        w=w,
        u=torch.randn(heads, dim),
    )


def peer_call(op: str, inputs: dict):
    """fla's naive form on the same inputs, in its ``[B, H, T, K]`` layout."""
    heads_first = {n: x.transpose(1, 2) for n, x in inputs.items() if x.dim() == 4}
    if op == "wkv7":
        from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

        h = heads_first
        return lambda: dplr_recurrence(h["r"], h["k"], h["v"], h["a"], h["b"], h["w"])
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    if inputs["w"].dim() == 2:  # RWKV-5: one decay per head and channel, for every token
        heads_first["w"] = inputs["w"][None, :, None].expand_as(heads_first["k"])
    h = heads_first
    return lambda: naive_recurrent_rwkv6(h["r"], h["k"], h["v"], h["w"], inputs["u"], scale=1.0)


def call(op: str, impl: str, inputs: dict):
    from statetap import kernels

    public = getattr(kernels, op)
    if impl.startswith("statetap cpu"):
        fn = cpu_backend(public)
    elif impl == "statetap torch":
        fn = public.implementations["torch"]
    else:
        return peer_call(op, inputs)
    length = inputs["k"].shape[1]
    return lambda: fn(**inputs, **emission(impl, length))


def cases():
    for op in ("wkv4", "wkv5", "wkv6", "wkv7"):
        ours = ["statetap cpu", "statetap cpu emit 1%", "statetap torch"]
        for impl in ours + ([PEERS[op]] if op in PEERS else []):
            yield op, impl


@pytest.mark.parametrize("op,impl", list(cases()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_wkv(record, shape, op, impl):
    batch, length, heads, dim = shape
    inputs = inputs_of(op, batch, length, heads, dim)
    if op == "wkv4":
        updates = 3 * batch * length * heads * dim  # (num, den, max) per channel
        ops = WKV4_OPS * updates // 3
        exps = 2 * updates // 3
        moved = 4 * 3 * batch * length * heads * dim  # k, v, y
    else:
        updates = batch * length * heads * dim * dim
        ops = MATRIX_OPS[op] * updates
        exps = batch * length * heads * dim  # one decay per key channel (v5: static, reused)
        extra = 2 if op == "wkv7" else 0  # a, b
        moved = 4 * batch * length * heads * dim * (4 + extra + 1)  # r, k, v, w (+a, b), y
    record.time(
        op,
        f"B{batch} L{length} H{heads} K{dim}",
        impl,
        lambda: call(op, impl, inputs),
        5 if impl.startswith("statetap cpu") else 1,
        paired=plain_of(impl, lambda: call(op, OURS, inputs)),
        updates=updates,
        ops=ops,
        exps=exps,
        bytes=moved,
    )
