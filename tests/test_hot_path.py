"""An instrumented call and a decode step read no device value (no host sync) and allocate no
states buffer when given a prebuilt :class:`~statetap.kernels.Schedule` and ``states_out``.

On the CPU a read is counted by patching every way Python reads a tensor's value
(``.item()``, ``.tolist()``, ``bool()``, ``int()``, ``float()``, ``index``); the Triton launches
are stubbed (what the kernels compute is tested elsewhere; here only the wrappers' host work
is).  On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` turns any sync into an error.
"""

from __future__ import annotations

import pytest
import torch
import triton.runtime.interpreter
import triton.runtime.jit
from _device import DEVICE, needs_kernel_device

from statetap import Emit, Tap, kernels
from statetap.kernels import Schedule, _cpu
from statetap.kernels.examples import CASES, step_example

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
B, L = 3, 37  # odd sizes
BACKENDS = ["triton", "cpu"]


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """The names of the value reads of any tensor, in order, while the test runs."""
    seen: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return seen


@pytest.fixture
def stubbed_launches(monkeypatch) -> list[str]:
    """Every Triton launch is recorded by name and not run."""
    launched: list[str] = []

    def stub(self, *args, grid, warmup=False, **kwargs):
        launched.append(getattr(self, "__name__", None) or self.fn.__name__)

    monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "run", stub)
    monkeypatch.setattr(triton.runtime.jit.JITFunction, "run", stub)
    return launched


def implementation(public, backend: str):
    if backend == "cpu" and not _cpu.built():
        pytest.skip("statetap._C (the cpu backend) is not built")
    if backend == "triton" and DEVICE.type != "cpu" and not torch.cuda.is_available():
        pytest.skip("the Triton wrappers need CUDA or TRITON_INTERPRET=1")
    return public.implementations[backend]


def device_of(backend: str) -> torch.device:
    return torch.device("cpu") if backend == "cpu" else DEVICE


def instrumentation(state_shape, device, length=L) -> dict:
    """Emission at 0, mid-sequence and L - 1 with an unused slot; an add injection with per-row
    scales; everything prebuilt, as a caller reusing it over many calls would hold it."""
    emit = torch.tensor([[0, length // 2, length - 1, -1]] * B)
    if length == 1:
        emit = torch.tensor([[0, -1], [-1, 0], [0, -1]])
    inject = torch.tensor([[length // 3]] * B) if length > 1 else torch.tensor([[0], [-1], [0]])
    emit_schedule = Schedule.build(emit, batch=B, length=length, device=device, name="emit_at")
    return dict(
        emit_at=emit_schedule,
        inject_at=Schedule.build(inject, batch=B, length=length, device=device, name="inject_at"),
        inject_value=torch.randn(state_shape, device=device),
        inject_scale=torch.rand(B, 1, device=device),
        states_out=torch.full((B, emit.shape[1], *state_shape), float("nan"), device=device),
        output_final_state=length > 1,
    )


@needs_kernel_device
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(CASES))
def test_an_instrumented_call_reads_no_device_value(op, backend, host_reads, stubbed_launches):
    case = CASES[op]
    run = implementation(case.public, backend)
    device = device_of(backend)
    inputs = case.make(B, L, device=device)
    state_shape = case.call("sequential", case.make(B, 2), output_final_state=True)
    state_shape = tuple(state_shape.final_state.shape[1:])
    arguments = instrumentation(state_shape, device)
    buffer = arguments["states_out"]
    host_reads.clear()
    out = run(**inputs, **arguments)
    assert host_reads == []
    assert out.states is buffer  # written in place, no new buffer
    assert torch.isnan(buffer[:, 3]).all()  # the unused slot: left as it was, no pass over it
    if backend == "triton":  # the used slots are the (stubbed) kernel's: not filled first
        assert torch.isnan(buffer[:, :3]).all() and stubbed_launches


@needs_kernel_device
def test_the_counter_sees_positions_checked_from_a_tensor(host_reads, stubbed_launches):
    """The counter works: positions given as a tensor are checked (on the host) in the call."""
    case = CASES["wkv6"]
    run = implementation(case.public, "triton")
    run(**case.make(B, L, device=DEVICE), emit_at=torch.tensor([0, L - 1]))
    assert host_reads


@needs_kernel_device
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", kernels.STEPS)
def test_a_decode_step_reads_no_device_value(step, backend, host_reads, stubbed_launches):
    run = implementation(getattr(kernels, step), backend)
    arguments = step_example(step, B, device_of(backend), instrumented=True)
    host_reads.clear()
    run(**arguments)
    assert host_reads == []


@needs_kernel_device
@pytest.mark.parametrize("step", kernels.STEPS)
def test_a_decode_step_without_instrumentation_reads_nothing(step, host_reads, stubbed_launches):
    run = implementation(getattr(kernels, step), "triton")
    arguments = step_example(step, B, DEVICE)
    host_reads.clear()
    run(**arguments)
    assert host_reads == [] and len(stubbed_launches) == 1


def test_a_pass_builds_one_schedule_that_every_layer_reuses(monkeypatch):
    """``Tap.run`` checks the positions once per pass; each layer's kernel call gets the same
    :class:`Schedule`, which the call then does not read (the tests above)."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    config = MambaConfig(
        vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=3, expand=2, conv_kernel=3
    )
    tap = Tap(MambaForCausalLM(config).eval())
    seen = []
    public = kernels.selective_scan
    backend = "cpu" if _cpu.built() else "torch"
    original = public.implementations[backend]

    def spy(*args, **kwargs):
        seen.append(kwargs.get("emit_at"))
        return original(*args, **kwargs)

    monkeypatch.setitem(public.implementations, backend, spy)
    ids = torch.randint(0, 50, (B, 11))
    result = tap.run(ids, emit=[Emit("ssm", layers="all", positions=[2, -1, 2])])
    assert len(seen) == 3 and all(s is seen[0] for s in seen)
    assert isinstance(seen[0], Schedule) and seen[0].positions.tolist() == [[2, 10, -1]] * B
    assert torch.equal(result.activations[("ssm", 0)][:, 0], result.activations[("ssm", 0)][:, 2])


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(CASES))
def test_no_sync_in_an_instrumented_call_on_cuda(op):
    """With CUDA: any device sync inside the call raises."""
    case = CASES[op]
    run = case.public.implementations["triton"]
    inputs = case.make(B, L, device="cuda")
    state_shape = tuple(run(**inputs, output_final_state=True).final_state.shape[1:])
    arguments = instrumentation(state_shape, torch.device("cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run(**inputs, **arguments)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("step", kernels.STEPS)
def test_no_sync_in_a_decode_step_on_cuda(step):
    run = getattr(kernels, step).implementations["triton"]
    arguments = step_example(step, B, "cuda", instrumented=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run(**arguments)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
