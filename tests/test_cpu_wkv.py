"""RWKV-4/5/6/7 C++ kernels (the ``cpu`` backend, widest ISA and the scalar path) and their decode
steps: against the float64 definitions and against the peers' own references -- fla's
``naive_recurrent_rwkv6`` (RWKV-6; RWKV-5 is RWKV-6 with a constant decay), fla's
``dplr_recurrence`` (RWKV-7: q=r, gk=w, alpha=a, beta=b) and transformers'
``rwkv_linear_attention_cpu`` (RWKV-4, the same (num, den, max) triple).

Emission is checked as the peer's final state on the prefix ``0..t``; injection as the peer
continuing from its edited prefix state.  Every output the wrappers allocate starts as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from _triton_mamba import BACKENDS, implementation, poisoned  # noqa: F401  (fixture)
from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6
from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

from statetap import kernels
from statetap.kernels.examples import rel_error
from statetap.kernels.wkv4.reference import wkv4 as wkv4_definition
from statetap.kernels.wkv5.reference import wkv5_sequential
from statetap.kernels.wkv6.reference import CHUNK_SIZE, wkv6_sequential
from statetap.kernels.wkv7.reference import wkv7_sequential

CPU_BACKENDS = BACKENDS[1:]  # "cpu", "cpu-scalar"
Y_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
STATE_TOLERANCE = 1e-5  # the state is float32 whatever the input dtype


def heads_layout(x: torch.Tensor) -> torch.Tensor:
    """``[B, L, H, K]`` -> fla's ``[B, H, L, K]``."""
    return x.transpose(1, 2).contiguous()


@dataclass
class Op:
    """One WKV op under test: how to build its inputs, run its definition and its peer."""

    name: str
    public: Callable  # the dispatching op
    definition: Callable  # float64 sequential definition, same signature
    names: tuple[str, ...]  # positional inputs, in call order
    timed: tuple[str, ...]  # inputs with a time axis (dim 1)
    make: Callable  # (B, L, dims, dtype) -> {name: tensor}
    state_shape: Callable  # inputs -> [*S]
    scale: float | None  # passed after the inputs (None: the op takes none)
    peer: Callable  # (inputs, initial [B, *S] or None) -> (y like ours, final [B, *S])

    def args(self, inputs: dict) -> list:
        args = [inputs[n] for n in self.names]
        return args if self.scale is None else [*args, self.scale]

    def slice(self, inputs: dict, start: int, end: int) -> dict:
        return {n: x[:, start:end] if n in self.timed else x for n, x in inputs.items()}


def make_wkv4(B, L, dims, dtype):
    C = dims[0]
    return dict(
        w=-(torch.rand(C) + 0.01) * 2,
        u=torch.randn(C),
        k=torch.randn(B, L, C).to(dtype),
        v=torch.randn(B, L, C).to(dtype),
    )


def make_rwkv6(B, L, dims, dtype, static=False):
    H, K, V = dims
    w = F.logsigmoid(torch.randn(H, K) if static else torch.randn(B, L, H, K))
    return dict(
        r=torch.randn(B, L, H, K).to(dtype),
        k=torch.randn(B, L, H, K).to(dtype),
        v=torch.randn(B, L, H, V).to(dtype),
        w=w.to(dtype),
        u=torch.randn(H, K).to(dtype),
    )


def make_wkv7(B, L, dims, dtype):
    H, K, V = dims
    kappa = F.normalize(torch.randn(B, L, H, K), dim=-1)
    return dict(
        r=torch.randn(B, L, H, K).to(dtype),
        w=(-0.6 * torch.rand(B, L, H, K)).to(dtype),
        k=torch.randn(B, L, H, K).to(dtype),
        v=torch.randn(B, L, H, V).to(dtype),
        a=(-kappa).to(dtype),
        b=(0.5 * kappa).to(dtype),
    )


def peer_wkv4(x, initial):
    """transformers' RWKV CPU loop: time_decay is log(-w); its state is our (aa, bb, pp)."""
    state = None if initial is None else list(initial.unbind(1))
    if state is None:
        state = [torch.zeros_like(x["k"][:, 0]), torch.zeros_like(x["k"][:, 0])]
        state.append(torch.full_like(x["k"][:, 0], -1e38))
    y, state = rwkv_linear_attention_cpu(
        torch.log(-x["w"]), x["u"], x["k"], x["v"], state=state, return_state=True
    )
    return y, torch.stack(state, 1)


