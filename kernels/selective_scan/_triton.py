"""Plumbing shared by the Mamba Triton kernels (selective scan, SSD and their decode steps).

* :data:`INTERPRETING`: the kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1``,
  read at import like ``@triton.jit`` does); then the wrappers accept CPU tensors.
* :func:`softplus`: the ``@triton.jit`` softplus of mamba-ssm (identity above 20).
* :class:`Schedule`: an :class:`Instrumentation` turned into kernel arguments: per-row time-sorted
  emission and injection times with their slots, the zeroed ``states`` buffer, and the injection
  values and scales as strided (possibly broadcast) views, never materialised.
* :func:`empty`: how the wrappers allocate their outputs (tests poison them with NaN through it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._contract import Instrumentation

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised output buffer; every element is written by the kernel."""
    return torch.empty(shape, dtype=dtype, device=device)


def check_launchable(device: torch.device, op: str) -> None:
    """Raise ValueError unless the Triton kernel of ``op`` can run on ``device``."""
    if device.type != "cuda" and not INTERPRETING:
        raise ValueError(
            f"{op}'s Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU "
            f"interpreter), got tensors on {device}"
        )


def dummy(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A one-element tensor for a pointer argument the specialisation never reads."""
    return torch.zeros(1, dtype=dtype, device=device)


@triton.jit
def softplus(x):
    """``log(1 + exp(x))`` in fp32, ``x`` above 20 and ``exp(x)`` below -15 (mamba-ssm's cut)."""
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@dataclass
class Schedule:
    """Kernel arguments of one call's instrumentation (``docs/semantics.md``).

    ``emit_times``/``emit_slots`` ``[B, P]`` int32 (times ascending, unused slots at time ``L``)
    and ``states`` ``[B, P, *S]`` float32 zeros; ``inject_times``/``inject_slots`` ``[B, Q]``,
    ``inject_value`` ``[B, Q, *S]`` float32 view (``value_strides``), ``inject_scale`` ``[B, Q]``
    view (``scale_strides``).  A dummy one-element tensor stands in for what is absent.
    """

    has_emit: bool
    has_inject: bool
    inject_set: bool
    has_scale: bool
    emit_times: torch.Tensor
    emit_slots: torch.Tensor
    states: torch.Tensor | None
    n_emit: int
    inject_times: torch.Tensor
    inject_slots: torch.Tensor
    inject_value: torch.Tensor
    value_strides: tuple[int, ...]
    inject_scale: torch.Tensor
    scale_strides: tuple[int, int]
    n_inject: int

    @classmethod
    def of(cls, instr: Instrumentation) -> Schedule:
        """The schedule of a validated call (float32 compute dtype)."""
        device, rank = instr.device, 2 + len(instr.state_shape)
        no_ints, no_floats = dummy(device, torch.int32), dummy(device)
        states = instr.new_states()
        has_emit = instr.emit_at is not None and instr.emit_at.shape[1] > 0
        emit_times, emit_slots = (no_ints, no_ints)
        if has_emit:
            emit_times, emit_slots = Instrumentation.schedule(instr.emit_at, instr.length)
        has_inject = instr.inject_at is not None and instr.inject_at.shape[1] > 0
        inject_times = inject_slots = no_ints
        value, scale = no_floats, no_floats
        if has_inject:
            inject_times, inject_slots = Instrumentation.schedule(instr.inject_at, instr.length)
            value = instr.inject_value
            if instr.inject_scale is not None:
                scale = instr.inject_scale
        has_scale = has_inject and instr.inject_scale is not None
        return cls(
            has_emit=has_emit,
            has_inject=has_inject,
            inject_set=has_inject and instr.inject_mode == "set",
            has_scale=has_scale,
            emit_times=emit_times,
            emit_slots=emit_slots,
            states=states,
            n_emit=emit_times.shape[1] if has_emit else 0,
            inject_times=inject_times,
            inject_slots=inject_slots,
            inject_value=value,
            value_strides=tuple(value.stride()) if has_inject else (0,) * rank,
            inject_scale=scale,
            scale_strides=tuple(scale.stride()) if has_scale else (0, 0),
            n_inject=inject_times.shape[1] if has_inject else 0,
        )

    def flags(self) -> dict:
        """The compile-time specialisation: ``HAS_EMIT``, ``HAS_INJECT``, ``INJECT_SET``,
        ``HAS_SCALE``."""
        return dict(
            HAS_EMIT=self.has_emit,
            HAS_INJECT=self.has_inject,
            INJECT_SET=self.inject_set,
            HAS_SCALE=self.has_scale,
        )

    def states_or(self, fallback: torch.Tensor) -> torch.Tensor:
        """The states buffer, or ``fallback`` as the unused pointer."""
        return self.states if self.states is not None else fallback
