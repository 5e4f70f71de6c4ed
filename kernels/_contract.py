"""The state contract shared by every recurrence and backend (``docs/semantics.md``).

Time runs over ``t = 0 .. L-1``; ``S_t`` is the state after token ``t`` was consumed and
``S_{-1}`` the initial state.  Every op takes the same instrumentation arguments:

* ``initial_state`` ``[B, *S]`` or None (zeros, or the op's own neutral state);
* ``output_final_state``: return ``S_{L-1}``;
* ``emit_at`` ``[B, P]`` or ``[P]`` integer positions, ``-1`` for an unused slot: returns
  ``states[b, p] = S_{emit_at[b, p]}`` (as later tokens see it, i.e. after any injection);
* ``inject_at`` ``[B, Q]`` or ``[Q]``, ``inject_value`` broadcastable to ``[B, Q, *S]``,
  ``inject_mode`` ``"add"`` (``S_t += scale * value``) or ``"set"`` (``S_t = value``), and
  ``inject_scale`` broadcastable to ``[B, Q]`` (add mode only).  Injection at ``t`` happens
  after ``y_t`` was computed, so ``y_{t+1}`` is the first output it can change.

This module validates those arguments once (:class:`Instrumentation`) and applies them to
a state as a reference recurrence walks through time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ._schedule import Schedule

INJECT_MODES = ("add", "set")


class ScanOutput(NamedTuple):
    """What every recurrence returns.

    Attributes:
        y: the op's output, in the input dtype and the op's own layout.
        final_state: ``[B, *S]`` state after the last token, or None unless
            ``output_final_state=True``.
        states: ``[B, P, *S]`` emitted states in the caller's slot order (zeros in unused
            slots), or None when nothing was asked for with ``emit_at``.
    """

    y: torch.Tensor
    final_state: torch.Tensor | None
    states: torch.Tensor | None


def shape_str(dims: Sequence[object]) -> str:
    """``("B", "L", 4)`` -> ``"[B, L, 4]"``."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def check_tensor(
    name: str,
    value: object,
    shape: Sequence[int | None],
    names: Sequence[str],
    *,
    device: torch.device | None = None,
    floating: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a tensor of ``shape`` (None matches any size) on ``device``.

    ``names`` spells the expected shape for the message, e.g. ``("B", "L", "H", "K")``.
    Raises TypeError for a non-tensor or a wrong dtype class, ValueError for a wrong shape
    or device; every message names the argument and the expected shape.
    """
    if (
        isinstance(value, torch.Tensor)
        and (not floating or value.is_floating_point())
        and (value.shape == shape or _fits(value.shape, shape))
        and (device is None or value.device == device)
    ):
        return value  # the common case, first: a decode step checks every input every token
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {_expected(shape, names)}, "
            f"got {type(value).__name__}"
        )
    if floating and not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of shape {_expected(shape, names)}, "
            f"got {value.dtype}"
        )
    got = value.shape
    if not _fits(got, shape):
        raise ValueError(f"{name} must have shape {_expected(shape, names)}, got {shape_str(got)}")
    check_device(name, value, device)
    return value


def sequence_dims(dims: Sequence, token: bool) -> tuple:
    """A sequence op's ``[B, L, ...]`` dims (sizes or names) as its decode step has them:
    without the time axis when ``token`` (one token: ``[B, ...]``), else unchanged."""
    return (dims[0], *dims[2:]) if token else tuple(dims)


def sequence_shape(shape: Sequence[int], token: bool) -> tuple[int, ...]:
    """``shape`` read as ``[B, L, ...]``: a one-token ``[B, ...]`` shape gets ``L = 1``."""
    return (shape[0], 1, *shape[1:]) if token else tuple(shape)


def _fits(got: Sequence[int], shape: Sequence[int | None]) -> bool:
    """Whether a tensor shape ``got`` matches ``shape`` (None matches any size)."""
    if len(got) != len(shape):
        return False
    for size, want in zip(got, shape):
        if want is not None and size != want:
            return False
    return True


def _expected(shape: Sequence[int | None], names: Sequence[str]) -> str:
    """The shape a check expects, spelled for a message: ``[B=2, L, H=4]``."""
    return shape_str(
        f"{n}={s}" if s is not None and not str(n).isdigit() else n for n, s in zip(names, shape)
    )


def check_device(name: str, value: torch.Tensor, device: torch.device) -> None:
    """Raise ValueError unless ``value`` lives on ``device`` (where the other inputs are)."""
    if value.device != device:
        raise ValueError(f"{name} must be on {device} like the other inputs, got {value.device}")


def check_state(state: object, shape: tuple[int, ...], names: tuple[str, ...], device) -> None:
    """The decode state must be a float32 contiguous tensor of ``shape`` on ``device``."""
    check_tensor("state", state, shape, names, device=device)
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise TypeError(
            f"state must be a contiguous float32 tensor (updated in place), got {state.dtype}"
            f"{'' if state.is_contiguous() else ', non-contiguous'}"
        )


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (the exact oracle), float32 otherwise."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def is_exact_oracle(*tensors: torch.Tensor) -> bool:
    """float64 inputs: the caller wants the exact definition, which the reference computes."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
            return True
    return False


