"""What one instrumented forward pass does at each (site, layer), resolved to padded indices.

:class:`SiteOps` is the per-(site, layer) work of a pass: where to emit, what to inject.
:class:`Pass` holds them, collects the results, and tells the adapter's hooks which layer is
running.  Users never build these: :mod:`statetap.tap` does, from ``Emit`` / ``Inject``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from statetap.kernels import Schedule


def gather_positions(sequence: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``sequence`` ``[B, L, ...]`` at ``positions`` ``[B, P]`` -> ``[B, P, ...]``; slots
    holding ``-1`` (nothing at this call) come back as zeros."""
    positions = positions.to(sequence.device)
    rows = torch.arange(sequence.shape[0], device=sequence.device)[:, None]
    gathered = sequence[rows, positions.clamp_min(0)]
    unused = (positions < 0).view(*positions.shape, *[1] * (sequence.dim() - 2))
    return gathered.masked_fill(unused, 0)


def first_occurrences(positions: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` positions with every repeat within a row replaced by ``-1`` (unused)."""
    first = _first_slots(positions)
    slots = torch.arange(first.shape[1], device=first.device)
    return torch.where(first == slots, positions, -1)


def _first_slots(positions: torch.Tensor) -> torch.Tensor:
    """``[B, P]``: for each slot, the first slot of its row naming the same position."""
    same = positions[:, :, None] == positions[:, None, :]
    return same.to(torch.uint8).argmax(-1)


@dataclass
class Injection:
    """One injection at a site: its positions' kernel ``schedule`` (padded positions ``[B, Q]``,
    checked once per pass and shared by every layer's call), ``value`` ``[B, Q, *shape]``,
    ``mode`` ``"add"`` / ``"set"`` and an optional ``scale`` ``[B, Q]`` (add only)."""

    schedule: Schedule
    value: torch.Tensor
    mode: str = "add"
    scale: torch.Tensor | None = None

    @property
    def positions(self) -> torch.Tensor:
        """The padded positions ``[B, Q]`` (``-1``: no injection in that slot)."""
        return self.schedule.positions

    def kernel_arguments(self) -> dict:
        """The injection as a ``statetap.kernels`` op takes it."""
        return dict(
            inject_at=self.schedule,
            inject_value=self.value,
            inject_mode=self.mode,
            inject_scale=self.scale,
        )

    def updated(
        self, current: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        """``current`` ``[n, *shape]`` (the site in rows ``rows``) after the injections of slots
        ``slots`` ``[n]``: ``value`` for ``set``, ``current + scale * value`` for ``add``."""
        value = self.value[rows, slots].to(current.dtype)
        if self.mode == "set":
            return value
        if self.scale is None:
            return current + value
        scale = self.scale[rows, slots].view(-1, *[1] * (value.dim() - 1))
        return current + (scale * value).to(current.dtype)

    def apply(self, tensor: torch.Tensor, time_axis: int = 1) -> torch.Tensor:
        """``tensor`` ``[B, .., L, ..]`` with the injection applied along ``time_axis``
        (a new tensor; the input is not modified).  Slots holding ``-1`` do nothing."""
        out = tensor.clone()
        moved = out.movedim(time_axis, 1)  # a view: writes land in ``out``
        for q in range(self.positions.shape[1]):
            rows = (self.positions[:, q] >= 0).nonzero().flatten()
            at = self.positions[rows, q]
            moved[rows, at] = self.updated(moved[rows, at], rows, torch.full_like(rows, q))
        return out


@dataclass
class SiteOps:
    """Work at one (site, layer): emission positions ``[B, P]`` and at most one injection.

    Emission positions may repeat within a row (``[t, -1]`` where ``t`` is the last token);
    the kernels take each position once, so :meth:`kernel_arguments` hands them the first
    occurrence (``emit_schedule``, built once per pass and shared by every layer's call) and
    :meth:`expand_states` copies it to the repeats.
    """

    emit_at: torch.Tensor | None = None
    injection: Injection | None = None
    emit_schedule: Schedule | None = None  # of first_occurrences(emit_at), set with emit_at

    def kernel_arguments(self) -> dict:
        """The work as a ``statetap.kernels`` op takes it."""
        arguments = {} if self.injection is None else self.injection.kernel_arguments()
        if self.emit_schedule is not None:
            arguments["emit_at"] = self.emit_schedule
        return arguments

    def expand_states(self, states: torch.Tensor) -> torch.Tensor:
        """Kernel-emitted ``[B, P, *S]`` states with repeated positions filled in."""
        first = _first_slots(self.emit_at)
        index = first.view(*first.shape, *[1] * (states.dim() - 2)).expand_as(states)
        return states.gather(1, index)


@dataclass
class Pass:
    """State of one instrumented forward pass."""

    batch: int
    length: int
    ops: dict[tuple[str, int], SiteOps] = field(default_factory=dict)
    results: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    layer: int | None = None  # the layer whose mixer is running
    cache: object = None  # the model's cache object during the pass, if any
    layer_state: object = None  # the running layer's recurrent state before the pass (adapter's)
    conv_window: object = None  # its convolution window, where the model overwrites it first
    offload: bool = False  # move each emitted tensor to pinned CPU memory as it is produced

    def at(self, site: str, layer: int | None = None) -> SiteOps | None:
        """The work at ``site`` of ``layer`` (default: the running layer), or None."""
        return self.ops.get((site, self.layer if layer is None else layer))

    def store(self, site: str, layer: int, value: torch.Tensor) -> None:
        """Keep an emitted tensor; with ``offload``, start its copy to pinned CPU memory now,
        while the later layers run (the copy is asynchronous on CUDA)."""
        if self.offload and value.device.type == "cuda":
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            value = host.copy_(value, non_blocking=True)
        self.results[(site, layer)] = value
