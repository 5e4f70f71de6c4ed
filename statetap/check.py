"""``statetap check``: every op and decode step, through its dispatched backend, against references.

For each op, fresh random float32 inputs go through the public op (whatever backend the
device selects: see ``STATETAP_BACKEND``) from a random initial state, with emission at three
positions and an add injection swept over a per-row multiplier.  The same call goes through

* the sequential pure-torch definition in float64 on the CPU (every op), and
* an independent implementation we did not write (:data:`statetap.check_references.PEERS`:
  transformers' torch paths for ``selective_scan`` and ``wkv4``, whose only CPU backend *is*
  the definition, so that the first comparison cannot see a bug in the definition itself, and
  for ``delta_rule``, whose backends run another op's kernels).

Each decode step of ``statetap.kernels.STEPS`` runs token by token over the same kind of inputs,
emitting and injecting at the same tokens, against its sequence op's float64 definition.

The table has one row per (op or step, reference) with the relative error of the output, the
final state and the emitted states, and the wall time of the public call (on CPU the pure-torch
path; timings of Triton kernels under the interpreter mean nothing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from statetap import kernels
from statetap.adapters.upstream import package_version, tested_range
from statetap.check_references import PEERS, Probe, run_by_token
from statetap.kernels import OPS, STEPS, ScanOutput, examples
from statetap.kernels._backend import choose_backend

TOLERANCE = 1e-4  # float32 inputs against a float64 reference
DEFINITION = "float64 definition"


@dataclass
class CheckRow:
    """One line of the table: an op or step compared with one reference (relative errors)."""

    op: str
    backend: str
    device: str
    reference: str
    y_error: float
    final_error: float
    states_error: float
    milliseconds: float
    error: str = ""  # why this comparison could not run (then the errors are NaN)

    @property
    def ok(self) -> bool:
        return (
            not self.error and max(self.y_error, self.final_error, self.states_error) <= TOLERANCE
        )


class StepStyle(NamedTuple):
    """How a decode step takes its one-token emission and injection, and returns the state."""

    arguments: Callable[[Probe, bool, bool], dict]  # (probe, inject?, emit?) -> keywords
    emitted: Callable[[tuple], torch.Tensor]  # the step's output -> emitted [B, *S]


def _mamba_step_arguments(probe: Probe, inject: bool, emit: bool) -> dict:
    injection = dict(inject_value=probe.value, inject_scale=probe.scale) if inject else {}
    return dict(emit=emit, **injection)


def _rwkv_step_arguments(probe: Probe, inject: bool, emit: bool) -> dict:
    here = torch.zeros(1, dtype=torch.long, device=probe.value.device)  # this token, L = 1
    arguments = dict(emit_at=here) if emit else {}
    if inject:
        value = probe.value[None, None]
        arguments.update(inject_at=here, inject_value=value, inject_scale=probe.scale)
    return arguments


MAMBA_STEP = StepStyle(_mamba_step_arguments, lambda out: out.state)
RWKV_STEP = StepStyle(_rwkv_step_arguments, lambda out: out.states[:, 0])

#: decode step -> (the sequence op whose definition it is checked against, its calling style);
#: RWKV-5 decodes with wkv6_step
STEP_OPS = {
    "selective_scan_step": ("selective_scan", MAMBA_STEP),
    "ssd_step": ("ssd", MAMBA_STEP),
    "wkv4_step": ("wkv4", RWKV_STEP),
    "wkv6_step": ("wkv6", RWKV_STEP),
    "wkv7_step": ("wkv7", RWKV_STEP),
    "delta_rule_step": ("delta_rule", RWKV_STEP),
}


def make_probe(case: examples.OpCase, batch: int, length: int, device: torch.device) -> Probe:
    """Emission at tokens ``0, L // 2, L - 1`` and an add injection after ``L // 3`` scaled by
    ``linspace(0.5, 2, B)``, from a random state of the op (its state after three random tokens).
    """
    warm_up = case.make(batch, 3, torch.float32, device)
    initial = case.call("sequential", warm_up, output_final_state=True).final_state
    return Probe(
        initial_state=initial,
        emit_at=tuple(sorted({0, length // 2, length - 1})),
        inject_at=length // 3,
        # positive additions: subtracting from RWKV-4's denominator can bring it near zero,
        # where y = numerator / denominator is too ill-conditioned for a float32 comparison
        value=0.5 * torch.rand(initial.shape[1:], device=device),
        scale=torch.linspace(0.5, 2, batch, device=device),
    )


def _float64_cpu(inputs: dict) -> dict:
    def convert(value):
        if not isinstance(value, torch.Tensor):
            return value
        return value.cpu().double() if value.is_floating_point() else value.cpu()

    return {name: convert(value) for name, value in inputs.items()}


def _timed(device: torch.device, run: Callable[[], ScanOutput]) -> tuple[ScanOutput, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1e3


def _row(name, backend, device, reference, exact: ScanOutput, out: ScanOutput, ms) -> CheckRow:
    return CheckRow(
        op=name,
        backend=backend,
        device=str(device),
        reference=reference,
        y_error=examples.rel_error(exact.y, out.y.cpu()),
        final_error=examples.rel_error(exact.final_state, out.final_state.cpu()),
        states_error=examples.rel_error(exact.states, out.states.cpu()),
        milliseconds=ms,
    )


def check_op(name: str, batch: int, length: int, device: torch.device) -> list[CheckRow]:
    """Compare ``statetap.kernels.<name>`` on ``device`` (``batch`` rows of ``length`` tokens)
    with the float64 definition and, where :data:`PEERS` has one, an independent implementation.

    Returns one row per reference.
    """
    case = examples.CASES[name]
    inputs = case.make(batch, length, torch.float32, device)
    probe = make_probe(case, batch, length, device)
    out, ms = _timed(device, lambda: case.call("public", inputs, **probe.instrumentation()))
    exact_inputs, exact_probe = _float64_cpu(inputs), probe.to("cpu", torch.float64)
    exact = case.call("sequential", exact_inputs, **exact_probe.instrumentation())
    backend = choose_backend(name, device, case.public.implementations)
    rows = [_row(name, backend, device, DEFINITION, exact, out, ms)]
    if name in PEERS:
        peer = PEERS[name]
        try:
            reference = peer.run(case, exact_inputs, length, exact_probe)
        except Exception as error:  # the peer's code changed: say so, check the other ops
            nan = float("nan")
            rows.append(
                CheckRow(
                    name,
                    backend,
                    str(device),
                    peer.label,
                    nan,
                    nan,
                    nan,
                    ms,
                    error=_peer_error(error),
                )
            )
        else:
            rows.append(_row(name, backend, device, peer.label, reference, out, ms))
    return rows


def _peer_error(error: Exception) -> str:
    """Why a peer could not run, with the transformers version and the tested range."""
    return (
        f"transformers {package_version('transformers')} ({tested_range()} tested): "
        f"{type(error).__name__}: {error}"
    )


def describe_peers(names) -> list[str]:
    """For each op of ``names`` with a peer: ``"op: <the route to the torch function>"``, or
    why the peer cannot be resolved."""
    lines = []
    for name in names:
        if name in PEERS:
            try:
                lines.append(f"{name}: {PEERS[name].resolve().route}")
            except RuntimeError as error:
                lines.append(f"{name}: {error}")
    return lines


def check_step(name: str, batch: int, length: int, device: torch.device) -> CheckRow:
    """Run the decode step ``statetap.kernels.<name>`` on ``device`` token by token over
    ``batch`` rows of ``length`` tokens, emitting and injecting as :func:`make_probe` says, and
    compare ``y [B, L, ...]``, the emitted states and the final state with the float64 definition
    of its sequence op (:data:`STEP_OPS`)."""
    op, style = STEP_OPS[name]
    case = examples.CASES[op]
    step = getattr(kernels, name)
    inputs = case.make(batch, length, torch.float32, device)
    probe = make_probe(case, batch, length, device)

    def advance(state, token, inject, emit):
        out = step(**token, state=state, **style.arguments(probe, inject, emit))
        return out.y, style.emitted(out) if emit else None

    out, ms = _timed(device, lambda: run_by_token(advance, case, inputs, length, probe))
    exact = case.call(
        "sequential", _float64_cpu(inputs), **probe.to("cpu", torch.float64).instrumentation()
    )
    backend = choose_backend(name, device, step.implementations)
    return _row(name, backend, device, DEFINITION, exact, out, ms)


def check(name: str, batch: int, length: int, device: torch.device) -> list[CheckRow]:
    """The rows of one op of ``statetap.kernels.OPS`` or one step of ``STEPS`` (``name``)."""
    if name in STEPS:
        return [check_step(name, batch, length, device)]
    if name in OPS:
        return check_op(name, batch, length, device)
    raise ValueError(f"name must be one of the ops {OPS} or steps {STEPS}, got {name!r}")


def format_table(rows: list[CheckRow]) -> str:
    """A plain-text table of check rows."""
    header = (
        "op",
        "backend",
        "device",
        "reference",
        "y rel.err",
        "final rel.err",
        "emitted rel.err",
        "ms",
        "",
    )
    lines = [header] + [
        (
            r.op,
            r.backend,
            r.device,
            r.reference,
            f"{r.y_error:.1e}",
            f"{r.final_error:.1e}",
            f"{r.states_error:.1e}",
            f"{r.milliseconds:.1f}",
            "ok" if r.ok else ("ERROR" if r.error else "FAIL"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
    )