def peer_rwkv6(scale, static=False):
    def run(x, initial):
        w = x["w"].expand(x["r"].shape) if static else x["w"]
        y, final = naive_recurrent_rwkv6(
            *(heads_layout(t) for t in (x["r"], x["k"], x["v"], w)),
            x["u"],
            scale=scale,
            initial_state=initial,
            output_final_state=True,
        )
        return y.transpose(1, 2), final

    return run


def peer_wkv7(x, initial):
    """fla's DPLR recurrence (it scales q by K ** -0.5: the op runs with that scale)."""
    y, final = dplr_recurrence(
        *(heads_layout(x[n]) for n in ("r", "k", "v", "a", "b", "w")),
        initial_state=initial,
        output_final_state=True,
    )
    return y.transpose(1, 2), final


SCALE = 0.5
OPS = {
    "wkv4": Op(
        "wkv4",
        kernels.wkv4,
        wkv4_definition,
        ("w", "u", "k", "v"),
        ("k", "v"),
        make_wkv4,
        lambda x: (3, x["k"].shape[-1]),
        None,
        peer_wkv4,
    ),
    "wkv5": Op(
        "wkv5",
        kernels.wkv5,
        wkv5_sequential,
        ("r", "k", "v", "w", "u"),
        ("r", "k", "v"),
        lambda *a: make_rwkv6(*a, static=True),
        lambda x: (*x["u"].shape, x["v"].shape[-1]),
        SCALE,
        peer_rwkv6(SCALE, static=True),
    ),
    "wkv6": Op(
        "wkv6",
        kernels.wkv6,
        wkv6_sequential,
        ("r", "k", "v", "w", "u"),
        ("r", "k", "v", "w"),
        make_rwkv6,
        lambda x: (*x["u"].shape, x["v"].shape[-1]),
        SCALE,
        peer_rwkv6(SCALE),
    ),
    "wkv7": Op(
        "wkv7",
        kernels.wkv7,
        wkv7_sequential,
        ("r", "w", "k", "v", "a", "b"),
        ("r", "w", "k", "v", "a", "b"),
        make_wkv7,
        lambda x: (*x["r"].shape[2:], x["v"].shape[-1]),
        None,  # set per case: K ** -0.5, as the peer scales
        peer_wkv7,
    ),
}
#: (B, L, dims): dims = (C,) for RWKV-4, (H, K, V) otherwise; odd sizes, L around the
#: reference's chunk and the Triton chunk (64)
SIZES = [
    (1, 1, (1, 4, 4)),
    (2, 9, (3, 5, 7)),
    (3, 2 * CHUNK_SIZE + 1, (2, 16, 33)),
    (2, 65, (1, 64, 64)),
]


def with_scale(op: Op, inputs: dict) -> Op:
    """RWKV-7 runs with the peer's scale ``K ** -0.5``."""
    if op.name != "wkv7":
        return op
    return Op(**{**op.__dict__, "scale": inputs["r"].shape[-1] ** -0.5})


def build(op_name: str, size, dtype=torch.float32):
    B, L, dims = size
    op = OPS[op_name]
    dims = (dims[1] * dims[2] + 1,) if op_name == "wkv4" else dims  # C: several 64-blocks
    inputs = op.make(B, L, dims, dtype)
    return with_scale(op, inputs), inputs


