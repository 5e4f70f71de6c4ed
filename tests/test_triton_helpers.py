"""The ``@triton.jit`` helpers the ops share (``statetap.kernels._triton``), checked on their own
against torch under the Triton interpreter (or on CUDA), and the launch side's layout of the
injected values."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from _device import DEVICE, needs_kernel_device

from statetap.kernels import _triton

pytestmark = needs_kernel_device


@triton.jit
def _softplus_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(y_ptr + offs, _triton.softplus(x), mask=offs < n)


def test_softplus_is_accurate_to_float32_over_a_wide_range():
    # fp32 inputs from deep in the exp-underflow side to far past any cut-off, with the region
    # around 0 and the old cut points (-15, 20) dense; then torch's softplus in float64
    x = torch.cat(
        [
            torch.linspace(-87.0, 87.0, 3001),
            torch.randn(2000) * 4,
            torch.tensor([-20.0, -15.0, -14.99, 0.0, 1e-30, 19.99, 20.0, 20.01]),
        ]
    ).to(DEVICE)
    y = torch.full_like(x, float("nan"))
    _softplus_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    want = torch.nn.functional.softplus(x.double())
    # two float32 ulps (2 * 2^-23 relative) times softplus's condition number, max(1, |x|):
    # below 0 it is e^x, whose relative error is |x| times that of x
    rel = ((y.double() - want).abs() / want / x.double().abs().clamp(min=1)).max().item()
    assert rel < 2 * 2.0**-23, rel
    far = torch.tensor([-1e4, 1e4, -200.0, 200.0], device=DEVICE)
    y = torch.empty_like(far)
    _softplus_kernel[(1,)](far, y, far.numel(), BLOCK=4)
    assert y.tolist() == [0.0, 1e4, 0.0, 200.0]


def test_injected_values_get_dense_state_dims_without_copying_broadcasts():
    state = (3, 4, 5)
    dense = torch.randn(2, 6, *state)
    assert _triton.dense_state_dims(dense, state) is dense
    vector = torch.randn(*state).expand(2, 6, *state)  # a steering vector for every row/slot
    assert _triton.dense_state_dims(vector, state) is vector
    transposed = torch.randn(2, 6, 5, 4, 3).permute(0, 1, 4, 3, 2)
    out = _triton.dense_state_dims(transposed, state)
    assert out.stride()[2:] == (20, 5, 1) and torch.equal(out, transposed)
    shared = torch.randn(1, 1, 5, 4, 3).permute(0, 1, 4, 3, 2).expand(2, 6, *state)
    out = _triton.dense_state_dims(shared, state)
    assert out.stride()[:2] == (0, 0) and out.stride()[2:] == (20, 5, 1)
    assert torch.equal(out, shared)
    assert _triton.dense_state_dims(None, state) is None
