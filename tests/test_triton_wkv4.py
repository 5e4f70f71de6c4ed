"""RWKV-4 Triton kernels (recurrent forward, decode step) against the float64 definition.

On ``DEVICE`` (CPU tensors under the Triton interpreter, CUDA tensors with it off), outputs
poisoned with NaN before each run.
"""

from __future__ import annotations

import pytest
import torch
from _device import DEVICE, needs_kernel_device, on_device
from test_triton_wkv6 import TOL, assert_close, double

from statetap.kernels.examples import rel_error
from statetap.kernels.wkv4.fused_recurrent import BLOCK_C, run_wkv4
from statetap.kernels.wkv4.reference import wkv4
from statetap.kernels.wkv4.step import wkv4_step_triton

pytestmark = needs_kernel_device


def inputs_of(B, L, C, dtype=torch.float32, decay=1.0):
    inputs = dict(
        w=-torch.exp(torch.randn(C)) / decay,
        u=torch.randn(C),
        k=(3 * torch.randn(B, L, C)).to(dtype),  # large keys exercise the running maximum
        v=torch.randn(B, L, C).to(dtype),
    )
    return on_device(inputs)


def reference(inputs, **instrumentation):
    args = [double(inputs[n]) for n in "wukv"]
    instrumentation = on_device(instrumentation)
    return wkv4(*args, **{n: double(x) for n, x in instrumentation.items()})


def poisoned_run(inputs, **instrumentation):
    y = torch.full_like(inputs["v"], float("nan"))
    out = run_wkv4(*(inputs[n] for n in "wukv"), on_device(instrumentation), y=y)
    assert not out.y.isnan().any(), "unwritten y"
    return out


def triple(B, C):
    """A random valid state on DEVICE: (aa, bb > 0, pp)."""
    f = dict(device=DEVICE)
    return torch.stack(
        [torch.randn(B, C, **f), torch.rand(B, C, **f) + 0.1, torch.randn(B, C, **f)], 1
    )


CASES = [  # B, L, C, dtype, decay divisor
    (2, 1, 7, torch.float32, 1.0),
    (1, 15, BLOCK_C + 3, torch.float32, 0.1),
    (2, 33, 40, torch.float32, 10.0),
    (1, 16, 24, torch.float16, 1.0),
]
case_ids = [f"B{c[0]}-L{c[1]}-C{c[2]}-{str(c[3])[6:]}-decay{c[4]}" for c in CASES]


@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_matches_reference(case, mode):
    B, L, C, dtype, decay = case
    inputs = inputs_of(B, L, C, dtype, decay)
    value = triple(B * 2, C).view(B, 2, 3, C)
    if mode == "add":
        value[:, :, 2] = 0.0  # add to the scaled numerator and denominator only
    instrumentation = dict(
        initial_state=triple(B, C),
        output_final_state=True,
        emit_at=torch.tensor([sorted({0, L // 2, L - 1}) + [-1]] * B),
        inject_at=torch.tensor([[L // 2, -1]] * B),
        inject_value=value,
        inject_mode=mode,
    )
    if mode == "add":
        instrumentation["inject_scale"] = torch.linspace(0.0, 2.0, B)
    ref = reference(inputs, **instrumentation)
    assert_close(ref, poisoned_run(inputs, **instrumentation), dtype)


def test_empty_state_and_empty_instrumentation():
    """No initial state: the kernel's own (0, 0, -1e38); empty instrumentation: bit-identical."""
    B, L, C = 2, 9, 20
    inputs = inputs_of(B, L, C)
    plain = poisoned_run(inputs, output_final_state=True)
    assert_close(reference(inputs, output_final_state=True), plain)
    empty = poisoned_run(
        inputs,
        output_final_state=True,
        emit_at=torch.full((B, 2), -1),
        inject_at=torch.zeros(B, 0, dtype=torch.long),
        inject_value=torch.zeros(B, 0, 3, C),
    )
    assert torch.equal(plain.y, empty.y) and torch.equal(plain.final_state, empty.final_state)
    assert torch.equal(empty.states, torch.zeros_like(empty.states))


@pytest.mark.parametrize("mode", ["add", "set"])
def test_decode_step_in_place(mode):
    B, C = 3, 37
    inputs = inputs_of(B, 1, C)
    state = triple(B, C)
    instrumentation = on_device(
        dict(
            emit_at=torch.tensor([[0], [-1], [0]]),
            inject_at=torch.tensor([[0], [0], [-1]]),
            inject_value=triple(B, C)[:, None],
            inject_mode=mode,
        )
    )
    ref = reference(inputs, initial_state=state, output_final_state=True, **instrumentation)
    one = {n: x[:, 0] if x.dim() == 3 else x for n, x in inputs.items()}
    out = wkv4_step_triton(*(one[n] for n in "wukv"), state, **instrumentation)
    assert out.final_state is state
    for a, b in ((ref.y[:, 0], out.y), (ref.final_state, state), (ref.states, out.states)):
        assert rel_error(a, b) <= TOL[torch.float32]
