"""Random example inputs for every op, and how to slice them in time.

Each :class:`OpCase` draws fresh inputs for ``B`` rows of ``L`` tokens at small default
sizes (override any size by keyword), knows which inputs run along time and on which axis,
and calls each pure-torch form of the op.  :func:`step_example` draws one decode token of each
step.  The contract tests, ``statetap check`` and the benchmarks use these so that every op is
exercised the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import STEPS
from ._schedule import Schedule
from .delta_rule import delta_rule as public_delta_rule
from .delta_rule.launch import delta_rule_chunked
from .delta_rule.reference import delta_rule_sequential
from .selective_scan import selective_scan as public_selective_scan
from .selective_scan.reference import selective_scan
from .ssd import ssd as public_ssd
from .ssd.reference import ssd_chunked, ssd_sequential
from .wkv4 import wkv4 as public_wkv4
from .wkv4.reference import wkv4
from .wkv5 import wkv5 as public_wkv5
from .wkv5.reference import wkv5_chunked, wkv5_sequential
from .wkv6 import wkv6 as public_wkv6
from .wkv6.reference import wkv6_chunked, wkv6_sequential
from .wkv7 import wkv7 as public_wkv7
from .wkv7.reference import wkv7_chunked, wkv7_sequential


@dataclass(frozen=True)
class OpCase:
    """One op: its forms, an input generator and where its inputs and output run in time."""

    name: str
    public: Callable  # the dispatched op, ``statetap.kernels.<name>``
    forms: dict[str, Callable]  # "sequential" (the definition) / "chunked" -> pure torch
    make_inputs: Callable[..., dict]  # (B, L, dtype, device, **sizes) -> keyword inputs
    time_axes: dict[str, int]  # time-varying input -> its time axis
    y_time_axis: int = 1
    chunk_size: int = 4  # small chunk for the tests of the chunked form

    def make(self, batch: int, length: int, dtype=torch.float32, device="cpu", **sizes) -> dict:
        """Fresh random inputs for ``batch`` rows of ``length`` tokens (sizes by keyword)."""
        factory = dict(dtype=dtype, device=device)
        return self.make_inputs(batch, length, factory, **sizes)

    def slice(self, inputs: dict, start: int, end: int) -> dict:
        """The inputs restricted to tokens ``start .. end-1``."""
        out = dict(inputs)
        for name, axis in self.time_axes.items():
            out[name] = inputs[name].narrow(axis, start, end - start)
        return out

    def state_shape(self, inputs: dict) -> tuple[int, ...]:
        """The per-row state shape ``S`` of ``inputs`` (the sequential definition's final state
        after their first token, without its batch axis)."""
        first = self.call("sequential", self.slice(inputs, 0, 1), output_final_state=True)
        return tuple(first.final_state.shape[1:])

    def y_slice(self, y: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The output restricted to tokens ``start .. end-1``."""
        return y.narrow(self.y_time_axis, start, end - start)

    def call(self, form: str, inputs: dict, **instrumentation):
        """Run ``form`` ("public", "sequential" or "chunked") on keyword ``inputs``."""
        if form == "chunked":
            instrumentation.setdefault("chunk_size", self.chunk_size)
        fn = self.public if form == "public" else self.forms[form]
        return fn(**inputs, **instrumentation)


def _selective_scan(B, L, f, D=6, N=3, G=2):
    return dict(
        u=torch.randn(B, D, L, **f),
        delta=torch.randn(B, D, L, **f),
        A=-torch.exp(torch.randn(D, N, **f)),
        B=torch.randn(B, G, N, L, **f),
        C=torch.randn(B, G, N, L, **f),
        D=torch.randn(D, **f),
        z=torch.randn(B, D, L, **f),
        delta_bias=torch.randn(D, **f),
        delta_softplus=True,
    )


def _ssd(B, L, f, H=4, P=3, G=2, N=5):
    return dict(
        x=torch.randn(B, L, H, P, **f),
        dt=torch.randn(B, L, H, **f),
        A=-torch.exp(torch.randn(H, **f)),
        B=torch.randn(B, L, G, N, **f),
        C=torch.randn(B, L, G, N, **f),
        D=torch.randn(H, P, **f),
        z=torch.randn(B, L, H, P, **f),
        dt_bias=torch.randn(H, **f),
        dt_softplus=True,
    )


def _wkv4(B, L, f, C=7):
    return dict(
        w=-torch.exp(torch.randn(C, **f)),
        u=torch.randn(C, **f),
        k=torch.randn(B, L, C, **f),
        v=torch.randn(B, L, C, **f),
    )


def _rkv(B, L, f, H, K, V):
    return dict(
        r=torch.randn(B, L, H, K, **f),
        k=torch.randn(B, L, H, K, **f),
        v=torch.randn(B, L, H, V, **f),
    )


def _wkv5(B, L, f, H=2, K=4, V=3):
    return _rkv(B, L, f, H, K, V) | dict(
        w=F.logsigmoid(torch.randn(H, K, **f)), u=torch.randn(H, K, **f)
    )


def _wkv6(B, L, f, H=2, K=4, V=3):
    return _rkv(B, L, f, H, K, V) | dict(
        w=F.logsigmoid(torch.randn(B, L, H, K, **f)), u=torch.randn(H, K, **f)
    )


def _wkv7(B, L, f, H=2, K=4, V=3):
    kappa = F.normalize(torch.randn(B, L, H, K, **f), dim=-1)
    rate = torch.sigmoid(torch.randn(B, L, H, K, **f))
    return _rkv(B, L, f, H, K, V) | dict(
        w=-0.6065306597126334 * torch.sigmoid(torch.randn(B, L, H, K, **f)),
        a=-kappa,
        b=kappa * rate,
    )


