"""What a Triton decode step costs the host: each step's Python wrapper (checks, instrumentation,
output allocation, launch arguments) timed with the kernel launch itself stubbed out, so the row
is the host time a decode loop pays per step and per layer on top of Triton's own launch.

The issue's target is 20 µs per call.  The inputs are the decode goal shapes at B = 64
(Mamba-1 D 5120 N 16, Mamba-2 H 80 P 64 N 128, RWKV-6/7 H 64 K = V = 64, RWKV-4 C 4096) on CPU
tensors: the wrappers do the same work whatever the device, and nothing here waits for a GPU.
Each step is timed plain and instrumented as a decode loop holds it (prebuilt schedules and
buffers, :func:`statetap.kernels.examples.step_example`), called as the function and as a
:class:`statetap.kernels.PreparedStep` (its per-layer arguments bound and checked once)."""

from __future__ import annotations

import pytest
import triton.runtime.interpreter
import triton.runtime.jit

from statetap import kernels
from statetap.kernels import _triton
from statetap.kernels.examples import TOKEN_INPUTS, step_example

GROUP = "decode step wrapper (launch stubbed)"
BATCH = 64
SIZES = {
    "selective_scan_step": dict(D=5120, N=16, G=1),
    "ssd_step": dict(H=80, P=64, G=1, N=128),
    "wkv4_step": dict(C=4096),
    "wkv6_step": dict(H=64, K=64, V=64),
    "wkv7_step": dict(H=64, K=64, V=64),
    "delta_rule_step": dict(HK=16, HV=32, K=128, V=128),  # Qwen3-Next's linear attention
}
ROUNDS = 2000


@pytest.fixture
def stubbed_launch(monkeypatch):
    """Triton launches return at once; the wrappers accept CPU tensors."""

    def stub(self, *args, grid, warmup=False, **kwargs):
        return None

    monkeypatch.setattr(triton.runtime.jit.JITFunction, "run", stub)
    monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "run", stub)
    monkeypatch.setattr(_triton, "INTERPRETING", True)


@pytest.mark.parametrize("prepared", [False, True], ids=["function", "prepared"])
@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "emit+inject"])
@pytest.mark.parametrize("step", kernels.STEPS)
def test_step_wrapper(record, stubbed_launch, step, instrumented, prepared):
    run = getattr(kernels, step).implementations["triton"]
    arguments = step_example(step, BATCH, instrumented=instrumented, **SIZES[step])
    shape = " ".join(f"{k}{v}" for k, v in SIZES[step].items())

    def make_call():
        if not prepared:
            return lambda: run(**arguments)
        token = {k: v for k, v in arguments.items() if k in TOKEN_INPUTS[step]}
        bound = {k: v for k, v in arguments.items() if k not in token}
        step_call = kernels.PreparedStep(run, **bound)
        return lambda: step_call(**token)

    impl = "statetap triton " + ("PreparedStep" if prepared else "wrapper")
    record.time(
        GROUP,
        f"{step} B{BATCH} {shape}",
        impl + (" emit+inject" if instrumented else ""),
        make_call,
        ROUNDS,
    )
