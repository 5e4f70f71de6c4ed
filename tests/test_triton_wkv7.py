"""RWKV-7 Triton kernels (recurrent forward, decode step) against the float64 definition.

Under the Triton interpreter on CPU tensors, outputs poisoned with NaN before each run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_triton_wkv6 import TOL, assert_close, double

from statetap.kernels.examples import rel_error
from statetap.kernels.wkv7.fused_recurrent import prepare7
from statetap.kernels.wkv7.reference import wkv7_sequential
from statetap.kernels.wkv7.step import wkv7_step_triton

NAMES = ("r", "w", "k", "v", "a", "b")


def inputs_of(B, L, H, K, V, dtype=torch.float32, decay=1.0):
    """RWKV-7-like inputs: ``a = -kappa``, ``b = kappa * rate`` (``|kappa| = 1``)."""
    kappa = F.normalize(torch.randn(B, L, H, K), dim=-1)
    values = dict(
        r=torch.randn(B, L, H, K),
        w=F.logsigmoid(torch.randn(B, L, H, K)) / decay,
        k=torch.randn(B, L, H, K),
        v=torch.randn(B, L, H, V),
        a=-kappa,
        b=kappa * torch.sigmoid(torch.randn(B, L, H, K)),
    )
    return {n: x.to(dtype) for n, x in values.items()}


def reference(inputs, scale, **instrumentation):
    args = [double(inputs[n]) for n in NAMES]
    return wkv7_sequential(*args, scale, **{n: double(x) for n, x in instrumentation.items()})


def poisoned_run(inputs, scale, **instrumentation):
    launch = prepare7(*(inputs[n] for n in NAMES), scale, instrumentation)
    launch.y.fill_(float("nan"))
    if launch.instr.final is not None:
        launch.instr.final.fill_(float("nan"))
    out = launch.run()
    assert not out.y.isnan().any(), "unwritten y"
    if out.final_state is not None:
        assert not out.final_state.isnan().any(), "unwritten final state"
    return out


CASES = [  # B, L, H, K, V, dtype, decay divisor
    (2, 1, 1, 16, 16, torch.float32, 1.0),
    (1, 15, 2, 32, 32, torch.float32, 0.1),
    (2, 17, 1, 64, 64, torch.float32, 10.0),
    (1, 16, 1, 16, 32, torch.float16, 1.0),
    (1, 33, 1, 64, 16, torch.float32, 1.0),
]
case_ids = [f"B{c[0]}-L{c[1]}-K{c[3]}-V{c[4]}-{str(c[5])[6:]}-decay{c[6]}" for c in CASES]


@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_matches_reference(case, mode):
    B, L, H, K, V, dtype, decay = case
    inputs = inputs_of(B, L, H, K, V, dtype, decay)
    emit = sorted({0, L // 2, L - 1})
    instrumentation = dict(
        initial_state=torch.randn(B, H, K, V),
        output_final_state=True,
        emit_at=torch.tensor([emit + [-1]] * B),
        inject_at=torch.tensor([[L // 2]] + [[-1]] * (B - 1)),
        inject_value=torch.randn(B, 1, H, K, V),
        inject_mode=mode,
    )
    if mode == "add":
        instrumentation["inject_scale"] = torch.linspace(-2.0, 2.0, B)
    ref = reference(inputs, 0.5, **instrumentation)
    assert_close(ref, poisoned_run(inputs, 0.5, **instrumentation), dtype)


def test_empty_instrumentation_is_bit_identical():
    B, L, H, K = 2, 9, 2, 16
    inputs = inputs_of(B, L, H, K, K)
    plain = poisoned_run(inputs, 1.0, output_final_state=True)
    empty = poisoned_run(
        inputs,
        1.0,
        output_final_state=True,
        emit_at=torch.full((B, 1), -1),
        inject_at=torch.zeros(B, 0, dtype=torch.long),
        inject_value=torch.zeros(B, 0, H, K, K),
    )
    assert torch.equal(plain.y, empty.y) and torch.equal(plain.final_state, empty.final_state)
    assert torch.equal(empty.states, torch.zeros_like(empty.states))


@pytest.mark.parametrize("mode", ["add", "set"])
def test_decode_step_in_place(mode):
    B, H, K, V = 3, 2, 32, 16
    one = inputs_of(B, 1, H, K, V)
    state = torch.randn(B, H, K, V)
    instrumentation = dict(
        emit_at=torch.tensor([[0], [-1], [0]]),
        inject_at=torch.tensor([[0], [0], [-1]]),
        inject_value=torch.randn(B, 1, H, K, V),
        inject_mode=mode,
    )
    ref = reference(one, 1.0, initial_state=state, output_final_state=True, **instrumentation)
    out = wkv7_step_triton(*(one[n][:, 0] for n in NAMES), state, **instrumentation)
    assert out.final_state is state
    for a, b in ((ref.y[:, 0], out.y), (ref.final_state, state), (ref.states, out.states)):
        assert rel_error(a, b) <= TOL[torch.float32]
