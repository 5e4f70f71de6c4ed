"""``PreparedStep``: a decode step bound once and relaunched per token gives what the step itself
gives, token after token, and refuses what it cannot replay."""

from __future__ import annotations

import pytest
import torch
import triton.runtime.interpreter
import triton.runtime.jit
from _device import DEVICE, needs_kernel_device

from statetap import kernels
from statetap.kernels import PreparedStep, _cpu
from statetap.kernels.examples import TOKEN_INPUTS, step_example

B = 3


def split(arguments: dict, step: str) -> tuple[dict, dict]:
    """``(bound, token)``: a step's arguments as a prepared step takes them."""
    token = {k: v for k, v in arguments.items() if k in TOKEN_INPUTS[step]}
    return {k: v for k, v in arguments.items() if k not in token}, token


def fresh_token(step: str, device) -> dict:
    return split(step_example(step, B, device), step)[1]


def outputs(out) -> list[torch.Tensor]:
    return [t.clone() for t in out if isinstance(t, torch.Tensor)]


@needs_kernel_device
@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "emit+inject"])
@pytest.mark.parametrize("step", kernels.STEPS)
def test_a_prepared_step_gives_what_the_step_gives_token_after_token(step, instrumented):
    run = getattr(kernels, step).implementations["triton"]
    bound, _ = split(step_example(step, B, DEVICE, instrumented=instrumented), step)
    twin = {k: v.clone() if k in ("state", "states_out", "emit") else v for k, v in bound.items()}
    prepared = PreparedStep(run, **bound)
    for _ in range(3):
        token = fresh_token(step, DEVICE)
        got, want = outputs(prepared(**token)), outputs(run(**twin, **token))
        assert len(got) == len(want) >= 1
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
        assert torch.equal(bound["state"], twin["state"])  # updated in place, token by token


@needs_kernel_device
def test_a_prepared_call_reads_nothing_and_launches_once(monkeypatch):
    bound, token = split(step_example("wkv7_step", B, DEVICE, instrumented=True), "wkv7_step")
    prepared = PreparedStep(kernels.wkv7_step.implementations["triton"], **bound)
    prepared(**token)
    launched, reads = [], []

    def stub(self, *args, grid, warmup=False, **kwargs):
        launched.append(len(args))

    monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "run", stub)
    monkeypatch.setattr(triton.runtime.jit.JITFunction, "run", stub)
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    out = prepared(**fresh_token("wkv7_step", DEVICE))
    assert reads == [] and len(launched) == 1 and out.final_state is bound["state"]


@needs_kernel_device
def test_a_prepared_step_refuses_what_it_cannot_replay():
    run = kernels.wkv6_step.implementations["triton"]
    bound, token = split(step_example("wkv6_step", B, DEVICE), "wkv6_step")
    prepared = PreparedStep(run, **bound)
    prepared(**token)
    wider = fresh_token("wkv6_step", DEVICE) | dict(v=torch.randn(B, 2, 4, device=DEVICE))
    with pytest.raises(ValueError, match="v must have the first call's shape"):
        prepared(**wider)
    with pytest.raises(ValueError, match="r must have the first call's shape, strides, dtype"):
        prepared(**token | dict(r=token["r"].half()))
    with pytest.raises(TypeError, match=r"takes the token inputs \['k', 'r', 'v', 'w'\]"):
        prepared(r=token["r"], k=token["k"], v=token["v"])
    strided = dict(token, r=token["r"].transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match="r must reach the kernel as it is"):
        PreparedStep(run, **bound)(**strided)
    with pytest.raises(ValueError, match="float64"):
        PreparedStep(run, **bound)(**{k: v.double() for k, v in token.items()})
    emitting = split(step_example("wkv6_step", B, DEVICE, instrumented=True), "wkv6_step")[0]
    emitting.pop("states_out")
    with pytest.raises(ValueError, match="states_out="):
        PreparedStep(run, **emitting)
    with pytest.raises(ValueError, match="emit=<buffer>"):
        PreparedStep(kernels.ssd_step, emit=True)


def test_on_cpu_tensors_a_prepared_public_step_runs_the_step_every_token():
    if not _cpu.built():
        pytest.skip("statetap._C (the cpu backend) is not built")
    bound, _ = split(step_example("wkv6_step", B), "wkv6_step")
    twin = dict(bound, state=bound["state"].clone())
    prepared = PreparedStep(kernels.wkv6_step, **bound)
    for _ in range(2):
        token = fresh_token("wkv6_step", "cpu")
        assert torch.equal(prepared(**token).y, kernels.wkv6_step(**twin, **token).y)
