"""``statetap check``: run every op through its dispatched backend against the definition.

For each op, fresh random float32 inputs go through the public op (whatever backend the
device selects: see ``STATETAP_BACKEND``) with emission at three positions and an add
injection swept over a per-row multiplier; the same call goes through the sequential
pure-torch definition in float64 on the CPU.  The table reports the relative error of the
output, the final state and the emitted states, and the wall time of the public call
(on CPU the pure-torch path; timings of Triton kernels under the interpreter mean nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from statetap.kernels import examples
from statetap.kernels._backend import choose_backend

TOLERANCE = 1e-4  # float32 inputs against the float64 definition


@dataclass
class CheckRow:
    op: str
    backend: str
    device: str
    y_error: float
    final_error: float
    states_error: float
    milliseconds: float

    @property
    def ok(self) -> bool:
        return max(self.y_error, self.final_error, self.states_error) <= TOLERANCE


def check_op(name: str, batch: int, length: int, device: torch.device) -> CheckRow:
    """Compare ``statetap.kernels.<name>`` on ``device`` with the float64 definition."""
    case = examples.CASES[name]
    inputs = case.make(batch, length, torch.float32, device)
    state = case.call("sequential", case.slice(inputs, 0, 1), output_final_state=True).final_state
    positions = sorted({0, length // 2, length - 1})
    instrumentation = dict(
        output_final_state=True,
        emit_at=torch.tensor(positions, device=device),
        inject_at=torch.tensor([length // 3], device=device),
        # positive additions: subtracting from RWKV-4's denominator can bring it near zero,
        # where y = numerator / denominator is too ill-conditioned for a float32 comparison
        inject_value=0.5 * torch.rand(1, 1, *state.shape[1:], device=device),
        inject_scale=torch.linspace(0.5, 2, batch, device=device),
    )

    def to_oracle(value):
        if isinstance(value, torch.Tensor):
            return value.cpu().double() if value.is_floating_point() else value.cpu()
        return value

    exact = case.call(
        "sequential",
        {k: to_oracle(v) for k, v in inputs.items()},
        **{k: to_oracle(v) for k, v in instrumentation.items()},
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = case.call("public", inputs, **instrumentation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) * 1e3
    return CheckRow(
        op=name,
        backend=choose_backend(name, device, case.public.implementations),
        device=str(device),
        y_error=examples.rel_error(exact.y, out.y.cpu()),
        final_error=examples.rel_error(exact.final_state, out.final_state.cpu()),
        states_error=examples.rel_error(exact.states, out.states.cpu()),
        milliseconds=elapsed,
    )


def format_table(rows: list[CheckRow]) -> str:
    """A plain-text table of check rows."""
    header = ("op", "backend", "device", "y rel.err", "final rel.err", "emitted rel.err", "ms", "")
    lines = [header] + [
        (
            r.op,
            r.backend,
            r.device,
            f"{r.y_error:.1e}",
            f"{r.final_error:.1e}",
            f"{r.states_error:.1e}",
            f"{r.milliseconds:.1f}",
            "ok" if r.ok else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
    )
