"""The training scan (hand-written backward) against the reference scan under autograd, float64."""

from __future__ import annotations

import pytest
import torch

from statetap.kernels.selective_scan.autograd import selective_scan_autograd
from statetap.kernels.selective_scan.reference import selective_scan


def _inputs(batch: int, dim: int, length: int, state: int, extras: bool) -> dict:
    f64 = dict(dtype=torch.float64)
    args = dict(
        u=torch.randn(batch, dim, length, **f64),
        delta=torch.randn(batch, dim, length, **f64),
        A=-torch.exp(torch.randn(dim, state, **f64)),
        B=torch.randn(batch, state, length, **f64),
        C=torch.randn(batch, state, length, **f64),
    )
    if extras:
        args |= dict(
            D=torch.randn(dim, **f64),
            z=torch.randn(batch, dim, length, **f64),
            delta_bias=torch.randn(dim, **f64),
        )
    return {k: v.requires_grad_() for k, v in args.items()}


@pytest.mark.parametrize("length", [1, 2, 13])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D-z-bias"])
@pytest.mark.parametrize("final", [False, True], ids=["y", "y-and-final-state"])
def test_outputs_and_gradients_match_the_reference(length, extras, final):
    args = _inputs(3, 7, length, 5, extras)
    cotangent_y = torch.randn(3, 7, length, dtype=torch.float64)
    cotangent_state = torch.randn(3, 7, 5, dtype=torch.float64)

    def run(scan):
        out = scan(**args, delta_softplus=True, output_final_state=final)
        loss = (out.y * cotangent_y).sum()
        if final:
            loss = loss + (out.final_state * cotangent_state).sum()
        return out, torch.autograd.grad(loss, list(args.values()))

    (ref, ref_grads), (ours, our_grads) = run(selective_scan), run(selective_scan_autograd)
    torch.testing.assert_close(ours.y, ref.y, rtol=1e-12, atol=1e-12)
    assert (ours.final_state is None) == (not final)
    if final:
        torch.testing.assert_close(ours.final_state, ref.final_state, rtol=1e-12, atol=1e-12)
    for name, ref_grad, our_grad in zip(args, ref_grads, our_grads):
        torch.testing.assert_close(our_grad, ref_grad, rtol=1e-10, atol=1e-12, msg=name)


def test_float32_inputs_give_float32_outputs_close_to_float64():
    args = {k: v.detach() for k, v in _inputs(2, 6, 9, 3, True).items()}
    exact = selective_scan(**args, delta_softplus=True).y
    ours = selective_scan_autograd(**{k: v.float() for k, v in args.items()}, delta_softplus=True)
    assert ours.y.dtype == torch.float32
    torch.testing.assert_close(ours.y.double(), exact, rtol=1e-5, atol=1e-5)


def test_one_group_B_C_equal_ungrouped():
    args = {k: v.detach() for k, v in _inputs(2, 4, 6, 3, False).items()}
    grouped = dict(args, B=args["B"][:, None], C=args["C"][:, None])
    assert torch.equal(selective_scan_autograd(**grouped).y, selective_scan_autograd(**args).y)


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("B", torch.randn(2, 2, 3, 6), "B must have shape"),  # two groups: not supported here
        ("C", torch.randn(4, 3), "C must have shape"),  # shared over time: not supported here
        ("A", torch.randn(5, 3), "A must have shape"),
        ("delta", torch.randn(2, 4, 5), "delta must have shape"),
        ("u", [1.0], "u must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(name, value, match):
    args = {k: v.detach() for k, v in _inputs(2, 4, 6, 3, False).items()}
    args[name] = value
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan_autograd(**args)
