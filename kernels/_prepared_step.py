"""A decode step bound to everything but its token: :class:`PreparedStep`.

In a decode loop a layer calls its step once per token with the same weights, state,
instrumentation and shapes; only the token's inputs change.  The first call of a
:class:`PreparedStep` runs the public step (every check, the Triton launch) and records that
launch; every later call checks only that each token input has the first call's shape, strides,
dtype and device, allocates the output and relaunches the same kernel with the new pointers.
What a call costs the host is then a few attribute reads and the launch itself, and it neither
reads a device value nor allocates anything but ``y`` (a CUDA graph captures it as well).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton.runtime.interpreter
import triton.runtime.jit

from ._contract import is_exact_oracle

#: the launch entry points a step's ``kernel[grid](...)`` reaches, compiled and interpreted
_LAUNCHERS = (triton.runtime.jit.JITFunction, triton.runtime.interpreter.InterpretedFunction)


@dataclass
class _Launch:
    """The recorded launch: the kernel, its positional arguments, grid and keywords."""

    kernel: Any
    args: list
    grid: Any
    kwargs: dict


@dataclass
class _Plan:
    """What the first call left for the later ones."""

    launch: _Launch
    inputs: dict[str, tuple[tuple[int, ...], tuple]]  # name -> (argument indices, layout)
    y_indices: tuple[int, ...]  # where the output goes (also as the filler of unused pointers)
    first: Any  # the first call's result; later results replace its ``y``


def _layout(t: torch.Tensor) -> tuple:
    """What a token input must keep from call to call (a new ``requires_grad`` too: the first
    call chose the forward-only kernel)."""
    return t.shape, t.stride(), t.dtype, t.device, t.requires_grad


class PreparedStep:
    """A decode step with its per-layer arguments bound, checked once, relaunched per token.

    Args:
        step: a decode step of ``statetap.kernels.STEPS`` (the public function, e.g.
            ``kernels.wkv6_step``, or its ``triton`` implementation).
        bound: every argument that stays the same from token to token, by keyword: weights
            (``u``; ``A``, ``D``, ...), the ``state`` updated in place, ``scale``, and the
            instrumentation (``emit_at`` / ``inject_at`` as :class:`~._schedule.Schedule`,
            ``inject_value``, ``inject_scale``, and a ``states_out`` (RWKV) or ``emit`` (Mamba)
            buffer for emitted states, which each call overwrites).

    Call it with the token's inputs by keyword (``step(r=r, k=k, v=v, w=w)``); it returns what
    the step returns.  Every call must pass the same names with the first call's shapes,
    strides, dtypes and devices (ValueError otherwise).  Tensors on the CPU run the step's
    other backends call by call; float64 tensors (the exact oracle) are refused.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)::

        step = PreparedStep(kernels.wkv6_step, u=u, state=state)
        for r, k, v, w in tokens:
            y = step(r=r, k=k, v=v, w=w).y
    """

    def __init__(self, step: Callable, **bound: Any) -> None:
        if not callable(step):
            raise TypeError(f"step must be a decode step function, got {type(step).__name__}")
        if bound.get("emit") is True or ("emit_at" in bound and "states_out" not in bound):
            raise ValueError(
                "a prepared step writes emitted states into a buffer the caller holds: pass "
                "states_out= (RWKV steps) or emit=<buffer> (Mamba steps); each call overwrites it"
            )
        self.step = step
        self.bound = bound
        self._plan: _Plan | None = None
        self._replays = True  # False once a call ran another backend: nothing to replay

    def __call__(self, **token: torch.Tensor) -> Any:
        plan = self._plan
        if plan is None:
            if not self._replays:
                return self.step(**self.bound, **token)
            return self._first(token)
        if token.keys() != plan.inputs.keys():
            raise TypeError(
                f"this prepared step takes the token inputs {sorted(plan.inputs)}, got "
                f"{sorted(token)}"
            )
        launch = plan.launch
        args = launch.args.copy()
        for name, value in token.items():
            indices, layout = plan.inputs[name]
            if not isinstance(value, torch.Tensor) or _layout(value) != layout:
                got = _layout(value) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{name} must have the first call's shape, strides, dtype and device "
                    f"{layout}, got {got}"
                )
            for index in indices:
                args[index] = value
        y = torch.empty_like(plan.first.y)
        for index in plan.y_indices:
            args[index] = y
        launch.kernel.run(*args, grid=launch.grid, warmup=False, **launch.kwargs)
        return type(plan.first)(y, *plan.first[1:])

    def _first(self, token: dict) -> Any:
        if is_exact_oracle(*token.values(), *self.bound.values()):
            raise ValueError(
                "a prepared step runs the Triton kernel; float64 inputs (the exact oracle) run "
                "the reference: call the step itself"
            )
        launches: list[_Launch] = []
        originals = [launcher.run for launcher in _LAUNCHERS]

        def recording(original):
            def run(kernel, *args, grid, warmup, **kwargs):
                launches.append(_Launch(kernel, list(args), grid, kwargs))
                return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)

            return run

        for launcher, original in zip(_LAUNCHERS, originals, strict=True):
            launcher.run = recording(original)
        try:
            out = self.step(**self.bound, **token)
        finally:
            for launcher, original in zip(_LAUNCHERS, originals, strict=True):
                launcher.run = original
        if not launches:  # another backend (CPU tensors): nothing to replay, each call runs it
            self._replays = False
            return out
        if len(launches) != 1:
            raise RuntimeError(f"a decode step launched {len(launches)} kernels; expected one")
        launch = launches[0]
        inputs = {}
        for name, value in token.items():
            indices = tuple(i for i, a in enumerate(launch.args) if a is value)
            if not isinstance(value, torch.Tensor) or not indices:
                raise ValueError(
                    f"{name} must reach the kernel as it is (a tensor the step reads in place, "
                    f"e.g. contiguous where the step needs it) to be a prepared step's token input"
                )
            inputs[name] = (indices, _layout(value))
        taken = [i for indices, _ in inputs.values() for i in indices]
        if len(taken) != len(set(taken)):
            raise ValueError("a prepared step's token inputs must be distinct tensors")
        y_indices = tuple(i for i, a in enumerate(launch.args) if a is out.y)
        if not y_indices:
            raise RuntimeError("the step's output y is not one of its kernel's arguments")
        self._plan = _Plan(launch, inputs, y_indices, out)
        return out