def double(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def emit_schedule(L: int, B: int) -> torch.Tensor:
    """Emission at 0, the chunk edges of the reference and of Triton, L-1, and an unused slot;
    each row in its own order."""
    times = sorted({t for t in (0, CHUNK_SIZE - 1, CHUNK_SIZE, 63, 64, L - 1) if t < L})
    rows = [torch.tensor([*times, -1])[torch.randperm(len(times) + 1)] for _ in range(B)]
    return torch.stack(rows)


def inject_schedule(L: int, B: int) -> torch.Tensor:
    """Row b injects at L // 2 (even rows) or L - 2 (odd rows), the other slot unused."""
    rows = [[L // 2, -1] if b % 2 == 0 else [-1, max(L - 2, 0)] for b in range(B)]
    return torch.tensor(rows)


def instrumentation(op: Op, inputs: dict, mode: str) -> dict:
    B, L = inputs["k"].shape[:2]
    shape = op.state_shape(inputs)
    initial, value, scale = torch.randn(B, *shape), torch.randn(B, 2, *shape), torch.randn(B)
    if op.name == "wkv4":  # keep the denominators bb positive
        initial[:, :2], value, scale = initial[:, :2].abs(), value.abs(), scale.abs()
    return dict(
        initial_state=initial,
        output_final_state=True,
        emit_at=emit_schedule(L, B),
        inject_at=inject_schedule(L, B),
        inject_value=value,
        inject_mode=mode,
        inject_scale=scale if mode == "add" else None,
    )


def assert_close(reference, out, dtype=torch.float32):
    for name in ("y", "final_state", "states"):
        want, got = getattr(reference, name), getattr(out, name)
        assert (want is None) == (got is None), name
        if want is None:
            continue
        assert want.shape == got.shape, (name, want.shape, got.shape)
        assert not got.isnan().any(), f"{name}: unwritten (NaN) elements"
        tol = Y_TOLERANCE[dtype] if name == "y" else STATE_TOLERANCE
        err = rel_error(want, got)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
    if out.final_state is not None:
        assert out.final_state.dtype == torch.float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"B{s[0]}-L{s[1]}-{'x'.join(map(str, s[2]))}")
@pytest.mark.parametrize("op_name", list(OPS))
def test_matches_definition(op_name, size, mode, backend, poisoned, monkeypatch):  # noqa: F811
    op, inputs = build(op_name, size)
    instr = instrumentation(op, inputs, mode)
    run = implementation(op.public, backend, monkeypatch)
    out = run(*op.args(inputs), **instr)
    reference = op.definition(
        *(double(a) for a in op.args(inputs)), **{n: double(x) for n, x in instr.items()}
    )
    assert_close(reference, out)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op_name", list(OPS))
def test_half_inputs_float32_state(op_name, dtype, backend, poisoned, monkeypatch):  # noqa: F811
    op, inputs = build(op_name, (2, 19, (2, 16, 16)), dtype)
    instr = instrumentation(op, inputs, "add")
    out = implementation(op.public, backend, monkeypatch)(*op.args(inputs), **instr)
    assert out.y.dtype == dtype and out.states.dtype == torch.float32
    reference = op.definition(
        *(double(a) for a in op.args(inputs)), **{n: double(x) for n, x in instr.items()}
    )
    assert_close(reference, out, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_empty_instrumentation_is_bit_identical(op_name, backend, monkeypatch):
    op, inputs = build(op_name, (3, 21, (2, 8, 24)))
    run = implementation(op.public, backend, monkeypatch)
    plain = run(*op.args(inputs))
    B = inputs["k"].shape[0]
    unused = run(
        *op.args(inputs),
        emit_at=torch.full((B, 2), -1),
        inject_at=torch.full((B, 1), -1),
        inject_value=torch.ones(op.state_shape(inputs)),
        output_final_state=True,
    )
    assert torch.equal(plain.y, unused.y)
    assert not unused.states.any()  # unused slots are zeros


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_inject_scale_sweep_is_one_run_per_multiplier(op_name, backend, monkeypatch):
    """inject_scale [B] over B copies of one row == B runs with a scalar multiplier each."""
    op, inputs = build(op_name, (1, 13, (2, 8, 8)))
    scales = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])
    batch = {
        n: x.expand(len(scales), *x.shape[1:]) if n in op.timed else x for n, x in inputs.items()
    }
    value = torch.randn(op.state_shape(inputs)).abs()
    run = implementation(op.public, backend, monkeypatch)
    at = torch.tensor([6])
    swept = run(*op.args(batch), inject_at=at, inject_value=value, inject_scale=scales)
    for row, scale in enumerate(scales.tolist()):
        single = run(*op.args(inputs), inject_at=at, inject_value=value, inject_scale=scale)
        assert rel_error(single.y[0], swept.y[row]) <= 1e-6


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("size", SIZES[1:], ids=lambda s: f"B{s[0]}-L{s[1]}")
@pytest.mark.parametrize("op_name", list(OPS))
def test_matches_peer_with_emission_and_injection(op_name, size, backend, monkeypatch):
    """y and final state == the peer's; emission at t == the peer's final state on 0..t;
    injection at t == the peer continuing from its own prefix state, edited."""
    op, inputs = build(op_name, size)
    B, L = inputs["k"].shape[:2]
    t = L // 2
    run = implementation(op.public, backend, monkeypatch)
    peer_y, peer_final = op.peer(inputs, None)
    plain = run(*op.args(inputs), output_final_state=True, emit_at=torch.tensor([0, t]))
    assert rel_error(peer_y, plain.y) <= 1e-5
    assert rel_error(peer_final, plain.final_state) <= 1e-5
    for slot, time in enumerate((0, t)):
        _, prefix = op.peer(op.slice(inputs, 0, time + 1), None)
        assert rel_error(prefix, plain.states[:, slot]) <= 1e-5

    _, prefix = op.peer(op.slice(inputs, 0, t + 1), None)
    value = torch.randn(B, *op.state_shape(inputs)).abs()
    edited = prefix + 0.7 * value
    rest_y, rest_final = op.peer(op.slice(inputs, t + 1, L), edited)
    steered = run(
        *op.args(inputs),
        inject_at=torch.tensor([t]),
        inject_value=value[:, None],
        inject_scale=0.7,
        output_final_state=True,
    )
    if L > t + 1:
        assert rel_error(rest_y, steered.y[:, t + 1 :]) <= 1e-5
    assert rel_error(rest_final, steered.final_state) <= 1e-5
    assert torch.equal(steered.y[:, : t + 1], plain.y[:, : t + 1])  # y_t precedes the edit


STEPS = {"wkv4": "wkv4_step", "wkv6": "wkv6_step", "wkv7": "wkv7_step"}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("op_name", list(STEPS))
def test_decode_step_in_place(op_name, mode, backend, poisoned, monkeypatch):  # noqa: F811
    """Three rows: inject into rows 0 and 2, emit rows 0 and 1 (-1 slots elsewhere); the state
    is updated in place and equals the reference step's; y equals the peer's one-token run."""
    op, inputs = build(op_name, (3, 1, (2, 8, 12)))
    step = implementation(getattr(kernels, STEPS[op_name]), backend, monkeypatch)
    reference = getattr(kernels, STEPS[op_name]).implementations["torch"]
    shape = op.state_shape(inputs)
    state = torch.randn(3, *shape)
    if op_name == "wkv4":
        state[:, :2] = state[:, :2].abs()
    one = {n: x[:, 0] if n in op.timed else x for n, x in inputs.items()}
    instr = dict(
        emit_at=torch.tensor([[0], [0], [-1]]),
        inject_at=torch.tensor([[0], [-1], [0]]),
        inject_value=torch.randn(3, 1, *shape).abs(),
        inject_mode=mode,
        inject_scale=torch.tensor([0.5, 1.0, -1.5]) if mode == "add" else None,
    )
    args = op.args(one)
    peer_y, _ = op.peer(inputs, state.clone())
    expected_state = state.clone()
    expected = reference(*args[: len(op.names)], expected_state, *args[len(op.names) :], **instr)
    kept = state
    out = step(*args[: len(op.names)], state, *args[len(op.names) :], **instr)
    assert out.final_state is kept
    assert rel_error(expected_state, state) <= STATE_TOLERANCE
    assert rel_error(expected.states, out.states) <= STATE_TOLERANCE
    assert not out.states[2].any()
    assert rel_error(peer_y[:, 0], out.y) <= 1e-5
    assert rel_error(expected.y, out.y) <= 1e-5


def test_scalar_path_is_the_same_recurrence(monkeypatch):
    """The scalar fallback (STATETAP_CPU_ISA=scalar) and the vector path agree to rounding,
    and the scalar path really runs (cpu_isa reports it)."""
    from statetap.kernels import _cpu

    if not _cpu.built():
        pytest.skip("statetap._C is not built")
    op, inputs = build("wkv6", (2, 33, (2, 64, 64)))
    wide = kernels.wkv6.implementations["cpu"](*op.args(inputs), output_final_state=True)
    monkeypatch.setenv(_cpu.ISA_ENV, "scalar")
    assert _cpu.isa() == "scalar"
    scalar = kernels.wkv6.implementations["cpu"](*op.args(inputs), output_final_state=True)
    assert rel_error(wide.y, scalar.y) <= 1e-5
    assert rel_error(wide.final_state, scalar.final_state) <= 1e-5
    assert math.isfinite(float(scalar.y.sum()))
