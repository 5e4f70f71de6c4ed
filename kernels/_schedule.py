"""Validated positions and the per-row schedule a kernel walks: :class:`Schedule`.

``emit_at`` / ``inject_at`` name, per row, the timesteps at which a recurrence emits or injects
(``-1`` for an unused slot).  A kernel walking forward in time wants them per row in time order
with the caller's slot of each, and a sentinel ``L`` last so its cursor never runs off the row.
:meth:`Schedule.build` validates the positions and lays that out **once**; every op and decode
step takes a :class:`Schedule` wherever it takes positions, and then reads no value, sorts
nothing and allocates nothing for them, so an instrumented call never waits for the device.

Where the positions come from decides where they are checked:

* a CPU tensor (the usual case: positions come from the host) is checked on the host, where
  reading values costs nothing, and the schedule is copied to the device asynchronously (from
  pinned memory on CUDA);
* a tensor on the device is checked by default, which reads device values once, at build time;
  ``check=False`` skips that read (out-of-range or repeated positions are then the caller's to
  rule out: a kernel never reaches a time outside ``[0, L)``, so such a slot stays zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _place(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor goes to a CUDA device through pinned memory,
    without waiting for the copy."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass(frozen=True, eq=False)  # identity: one schedule, shared by the calls it serves
class Schedule:
    """Positions ``[B, P]`` checked once, with the per-row time order kernels walk.

    Build with :meth:`build`; pass as ``emit_at=`` or ``inject_at=`` to any op or decode step
    (its ``batch``, ``length`` and ``device`` must match the call's).

    Attributes:
        name: the argument the positions were given as, for messages (``"emit_at"``).
        batch, length: ``B`` and ``L`` they were checked against.
        device: where the tensors below live.
        positions: ``[B, P]`` int64, ``-1`` in unused slots.
        times, slots: ``[B, P]`` int32 contiguous: ``times[b]`` ascending (unused slots as
            ``L``), ``slots[b, i]`` the caller's slot of ``times[b, i]`` (the C++ kernels' form).
        kernel_times, kernel_slots: ``[B, P + 1]`` int32 contiguous, the same with a sentinel
            ``L`` (slot 0) last (the Triton kernels' form).
        unused: ``[B, P]`` bool, True in unused slots; None when no slot is unused.
        distinct: the sorted distinct timesteps some row names, when known on the host (positions
            from the host, or checked on the device); None otherwise.
    """

    name: str
    batch: int
    length: int
    device: torch.device
    positions: torch.Tensor
    times: torch.Tensor
    slots: torch.Tensor
    kernel_times: torch.Tensor
    kernel_slots: torch.Tensor
    unused: torch.Tensor | None
    distinct: tuple[int, ...] | None

    @property
    def count(self) -> int:
        """``P``: slots per row."""
        return self.positions.shape[1]

    @classmethod
    def build(
        cls,
        positions: object,
        *,
        batch: int,
        length: int,
        device: torch.device | str,
        name: str = "positions",
        check: bool = True,
    ) -> Schedule:
        """Validate ``positions`` and lay out their schedule on ``device``.

        Args:
            positions: integer tensor ``[B, P]`` or ``[P]`` (every row), values in ``[0, L)`` or
                ``-1`` for an unused slot, each position at most once per row; on the CPU or on
                ``device``.  A :class:`Schedule` is checked against the call and returned.
            batch, length: ``B`` and ``L`` of the calls it will serve.
            device: the device of those calls' inputs.
            name: the argument's name, for messages.
            check: check the values of positions that live on a CUDA device (reads them: one
                device sync here, none later).  Host positions are always checked.

        Raises:
            TypeError: not an integer tensor; ValueError: wrong shape or device, a position out
            of range or named twice in a row.
        """
        device = torch.device(device)
        if isinstance(positions, Schedule):
            return positions.matching(name, batch, length, device)
        expected = f"[B={batch}, P] or [P]"
        if not isinstance(positions, torch.Tensor):
            raise TypeError(
                f"{name} must be an integer torch.Tensor of shape {expected} or a "
                f"statetap.kernels.Schedule, got {type(positions).__name__}"
            )
        if positions.dtype not in INTEGER_DTYPES:
            raise TypeError(
                f"{name} must be an integer tensor (torch.long) of shape {expected}, "
                f"got {positions.dtype}"
            )
        if positions.device != device and positions.device.type != "cpu":
            raise ValueError(
                f"{name} must be on {device} like the other inputs (or on the CPU), "
                f"got {positions.device}"
            )
        if positions.dim() == 1:
            positions = positions.expand(batch, -1)
        if positions.dim() != 2 or positions.shape[0] != batch:
            raise ValueError(
                f"{name} must have shape {expected}, got [{', '.join(map(str, positions.shape))}]"
            )
        positions = positions.long()
        times, slots = time_order(positions, length)
        distinct = None
        on_host = positions.device.type == "cpu"
        if on_host or check:
            _check_values(name, positions, times, length)
            distinct = tuple(t for t in positions.unique().tolist() if t >= 0)
        unused = positions < 0
        if distinct is not None and not bool(unused.any()):
            unused = None
        return cls(
            name=name,
            batch=batch,
            length=length,
            device=device,
            positions=_place(positions.contiguous(), device),
            times=_place(times, device),
            slots=_place(slots, device),
            kernel_times=_place(with_sentinel(times, length), device),
            kernel_slots=_place(with_sentinel(slots, 0), device),
            unused=None if unused is None else _place(unused, device),
            distinct=distinct,
        )

    def distinct_times(self) -> list[int]:
        """The sorted distinct timesteps some row names: known on the host since the build, or
        read from the device (one sync) where the positions were built there unchecked."""
        if self.distinct is not None:
            return list(self.distinct)
        return [t for t in self.positions.unique().tolist() if t >= 0]

    def first_at_or_after(self, span: int, count: int) -> torch.Tensor:
        """``[B, count]`` int32 on the device: per row, the index in ``kernel_times`` of the first
        time at or after ``k * span`` (the start of chunk or tile ``k``), that of the sentinel
        where none is (chunks past ``L`` included).  A chunked kernel's program reads its
        chunk's events from there on; computed once per pass, with no host read."""
        starts = torch.arange(0, count * span, span, dtype=torch.int32, device=self.device)
        found = torch.searchsorted(
            self.kernel_times, starts.expand(self.batch, -1).contiguous(), out_int32=True
        )
        return found.clamp_(max=self.count)

    def matching(self, name: str, batch: int, length: int, device: torch.device) -> Schedule:
        """This schedule, after checking it was built for a call of ``batch`` rows, ``length``
        steps on ``device`` (ValueError naming ``name`` otherwise)."""
        if (self.batch, self.length) != (batch, length) or self.device != device:
            raise ValueError(
                f"{name} is a Schedule built for B={self.batch}, L={self.length} on "
                f"{self.device}, but the call has B={batch}, L={length} on {device}"
            )
        return self


def time_order(positions: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row time order of positions, for a kernel walking forward in time.

    Args:
        positions: ``[B, P]`` integer positions, ``-1`` for unused slots.
        length: ``L``; unused slots become ``L``, a time the kernel never reaches.

    Returns:
        ``(times, slots)``, both int32 ``[B, P]`` contiguous: ``times[b]`` ascending,
        ``slots[b, i]`` the caller's slot of ``times[b, i]``.  A kernel keeps one cursor per row
        and acts when ``t == times[b, cursor]``.
    """
    times = torch.where(positions < 0, length, positions)
    times, slots = times.sort(dim=1, stable=True)
    return times.to(torch.int32).contiguous(), slots.to(torch.int32).contiguous()


def with_sentinel(rows: torch.Tensor, last: int) -> torch.Tensor:
    """``rows`` ``[B, P]`` with a column of ``last`` appended: ``[B, P + 1]`` contiguous, as the
    kernels walk a schedule (a sentinel time ``L`` that a row's cursor never passes)."""
    sentinel = torch.full((rows.shape[0], 1), last, dtype=rows.dtype, device=rows.device)
    return torch.cat([rows, sentinel], 1)


def _check_values(name: str, positions: torch.Tensor, times: torch.Tensor, length: int) -> None:
    """Raise ValueError for a position outside ``[0, L)`` (``-1`` apart) or named twice in a
    row; ``times`` is the per-row sorted form (reads values: free on the host)."""
    if positions.numel() == 0:
        return
    bad = (positions < -1) | (positions >= length)
    if bool(bad.any()):
        row, slot = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}[{row}, {slot}] = {int(positions[row, slot])} is out of range: positions "
            f"must be in [0, L={length}) or -1 for an unused slot"
        )
    repeated = (times[:, 1:] == times[:, :-1]) & (times[:, 1:] < length)
    if bool(repeated.any()):
        row, slot = (int(i) for i in repeated.nonzero()[0])
        raise ValueError(
            f"{name} row {row} names position {int(times[row, slot + 1])} twice; each position "
            f"may appear once per row"
        )
