"""What instrumentation costs: a model's plain forward against ``Tap.run`` with typical requests,
timed side by side on one batch and one device.

The variants run interleaved (plain, nothing requested, emissions, injections, then again), so
drift in the machine's speed hits them alike; each figure is the median over the repeats.  On
a CPU statetap runs its C++ kernels (``statetap._C``) where built, else its torch reference
paths: the figures say what instrumentation costs there, not how fast the Triton kernels are
(those need a GPU: ``benchmarks/``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from statetap.tap import Emit, Inject, Tap


@dataclass(frozen=True)
class CostRow:
    """One variant: its median wall time in ms and its ratio to the plain forward."""

    variant: str
    description: str
    ms: float
    ratio: float


def _variants(tap: Tap) -> dict[str, tuple[str, dict]]:
    """name -> (description, ``Tap.run`` keyword arguments)."""
    n_layers = tap.adapter.n_layers
    middle = tap.state_layers[len(tap.state_layers) // 2]  # a layer with a state (hybrids)
    state_site = tap.adapter.state_sites[0]
    return {
        "nothing": ("statetap attached, nothing requested", {}),
        "emit residual": (
            f"residual stream of all {n_layers} layers at the last token",
            {"emit": [Emit("residual")]},
        ),
        "emit state": (
            f"every state component of all {len(tap.state_layers)} layers with a state at the "
            "last token",
            {"emit": [Emit("state")]},
        ),
        "emit all positions": (
            f"residual stream of all {n_layers} layers at every token",
            {"emit": [Emit("residual", positions="all")]},
        ),
        "inject": (
            f"add to the residual stream and to {state_site!r} of layer {middle} at the last token",
            {
                "inject": [
                    Inject("residual", middle, torch.zeros(tap.site_shape("residual"))),
                    Inject(state_site, middle, torch.zeros(tap.site_shape(state_site))),
                ]
            },
        ),
    }


def _elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


@torch.no_grad()
def instrumentation_cost(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    repeats: int = 10,
    warmup: int = 2,
) -> list[CostRow]:
    """Median times of the plain forward and of each instrumented variant on ``input_ids``
    ``[B, L]`` (on the model's device).  The first row is the plain forward (ratio 1)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    tap = Tap(model)
    device = tap.device
    input_ids = input_ids.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    calls = {
        "plain": (
            "the model's own forward",
            lambda: tap.adapter.forward(input_ids, mask, None, False),
        )
    }
    for name, (description, requests) in _variants(tap).items():
        calls[name] = (
            description,
            lambda requests=requests: tap.run(input_ids, attention_mask=mask, **requests),
        )
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, (_, call) in calls.items():
            elapsed = _elapsed_ms(call, device)
            if round_ >= warmup:
                times[name].append(elapsed)
    plain = statistics.median(times["plain"])
    return [
        CostRow(
            name,
            description,
            statistics.median(times[name]),
            statistics.median(times[name]) / plain,
        )
        for name, (description, _) in calls.items()
    ]


def format_cost_table(rows: list[CostRow]) -> str:
    """A fixed-width text table of :func:`instrumentation_cost`'s rows."""
    lines = [f"{'variant':<20} {'ms':>9} {'x plain':>8}  what"]
    lines += [f"{r.variant:<20} {r.ms:>9.2f} {r.ratio:>8.2f}  {r.description}" for r in rows]
    return "\n".join(lines)