def float64_runs(reference: Callable) -> Callable[[Callable], Callable]:
    """Decorator of a fused backend's function: a call with any float64 tensor argument (the
    exact oracle, :func:`is_exact_oracle`) runs ``reference`` with the same arguments instead."""

    def decorate(kernel: Callable) -> Callable:
        @functools.wraps(kernel)
        def call(*args, **kwargs):
            if is_exact_oracle(*args, *kwargs.values()):
                return reference(*args, **kwargs)
            return kernel(*args, **kwargs)

        return call

    return decorate


class Instrumentation:
    """Validated instrumentation arguments of one call, applied step by step.

    Args:
        batch, length: ``B`` and ``L`` of the call.
        state_shape: ``S``, the per-row state shape (e.g. ``(H, K, V)``).
        device: device of the inputs; positions and values must live there.
        dtype: the compute dtype of the state (float32, or float64 for the oracle).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the contract arguments, as passed by the caller (positions as tensors or
            prebuilt :class:`~._schedule.Schedule` objects, which are not checked again).
        states_out: a ``[B, P, *S]`` contiguous buffer in the compute dtype for the emitted states
            (reused across calls: no allocation; unused slots are left as they are), or None
            for a new one (unused slots zero).
        default_initial: the op's neutral ``[*S]`` state (zeros when None).
    """

    def __init__(
        self,
        *,
        batch: int,
        length: int,
        state_shape: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
        initial_state: torch.Tensor | None = None,
        output_final_state: bool = False,
        emit_at: torch.Tensor | Schedule | None = None,
        inject_at: torch.Tensor | Schedule | None = None,
        inject_value: torch.Tensor | None = None,
        inject_mode: str = "add",
        inject_scale: torch.Tensor | float | None = None,
        states_out: torch.Tensor | None = None,
        default_initial: torch.Tensor | None = None,
    ) -> None:
        self.batch, self.length = batch, length
        self.state_shape = tuple(state_shape)
        self._state_ones = (1,) * len(self.state_shape)  # broadcasts [B] or [B, P] over S
        self.device, self.dtype = device, dtype

        if not isinstance(output_final_state, bool):
            raise TypeError(
                f"output_final_state must be a bool, got {type(output_final_state).__name__}"
            )
        self.output_final_state = output_final_state

        if initial_state is not None:
            full = (batch, *self.state_shape)
            dims = ("B", *(f"S{i}" for i in range(len(self.state_shape))))
            check_tensor("initial_state", initial_state, full, dims, device=device)
        #: the caller's validated ``[B, *S]`` initial state (read, never written), or None
        self.initial_state = initial_state
        #: the op's neutral ``[*S]`` state, or None for zeros (a kernel may start from nothing)
        self.default_initial = default_initial

        #: the validated emission and injection :class:`~._schedule.Schedule`, or None
        self.emit_schedule = self.inject_schedule = None
        if emit_at is not None:
            self.emit_schedule = Schedule.build(
                emit_at, batch=batch, length=length, device=device, name="emit_at"
            )
        if inject_at is not None:
            self.inject_schedule = Schedule.build(
                inject_at, batch=batch, length=length, device=device, name="inject_at"
            )
        #: ``[B, P]`` / ``[B, Q]`` long positions (``-1``: unused slot), or None
        self.emit_at = None if self.emit_schedule is None else self.emit_schedule.positions
        self.inject_at = None if self.inject_schedule is None else self.inject_schedule.positions
        self._check_injection(inject_value, inject_mode, inject_scale)
        self._states_out = self._check_states_out(states_out)

    def _check_injection(
        self,
        inject_value: torch.Tensor | None,
        inject_mode: str,
        inject_scale: torch.Tensor | float | None,
    ) -> None:
        if inject_mode not in INJECT_MODES:
            raise ValueError(f"inject_mode must be one of {INJECT_MODES}, got {inject_mode!r}")
        self.inject_mode = inject_mode
        if self.inject_at is None:
            if inject_value is not None or inject_scale is not None:
                raise ValueError("inject_value / inject_scale were given without inject_at")
            self.inject_value = self.inject_scale = None
            return
        queries = self.inject_at.shape[1]
        target = (self.batch, queries, *self.state_shape)
        if inject_value is None:
            raise ValueError(
                "inject_at needs inject_value broadcastable to "
                f"{shape_str(('B', 'Q', *self.state_shape))}"
            )
        if not isinstance(inject_value, torch.Tensor) or not inject_value.is_floating_point():
            raise TypeError(
                "inject_value must be a floating-point tensor broadcastable to "
                f"{shape_str(target)}, "
                f"got {getattr(inject_value, 'dtype', type(inject_value).__name__)}"
            )
        check_device("inject_value", inject_value, self.device)
        try:
            self.inject_value = torch.broadcast_to(inject_value, target).to(self.dtype)
        except RuntimeError:
            raise ValueError(
                f"inject_value of shape {shape_str(inject_value.shape)} is not broadcastable to "
                f"[B, Q, *S] = {shape_str(target)}"
            ) from None
        if inject_scale is None:
            self.inject_scale = None
            return
        if inject_mode == "set":
            raise ValueError(
                "inject_scale applies to inject_mode='add' only; 'set' writes inject_value as is"
            )
        if isinstance(inject_scale, (int, float)):
            # a fill on the device, not a copy from the host: capturable in a CUDA graph
            inject_scale = torch.full((), float(inject_scale), device=self.device, dtype=self.dtype)
        if not isinstance(inject_scale, torch.Tensor) or not inject_scale.is_floating_point():
            raise TypeError(
                "inject_scale must be a float or a floating-point tensor of shape [B] or [B, Q]"
            )
        check_device("inject_scale", inject_scale, self.device)
        if inject_scale.dim() == 1:  # one multiplier per row: a sweep in one launch
            inject_scale = inject_scale[:, None]
        try:
            self.inject_scale = torch.broadcast_to(inject_scale, (self.batch, queries)).to(
                self.dtype
            )
        except RuntimeError:
            raise ValueError(
                f"inject_scale of shape {shape_str(inject_scale.shape)} must be a scalar, "
                f"a [B={self.batch}] vector (one multiplier per row) or broadcastable to "
                f"[B, Q] = {shape_str((self.batch, queries))}"
            ) from None

    @functools.cached_property
    def initial(self) -> torch.Tensor:
        """``S_{-1}`` ``[B, *S]`` in the compute dtype: a copy of ``initial_state``, or the op's
        empty state (built on first use: the kernels read ``initial_state`` itself)."""
        if self.initial_state is not None:
            return self.initial_state.to(self.dtype).clone()
        base = self.default_initial
        base = torch.zeros(self.state_shape) if base is None else base
        full = (self.batch, *self.state_shape)
        return base.to(device=self.device, dtype=self.dtype).expand(full).clone()

    # ------------------------------------------------------------------ queries
    def inject_positions(self) -> list[int]:
        """Sorted distinct timesteps at which some row injects."""
        return self._distinct(self.inject_schedule)

    def emit_positions(self) -> list[int]:
        """Sorted distinct timesteps at which some row emits."""
        return self._distinct(self.emit_schedule)

    @staticmethod
    def _distinct(schedule: Schedule | None) -> list[int]:
        """The schedule's distinct times (the references walk time in Python; the kernels never
        ask)."""
        return [] if schedule is None else schedule.distinct_times()

    @functools.cached_property
    def _inject_times(self) -> set[int]:
        return set(self.inject_positions())

    @functools.cached_property
    def _emit_times(self) -> set[int]:
        return set(self.emit_positions())

    # ------------------------------------------------------------------ actions
    def _check_states_out(self, states_out: object) -> torch.Tensor | None:
        """Validate the caller's emitted-states buffer (see the class docstring)."""
        if states_out is None:
            return None
        if self.emit_schedule is None:
            raise ValueError("states_out was given without emit_at")
        shape = (self.batch, self.emit_schedule.count, *self.state_shape)
        names = ("B", "P", *(f"S{i}" for i in range(len(self.state_shape))))
        check_tensor("states_out", states_out, shape, names, device=self.device)
        if states_out.dtype != self.dtype or not states_out.is_contiguous():
            raise TypeError(
                f"states_out must be a contiguous {self.dtype} tensor (the states are written "
                f"into it), got {states_out.dtype}"
                f"{'' if states_out.is_contiguous() else ', non-contiguous'}"
            )
        return states_out

    def new_states(self, allocate: Callable[[tuple[int, ...]], torch.Tensor] | None = None):
        """The ``[B, P, *S]`` buffer for the emitted states, or None without ``emit_at``.

        The caller's ``states_out`` as it is: the op writes every used slot and leaves the
        unused ones (``-1``) untouched, so a buffer reused across calls costs no pass over its
        memory.  Otherwise ``allocate(shape)`` (an uninitialised buffer) with its unused slots
        zeroed, or new zeros.  No host sync either way.
        """
        schedule = self.emit_schedule
        if schedule is None:
            return None
        if self._states_out is not None:
            return self._states_out
        shape = (self.batch, schedule.count, *self.state_shape)
        if allocate is None:
            return torch.zeros(shape, device=self.device, dtype=self.dtype)
        states = allocate(shape)
        if schedule.unused is not None:
            states.masked_fill_(schedule.unused.view(*schedule.unused.shape, *self._state_ones), 0)
        return states

    def inject(self, state: torch.Tensor, t: int) -> torch.Tensor:
        """Apply the injections at timestep ``t`` to ``state`` ``[B, *S]``."""
        hit = self.inject_at == t  # [B, Q]; at most one True per row
        rows = torch.arange(self.batch, device=self.device)
        slot = hit.to(torch.uint8).argmax(1)  # the slot that names t, where one does
        value = self.inject_value[rows, slot]  # [B, *S]
        if self.inject_mode == "add":
            if self.inject_scale is not None:
                value = self.inject_scale[rows, slot].view(-1, *self._state_ones) * value
            value = state + value
        return torch.where(hit.any(1).view(-1, *self._state_ones), value, state)

    def emit(self, states: torch.Tensor | None, span: torch.Tensor, start: int) -> None:
        """Record emissions from ``span`` ``[B, n, *S]``, the states at ``start .. start+n-1``."""
        if states is None:
            return
        offset = self.emit_at - start  # [B, P]
        hit = (offset >= 0) & (offset < span.shape[1])
        if not bool(hit.any()):
            return
        index = offset.clamp(0, span.shape[1] - 1)
        gathered = span.gather(
            1, index.view(*index.shape, *self._state_ones).expand(*index.shape, *self.state_shape)
        )
        states.copy_(torch.where(hit.view(*hit.shape, *self._state_ones), gathered, states))

    def run_steps(self, step) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Walk ``t = 0 .. L-1`` with ``step(state, t) -> (S_t, y_t)``; inject and emit after each.

        Returns the outputs ``[y_0, ..., y_{L-1}]``, the final state and the emitted states.
        """
        states, state, ys = self.new_states(), self.initial, []
        for t in range(self.length):
            state, y_t = step(state, t)
            if t in self._inject_times:
                state = self.inject(state, t)
            if t in self._emit_times:
                self.emit(states, state[:, None], t)
            ys.append(y_t)
        return ys, state, states

    def run_segments(
        self, segments: Sequence[tuple[int, int]], piece
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Walk the ``[start, end)`` pieces with ``piece(state, start, end, want_states)``.

        ``piece`` returns ``(y [B, n, ...], S_{end-1}, span)`` where ``span`` ``[B, n, *S]``
        holds every state of the piece when ``want_states`` is true (else None).  Injections
        act on the piece's last state (pieces end right after each injection timestep).
        Returns the output pieces, the final state and the emitted states.
        """
        states, state, ys = self.new_states(), self.initial, []
        for start, end in segments:
            want = any(start <= t < end for t in self._emit_times)
            y, state, span = piece(state, start, end, want)
            if end - 1 in self._inject_times:
                state = self.inject(state, end - 1)
            if want:
                span[:, -1] = state
                self.emit(states, span, start)
            ys.append(y)
        return ys, state, states

    def segments(
        self, chunk_size: int, extra_boundaries: Sequence[int] = ()
    ) -> list[tuple[int, int]]:
        """Split ``0 .. L`` into ``[start, end)`` pieces of at most ``chunk_size`` tokens.

        A piece also ends right after every injection timestep (so injections act on a
        piece's final state) and before every position in ``extra_boundaries``.
        """
        cuts = set(range(0, self.length, chunk_size)) | {t + 1 for t in self.inject_positions()}
        cuts |= set(extra_boundaries)
        cuts = sorted(c for c in cuts if 0 <= c < self.length) + [self.length]
        return list(zip(cuts[:-1], cuts[1:]))

    def output(
        self, y: torch.Tensor, final: torch.Tensor, states: torch.Tensor | None
    ) -> ScanOutput:
        """Package the result, dropping the final state unless it was asked for."""
        return ScanOutput(y, final if self.output_final_state else None, states)
