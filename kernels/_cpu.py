"""The C++ extension ``statetap._C`` (built from ``csrc/`` by ``make venv``) as the ``cpu`` backend.

Importing ``statetap._C`` registers every C++ op as ``torch.ops.statetap.<op>``.  Each op's
``cpu.py`` validates its arguments like the other backends, allocates the outputs with
:func:`empty` (tests poison them through it) and calls :func:`ops`.  ``STATETAP_CPU_ISA``
(``avx512``, ``avx2`` or ``scalar``) forces the instruction set the kernels run with; by default
they take the widest one this CPU supports (:func:`isa`).
"""

from __future__ import annotations

import functools
import warnings

import torch

from ._contract import Instrumentation

ISA_ENV = "STATETAP_CPU_ISA"
BUILD_HINT = "run `make venv` (or `pip install --no-build-isolation -e .`) with a C++ compiler"


@functools.cache
def built() -> bool:
    """Whether ``statetap._C`` is importable (its ops are then registered)."""
    try:
        from statetap import _C  # noqa: F401
    except ImportError:
        return False
    return True


def ops():
    """``torch.ops.statetap``, with the extension loaded; RuntimeError if it was not built."""
    if not built():
        raise RuntimeError(f"statetap._C, the cpu backend, is not built: {BUILD_HINT}")
    return torch.ops.statetap


def isa() -> str:
    """The instruction set the C++ kernels run with now: ``avx512``, ``avx2`` or ``scalar``."""
    return ops().cpu_isa()


@functools.cache
def notice_missing() -> None:
    """Warn, once per process, that CPU tensors run the slower torch reference."""
    warnings.warn(
        f"statetap: the C++ cpu kernels (statetap._C) are not built, so ops on CPU tensors run "
        f"the slower pure-torch reference; {BUILD_HINT}",
        stacklevel=4,
    )


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised CPU output buffer; every element is written by the kernel."""
    return torch.empty(shape, dtype=dtype)


def check_device(device: torch.device, op: str) -> None:
    """Raise ValueError unless the C++ kernel of ``op`` can run on ``device`` (CPU only)."""
    if device.type != "cpu":
        raise ValueError(f"{op}'s cpu kernel needs CPU tensors, got tensors on {device}")


def contract_args(instr: Instrumentation, state: torch.Tensor | None = None) -> dict:
    """The state-contract arguments of a C++ op, from a validated call (float32 compute dtype).

    ``state``: a float32 contiguous ``[B, *S]`` tensor the kernel reads its initial state from
    and writes the final state to, in place (the decode steps).

    Returns the keyword arguments ``initial_state`` ``[B, *S]`` (the caller's, the op's neutral
    state, or None for zeros), ``final_state`` (an output buffer, or None unless asked for; both
    ``state`` when given), ``emit_times``/``emit_slots`` ``[B, P]`` int32 (per-row
    time order, :class:`~._schedule.Schedule`) with the ``states`` ``[B, P, *S]`` buffer (the
    caller's ``states_out`` or a new one; unused slots zeroed here, the others written by the
    kernel), ``inject_times``/
    ``inject_slots`` ``[B, Q]`` with ``inject_value`` (a broadcast ``[B, Q, *S]`` view),
    ``inject_scale`` (``[B, Q]`` view or None) and ``inject_set``.  Slot lists that are absent
    or empty are passed as None.
    """
    if state is not None:
        initial = final = state
    else:
        initial = instr.initial_state
        if initial is None and instr.default_initial is not None:
            initial = instr.initial
        shape = (instr.batch, *instr.state_shape)
        final = empty(shape, torch.float32) if instr.output_final_state else None
    args = dict(
        initial_state=initial,
        final_state=final,
        emit_times=None,
        emit_slots=None,
        states=None,
        inject_times=None,
        inject_slots=None,
        inject_value=None,
        inject_scale=None,
        inject_set=instr.inject_mode == "set",
    )
    # every used slot is written by the kernel: only the unused ones (-1) are zeroed
    args["states"] = instr.new_states(lambda shape: empty(shape, torch.float32))
    emit, inject = instr.emit_schedule, instr.inject_schedule
    if emit is not None and emit.count > 0:
        args["emit_times"], args["emit_slots"] = emit.times, emit.slots
    if inject is not None and inject.count > 0:
        args["inject_times"], args["inject_slots"] = inject.times, inject.slots
        args["inject_value"], args["inject_scale"] = instr.inject_value, instr.inject_scale
    return args