def _delta_rule(B, L, f, HK=2, HV=4, K=5, V=3, channel_gate=False):
    # the models' gate: g = -exp(A_log) softplus(.) (Qwen3-Next, OLMo-hybrid: one per head;
    # Kimi Linear's KDA with channel_gate: one per key channel), beta = sigmoid(.)
    gate_shape = (B, L, HV, K) if channel_gate else (B, L, HV)
    return dict(
        query=torch.randn(B, L, HK, K, **f),
        key=torch.randn(B, L, HK, K, **f),
        value=torch.randn(B, L, HV, V, **f),
        g=-torch.exp(torch.randn(gate_shape[2:], **f)) * F.softplus(torch.randn(gate_shape, **f)),
        beta=torch.sigmoid(torch.randn(B, L, HV, **f)),
        use_qk_l2norm_in_kernel=True,
    )


_RWKV_TIME = dict(r=1, k=1, v=1)

CASES = {
    case.name: case
    for case in (
        OpCase(
            "selective_scan",
            public_selective_scan,
            {"sequential": selective_scan},
            _selective_scan,
            dict(u=2, delta=2, B=3, C=3, z=2),
            y_time_axis=2,
        ),
        OpCase(
            "ssd",
            public_ssd,
            {"sequential": ssd_sequential, "chunked": ssd_chunked},
            _ssd,
            dict(x=1, dt=1, B=1, C=1, z=1),
        ),
        OpCase("wkv4", public_wkv4, {"sequential": wkv4}, _wkv4, dict(k=1, v=1)),
        OpCase(
            "wkv5",
            public_wkv5,
            {"sequential": wkv5_sequential, "chunked": wkv5_chunked},
            _wkv5,
            _RWKV_TIME,
        ),
        OpCase(
            "wkv6",
            public_wkv6,
            {"sequential": wkv6_sequential, "chunked": wkv6_chunked},
            _wkv6,
            _RWKV_TIME | dict(w=1),
        ),
        OpCase(
            "wkv7",
            public_wkv7,
            {"sequential": wkv7_sequential, "chunked": wkv7_chunked},
            _wkv7,
            _RWKV_TIME | dict(w=1, a=1, b=1),
        ),
        OpCase(
            "delta_rule",
            public_delta_rule,
            {"sequential": delta_rule_sequential, "chunked": delta_rule_chunked},
            _delta_rule,
            dict(query=1, key=1, value=1, g=1, beta=1),
        ),
    )
}

OP_FORMS = [(name, form) for name, case in CASES.items() for form in case.forms]
CHUNKED_OPS = [name for name, case in CASES.items() if "chunked" in case.forms]


def rel_error(reference: torch.Tensor, value: torch.Tensor) -> float:
    """``||reference - value|| / ||reference||`` (flash-linear-attention's ratio)."""
    reference, value = reference.double(), value.double()
    return ((reference - value).norm() / reference.norm().clamp_min(1e-300)).item()


#: each decode step's per-token inputs, its op's time-varying ones (the rest of its arguments
#: stay the same from token to token: what :class:`~._prepared_step.PreparedStep` binds)
TOKEN_INPUTS = {
    f"{name}_step": tuple(case.time_axes) for name, case in CASES.items() if f"{name}_step" in STEPS
}


def step_example(
    step: str, batch: int, device="cpu", instrumented: bool = False, **sizes: int
) -> dict:
    """Keyword arguments of one decode token of ``step`` (a name in ``statetap.kernels.STEPS``):
    its op's :class:`OpCase` inputs for ``L = 1`` with the time axis taken out of the
    time-varying ones, and the zero float32 ``state``; sizes as the op's case takes them.

    ``instrumented``: also the step's instrumentation as a decode loop holds it across steps,
    built once: even rows emit and inject (an add, per-row scales as a tensor); the RWKV steps
    take prebuilt :class:`Schedule` objects and a ``states_out`` buffer ``[B, 2, *S]``, the
    Mamba steps an ``emit`` buffer and an ``inject_value``.
    """
    if step not in TOKEN_INPUTS:
        raise ValueError(f"step must be one of {tuple(TOKEN_INPUTS)}, got {step!r}")
    case = CASES[step.removesuffix("_step")]
    sequence = case.make(batch, 1, device=device, **sizes)
    inputs = {
        name: t.select(case.time_axes[name], 0) if name in case.time_axes else t
        for name, t in sequence.items()
    }
    state_shape = case.state_shape(sequence)
    f = dict(dtype=torch.float32, device=device)
    state = torch.zeros(batch, *state_shape, **f)
    if not instrumented:
        return inputs | dict(state=state)
    even = torch.arange(batch) % 2 == 0
    scale = torch.rand(batch, **f)
    if step in ("selective_scan_step", "ssd_step"):
        return inputs | dict(
            state=state,
            inject_value=torch.randn(state_shape, **f),
            inject_scale=torch.where(even.to(device), scale, 0.0),
            emit=torch.empty_like(state),
        )
    here = torch.where(even, 0, -1)[:, None]

    def schedule(positions, name):
        return Schedule.build(positions, batch=batch, length=1, device=device, name=name)

    return inputs | dict(
        state=state,
        emit_at=schedule(torch.cat([here, -1 - here], 1), "emit_at"),
        inject_at=schedule(here, "inject_at"),
        inject_value=torch.randn(state_shape, **f),
        inject_scale=scale[:, None],
        states_out=torch.zeros(batch, 2, *state_shape, **f),
    )
