"""The recurrent (thread-per-column) WKV kernels at odd sizes against the float64 definitions.

``K`` and ``V`` not powers of two (masked key rows and value columns, several V blocks), an odd
``L``, and schedules that cut the walk into segments every way: an emission and an injection
at the same step, at consecutive steps, at 0 and at ``L - 1``, rows with different schedules
and unused slots, add and set, per-row scales.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _device import DEVICE, needs_kernel_device, on_device

from statetap.kernels.examples import rel_error
from statetap.kernels.wkv4.fused_recurrent import run_wkv4
from statetap.kernels.wkv4.reference import wkv4
from statetap.kernels.wkv5.fused_recurrent import wkv5_triton
from statetap.kernels.wkv5.reference import wkv5_sequential
from statetap.kernels.wkv6.launch import prepare, run
from statetap.kernels.wkv6.reference import wkv6_sequential
from statetap.kernels.wkv7.launch import prepare7
from statetap.kernels.wkv7.reference import wkv7_sequential

pytestmark = needs_kernel_device
B, L, H, K, V = 3, 13, 2, 20, 36


def schedules(mode: str, state_shape: tuple[int, ...]) -> dict:
    """Per-row emissions and injections that meet, follow each other and touch both ends."""
    return dict(
        initial_state=torch.randn(B, *state_shape),
        output_final_state=True,
        emit_at=torch.tensor([[0, 5, 6, L - 1], [4, -1, 9, 12], [-1, -1, -1, 7]]),
        inject_at=torch.tensor([[5, 0, -1], [L - 1, 3, 4], [7, 8, -1]]),
        inject_value=torch.randn(B, 3, *state_shape),
        inject_mode=mode,
        **({"inject_scale": torch.tensor([[0.5, -1.0, 2.0]] * B)} if mode == "add" else {}),
    )


def to64(values: dict) -> dict:
    return {
        n: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for n, x in values.items()
    }


def assert_close(ref, out, tol=1e-5):
    for name in ("y", "final_state", "states"):
        expected, got = getattr(ref, name), getattr(out, name)
        assert expected.shape == got.shape, name
        assert rel_error(expected, got) <= tol, f"{name}: {rel_error(expected, got):.2e}"


@pytest.mark.parametrize("mode", ["add", "set"])
def test_wkv6_odd_sizes(mode):
    x = on_device(
        dict(
            r=torch.randn(B, L, H, K),
            k=torch.randn(B, L, H, K),
            v=torch.randn(B, L, H, V),
            w=F.logsigmoid(torch.randn(B, L, H, K)),
            u=torch.randn(H, K),
        )
    )
    instr = on_device(schedules(mode, (H, K, V)))
    out = run(prepare(*x.values(), 0.7, instr), "recurrent")
    ref = wkv6_sequential(*to64(x).values(), 0.7, **to64(instr))
    assert_close(ref, out)


def test_wkv5_static_decay():
    x = on_device(dict(r=torch.randn(B, L, H, K), k=torch.randn(B, L, H, K)))
    v, w, u = on_device(
        dict(v=torch.randn(B, L, H, V), w=-torch.rand(H, K), u=torch.randn(H, K))
    ).values()
    instr = on_device(schedules("add", (H, K, V)))
    out = wkv5_triton(x["r"], x["k"], v, w, u, form="recurrent", **instr)
    ref = wkv5_sequential(
        x["r"].double(), x["k"].double(), v.double(), w.double(), u.double(), **to64(instr)
    )
    assert_close(ref, out)


@pytest.mark.parametrize("mode", ["add", "set"])
def test_wkv7_odd_sizes(mode):
    kappa = F.normalize(torch.randn(B, L, H, K), dim=-1)
    x = on_device(
        dict(
            r=torch.randn(B, L, H, K),
            w=-0.6 * torch.rand(B, L, H, K),
            k=torch.randn(B, L, H, K),
            v=torch.randn(B, L, H, V),
            a=-kappa,
            b=kappa * torch.rand(B, L, H, 1),
        )
    )
    instr = on_device(schedules(mode, (H, K, V)))
    out = prepare7(*x.values(), 1.0, instr).run("recurrent")
    ref = wkv7_sequential(*to64(x).values(), 1.0, **to64(instr))
    assert_close(ref, out)


@pytest.mark.parametrize("mode", ["add", "set"])
def test_wkv4_segments(mode):
    C = 45  # two channel blocks, the second masked
    w, u = on_device(dict(w=-torch.rand(C), u=torch.randn(C))).values()
    k, v = on_device(dict(k=torch.randn(B, L, C), v=torch.randn(B, L, C))).values()
    instr = schedules(mode, (3, C))
    # (aa, bb, pp): bb > 0 keeps the denominator away from zero; pp is any log-scale
    instr["initial_state"] = torch.stack(
        [torch.randn(B, C), torch.rand(B, C) + 0.5, torch.randn(B, C)], 1
    )
    instr["inject_value"][:, :, 1] = torch.rand(B, 3, C) + 0.5
    if mode == "add":
        instr["inject_scale"] = torch.tensor([[0.5, 1.0, 2.0]] * B)
    instr = on_device(instr)
    out = run_wkv4(w, u, k, v, instr)
    ref = wkv4(w.double(), u.double(), k.double(), v.double(), **to64(instr))
    assert_close(ref, out)
    assert out.y.device.type == DEVICE.type
