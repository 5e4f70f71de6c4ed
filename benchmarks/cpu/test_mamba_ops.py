"""Mamba-1 selective scan and Mamba-2 SSD: statetap cpu / torch beside mamba-ssm's references.

Shapes: the issue's target (B 8, D 256, N 16, L 512), Mamba-130M's width (D 1536) and
Mamba-1.4B's (D 4096) at B 1 and 8, L 512 and 2048; Mamba-2 130M's heads (H 24, P 64, N 128).
The slow pure-torch paths run few rounds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import OURS, cpu_backend, emission, mamba_ssm_function, plain_of

SCAN_SHAPES = [  # B, D, L (N = 16)
    (8, 256, 512),
    (1, 1536, 2048),
    (8, 1536, 512),
    (1, 4096, 2048),
]
SSD_SHAPES = [  # B, L, H, P, N (G = 1)
    (1, 2048, 24, 64, 128),
    (8, 512, 24, 64, 128),
]
SCAN_IMPLS = [
    "statetap cpu",
    "statetap cpu emit 1%",
    "statetap torch",
    "mamba-ssm selective_scan_ref",
]
SSD_IMPLS = [
    "statetap cpu",
    "statetap cpu emit 1%",
    "statetap torch",
    "mamba-ssm ssd_minimal_discrete",
]
N = 16
#: float operations per state update besides the exp (csrc/selective_scan.cpp's step loop):
#: dt A, e^{dt A} S, + dt u B_t (FMA), + S C_t (FMA)
SCAN_OPS = 4
#: csrc/ssd.cpp's update: decay S, + dt x B_t (FMA), + S C_t (FMA); one exp per head and token
SSD_OPS = 3


def scan_inputs(batch: int, dim: int, length: int) -> dict:
    return dict(
        u=torch.randn(batch, dim, length),
        delta=torch.randn(batch, dim, length) - 1.0,
        A=-torch.rand(dim, N) - 0.5,
        B=torch.randn(batch, 1, N, length),
        C=torch.randn(batch, 1, N, length),
        D=torch.randn(dim),
        z=torch.randn(batch, dim, length),
        delta_bias=0.1 * torch.randn(dim),
        delta_softplus=True,
    )


def scan_call(impl: str, inputs: dict):
    from statetap.kernels import selective_scan

    if impl.startswith("statetap cpu"):
        fn = cpu_backend(selective_scan)
        return lambda: fn(**inputs, **emission(impl, inputs["u"].shape[-1]))
    if impl == "statetap torch":
        fn = selective_scan.implementations["torch"]
        return lambda: fn(**inputs)
    selective_scan_ref = mamba_ssm_function(
        "mamba_ssm.ops.selective_scan_interface", "selective_scan_ref"
    )
    theirs = dict(inputs, B=inputs["B"][:, 0], C=inputs["C"][:, 0])  # [B, N, L]
    return lambda: selective_scan_ref(**theirs)


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=lambda s: "B{}-D{}-L{}".format(*s))
def test_selective_scan(record, shape, impl):
    batch, dim, length = shape
    inputs = scan_inputs(batch, dim, length)
    updates = batch * dim * length * N
    rounds = 7 if impl.startswith("statetap cpu") else (1 if updates > 10e6 else 3)
    record.time(
        "selective_scan",
        f"B{batch} D{dim} N{N} L{length}",
        impl,
        lambda: scan_call(impl, inputs),
        rounds,
        paired=plain_of(impl, lambda: scan_call(OURS, inputs)),
        updates=updates,
        ops=SCAN_OPS * updates,
        exps=updates,
        bytes=4 * (5 * batch * dim * length + 2 * batch * N * length),  # u, delta, z, y; B, C
    )


def ssd_inputs(batch, length, heads, head_dim, n) -> dict:
    return dict(
        x=torch.randn(batch, length, heads, head_dim),
        dt=torch.randn(batch, length, heads) - 1.0,
        A=-torch.rand(heads) - 0.5,
        B=torch.randn(batch, length, 1, n),
        C=torch.randn(batch, length, 1, n),
        dt_softplus=True,
    )


def ssd_call(impl: str, inputs: dict):
    from statetap.kernels import ssd

    if impl.startswith("statetap cpu"):
        fn = cpu_backend(ssd)
        return lambda: fn(**inputs, **emission(impl, inputs["x"].shape[1]))
    if impl == "statetap torch":
        fn = ssd.implementations["torch"]
        return lambda: fn(**inputs)
    ssd_minimal_discrete = mamba_ssm_function(
        "mamba_ssm.modules.ssd_minimal", "ssd_minimal_discrete"
    )

    def theirs():  # the discretisation mamba-ssm's caller does, then its chunked scan
        dt = F.softplus(inputs["dt"])
        shape = inputs["x"].shape[:3] + inputs["B"].shape[-1:]
        B, C = inputs["B"].expand(shape), inputs["C"].expand(shape)
        return ssd_minimal_discrete(inputs["x"] * dt[..., None], inputs["A"] * dt, B, C, 64)

    return theirs


@pytest.mark.parametrize("impl", SSD_IMPLS)
@pytest.mark.parametrize("shape", SSD_SHAPES, ids=lambda s: "B{}-L{}-H{}-P{}-N{}".format(*s))
def test_ssd(record, shape, impl):
    batch, length, heads, head_dim, n = shape
    inputs = ssd_inputs(*shape)
    updates = batch * length * heads * head_dim * n
    record.time(
        "ssd",
        f"B{batch} L{length} H{heads} P{head_dim} N{n}",
        impl,
        lambda: ssd_call(impl, inputs),
        5 if impl.startswith("statetap cpu") else 1,
        paired=plain_of(impl, lambda: ssd_call(OURS, inputs)),
        updates=updates,
        ops=SSD_OPS * updates,
        exps=batch * length * heads,
        bytes=4 * (batch * length * heads * (2 * head_dim + 1) + 2 * batch * length * n),
    )
