"""Triton helpers shared by the ops: launch plumbing, and emission and injection inside the
kernels (selective scan, SSD, RWKV-4/5/6/7), launch side and kernel side.

Plumbing: :data:`INTERPRETING` (the kernels run under Triton's CPU interpreter,
``TRITON_INTERPRET=1``, read at import like ``@triton.jit`` does; then the wrappers accept CPU
tensors), :func:`check_launchable`, :func:`empty` (how the wrappers allocate their outputs; tests
poison them with NaN through it), :func:`dummy` and the ``@triton.jit`` :func:`softplus`.

Launch side: :class:`KernelInstrumentation` turns a validated :class:`Instrumentation` into the
tensors a kernel walks through time: per row, the sorted emission and injection times with a
sentinel ``L`` at the end (built once with the :class:`~._schedule.Schedule`; a cursor never
runs off the row), the caller's slot of each time, the ``states`` buffer (unused slots zeroed),
the injected values (state dims dense; a steering vector broadcast over rows is never copied
``B`` times) and the scales, plus the ``tl.constexpr`` flags that select the kernel's
specialisation.  With nothing requested the flags are all False and the kernel is the plain
one.

Kernel side: :func:`emit_tile` and :func:`inject_tile` act on one tile of the state when the
step ``t`` is the row's next scheduled time, and advance the row's cursor.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._contract import Instrumentation, ScanOutput
from ._schedule import Schedule, with_sentinel

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


@functools.lru_cache(maxsize=16)
def dummy(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A one-element tensor for a pointer argument the specialisation never reads or writes
    (one per device and dtype, shared by every launch)."""
    return torch.zeros(1, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def no_schedule(batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(times, slots)`` ``[B, 1]`` int32 of a schedule that names nothing: the sentinel ``L``
    alone.  Kernels only read it, so one pair per shape serves every call (no allocation in a
    decode loop or a captured CUDA graph)."""
    nothing = torch.empty(batch, 0, dtype=torch.int32, device=device)
    return with_sentinel(nothing, length), with_sentinel(nothing, 0)


LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def softplus(x):
    """``log(1 + e^x)`` accurate to fp32 for every fp32 ``x`` (no cut-offs), in about 15
    instructions, a third of ``tl.log``'s: ``max(x, 0) + log1p(e)`` with ``e = e^-|x| <= 1``,
    and ``log1p(e) = 2 atanh(s)``, ``s = e / (2 + e) <= 1/3``, by its odd series to ``s^13``
    (truncation below 2e-8 relative)."""
    e = tl.exp2(-tl.abs(x) * LOG2E)
    s = tl.fdiv(e, 2.0 + e)
    s2 = s * s
    series = 1.0 / 13.0
    series = series * s2 + 1.0 / 11.0
    series = series * s2 + 1.0 / 9.0
    series = series * s2 + 1.0 / 7.0
    series = series * s2 + 1.0 / 5.0
    series = series * s2 + 1.0 / 3.0
    return tl.maximum(x, 0.0) + (2.0 * s) * (series * s2 + 1.0)


@dataclass
class KernelInstrumentation:
    """The tensors and flags an instrumented kernel launch needs (all on the inputs' device).

    Attributes:
        initial: ``[B, *S]`` float32 contiguous, or None (the kernel starts from its empty state).
        final: ``[B, *S]`` float32 buffer for ``S_{L-1}``, or None.
        states: ``[B, P, *S]`` float32 zeros for the emitted states, or None.
        emit_times, emit_slots: ``[B, P + 1]`` int32; row ``b`` ascending, sentinel ``L`` last.
        inject_times, inject_slots: ``[B, Q + 1]`` int32, the same for injections.
        inject_value: ``[B, Q, *S]`` float32 view, its state dims dense (:func:`dense_state_dims`;
            strides over ``B`` and ``Q`` may be 0), or None.
        inject_scale: ``[B, Q]`` float32 contiguous, or None.
    """

    instr: Instrumentation
    initial: torch.Tensor | None
    final: torch.Tensor | None
    states: torch.Tensor | None
    emit_times: torch.Tensor
    emit_slots: torch.Tensor
    inject_times: torch.Tensor
    inject_slots: torch.Tensor
    inject_value: torch.Tensor | None
    inject_scale: torch.Tensor | None

    @classmethod
    def build(
        cls, instr: Instrumentation, state: torch.Tensor | None = None
    ) -> KernelInstrumentation:
        """From a validated ``instr`` (float32); without an ``initial_state`` the kernel builds
        the empty state itself.  ``state``: a float32 contiguous ``[B, *S]`` tensor to read the
        initial state from and write the final state to, in place (the decode steps)."""
        batch, device = instr.batch, instr.device
        if state is not None:
            initial, final = state, state
        else:
            given = instr.initial_state
            initial = None if given is None else given.to(torch.float32).contiguous()
            final = (
                empty((batch, *instr.state_shape), torch.float32, device)
                if instr.output_final_state
                else None
            )
        emit_times, emit_slots = _kernel_schedule(instr.emit_schedule, instr)
        inject_times, inject_slots = _kernel_schedule(instr.inject_schedule, instr)
        scale = instr.inject_scale
        return cls(
            instr=instr,
            initial=initial,
            final=final,
            states=instr.new_states(),
            emit_times=emit_times,
            emit_slots=emit_slots,
            inject_times=inject_times,
            inject_slots=inject_slots,
            inject_value=dense_state_dims(instr.inject_value, instr.state_shape),
            inject_scale=None if scale is None else scale.contiguous(),
        )

    @property
    def emit_count(self) -> int:
        """``P``: emission slots per row."""
        return self.emit_times.shape[1] - 1

    @property
    def inject_count(self) -> int:
        """``Q``: injection slots per row."""
        return self.inject_times.shape[1] - 1

    def value_strides(self) -> tuple[int, ...]:
        """Strides of ``inject_value`` ``[B, Q, *S]`` in elements (zeros when none)."""
        if self.inject_value is None:
            return (0,) * (2 + len(self.instr.state_shape))
        return tuple(self.inject_value.stride())

    def pointers(self, fallback: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Kernel pointer arguments, in order: initial, final, emit_times, emit_slots, states,
        inject_times, inject_slots, inject_value, inject_scale (``fallback`` where unused)."""
        return tuple(
            fallback if t is None else t
            for t in (
                self.initial,
                self.final,
                self.emit_times,
                self.emit_slots,
                self.states,
                self.inject_times,
                self.inject_slots,
                self.inject_value,
                self.inject_scale,
            )
        )

    def flags(self) -> dict[str, bool]:
        """The constexpr specialisation of this launch."""
        return dict(
            HAS_INITIAL=self.initial is not None,
            STORE_FINAL=self.final is not None,
            HAS_EMIT=self.states is not None,
            HAS_INJECT=self.inject_value is not None,
            INJECT_SET=self.instr.inject_mode == "set" and self.inject_value is not None,
            HAS_SCALE=self.inject_scale is not None,
        )

    def output(self, y: torch.Tensor) -> ScanOutput:
        """``ScanOutput(y, final, states)`` as the contract returns it."""
        final = self.final if self.instr.output_final_state else None
        return ScanOutput(y, final, self.states)


def dense_state_dims(value: torch.Tensor | None, state_shape: tuple[int, ...]):
    """``value`` ``[B, Q, *S]`` with its state dims ``*S`` dense (contiguous strides), so that
    kernels address an injected tile with the state's own compile-time offsets (a strided
    ``[K, V]`` tile costs a 64-bit address register per element).  The batch and slot dims keep
    their strides: a value broadcast over rows or slots (stride 0) is copied once, never ``B``
    or ``Q`` times.  None passes through."""
    if value is None:
        return None
    dense = torch.empty(state_shape, device="meta").stride()
    if value.stride()[2:] == dense:
        return value
    rows = slice(0, 1) if value.stride(0) == 0 else slice(None)
    slots = slice(0, 1) if value.stride(1) == 0 else slice(None)
    return value[rows, slots].contiguous().expand(value.shape)


def _kernel_schedule(
    schedule: Schedule | None, instr: Instrumentation
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(times, slots)`` ``[B, P + 1]`` as a kernel walks them (prebuilt with the schedule)."""
    if schedule is None:
        return no_schedule(instr.batch, instr.length, instr.device)
    return schedule.kernel_times, schedule.kernel_slots


def next_power_of_2(n: int) -> int:
    """The least power of two ``>= n`` (``triton.next_power_of_2`` without its constexpr-call
    overhead, which is several microseconds per call on the host)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for grid sizes (``triton.cdiv`` without its constexpr-call overhead)."""
    return -(-a // b)


def block_size(n: int, least: int = 16) -> int:
    """The power-of-two tile that covers ``n`` (at least ``least``, which ``tl.dot`` needs)."""
    return max(least, next_power_of_2(n))


@triton.jit
def emit_tile(
    S,  # the state tile, any shape
    t,
    cursor,
    next_t,
    emit,  # (times_ptr, slots_ptr, states_ptr, HAS_EMIT) on this row: see open_schedules
    slot_stride,  # elements per slot: prod(S)
    offsets,  # the tile's offsets within one slot
    mask,
):
    """At ``t == next_t``: store ``S`` into the row's slot and advance the cursor."""
    times_ptr, slots_ptr, states_ptr, _ = emit
    if t == next_t:
        slot = tl.load(slots_ptr + cursor).to(tl.int64)
        tl.store(states_ptr + slot * slot_stride + offsets, S, mask=mask)
        cursor += 1
        next_t = tl.load(times_ptr + cursor)
    return cursor, next_t


@triton.jit
def injected_value(
    slot,
    value_ptr,  # this row's (and tile's) base in inject_value [B, Q, *S]
    value_slot_stride,
    scale_ptr,  # this row's [Q] scales
    offsets,
    mask,
    HAS_SCALE: tl.constexpr,
):
    """The value ``slot`` injects into this tile (times its scale), float32."""
    value = tl.load(value_ptr + slot * value_slot_stride + offsets, mask=mask, other=0.0)
    value = value.to(tl.float32)
    if HAS_SCALE:
        value = value * tl.load(scale_ptr + slot)
    return value


@triton.jit
def inject_tile(
    S,
    t,
    cursor,
    next_t,
    inject,  # (times_ptr, slots_ptr, value_ptr, value_slot_stride, scale_ptr, HAS_INJECT,
    #           INJECT_SET, HAS_SCALE) on this row: see open_schedules
    offsets,  # the tile's offsets within one slot of inject_value
    mask,
):
    """At ``t == next_t``: ``S += scale * value`` (or ``S = value``), advance the cursor."""
    times_ptr, slots_ptr, value_ptr, value_slot_stride, scale_ptr, _, INJECT_SET, HAS_SCALE = inject
    if t == next_t:
        slot = tl.load(slots_ptr + cursor).to(tl.int64)
        value = injected_value(
            slot, value_ptr, value_slot_stride, scale_ptr, offsets, mask, HAS_SCALE
        )
        if INJECT_SET:
            S = value
        else:
            S = S + value
        cursor += 1
        next_t = tl.load(times_ptr + cursor)
    return S, cursor, next_t


@triton.jit
def row_schedule(times_ptr, slots_ptr, i_b, count):
    """This row's ``[count + 1]`` times and slots, and its first scheduled time."""
    times_ptr += i_b * (count + 1)
    slots_ptr += i_b * (count + 1)
    return times_ptr, slots_ptr, tl.load(times_ptr)


@triton.jit
def open_schedules(emit, inject, i_b, L, P, Q):
    """Both schedules positioned on row ``i_b``.

    ``emit = (times_ptr [B, P + 1], slots_ptr [B, P + 1], states_ptr, HAS_EMIT)`` and
    ``inject = (times_ptr [B, Q + 1], slots_ptr [B, Q + 1], value_ptr, value_slot_stride,
    scale_ptr [B, Q], HAS_INJECT, INJECT_SET, HAS_SCALE)`` (the flags ``tl.constexpr``) come
    back in the same layouts with the times, slots and scales on this row (``states_ptr`` and
    ``value_ptr``, bases in ``states`` ``[B, P, *S]`` and ``inject_value`` ``[B, Q, *S]``,
    pass through), with the int32 cursors ``(e_cur, e_next, i_cur, i_next)``: each schedule's
    index and its time (``L`` when the schedule is off)."""
    e_times, e_slots, states_ptr, HAS_EMIT = emit
    i_times, i_slots, value_ptr, vq, scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE = inject
    zero = i_b * 0  # int32 scalars for the loop-carried cursors
    e_cur = zero
    e_next = zero + L
    if HAS_EMIT:
        e_times, e_slots, e_next = row_schedule(e_times, e_slots, i_b, P)
    i_cur = zero
    i_next = zero + L
    if HAS_INJECT:
        i_times, i_slots, i_next = row_schedule(i_times, i_slots, i_b, Q)
        scale_ptr += i_b * Q
    emit = (e_times, e_slots, states_ptr, HAS_EMIT)
    inject = (i_times, i_slots, value_ptr, vq, scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    return emit, inject, (e_cur, e_next, i_cur, i_next)


@triton.jit
def open_matrix_row(
    s0_ptr,  # [B, H, K, V] fp32
    emit,  # the kernel's (emit_t_ptr, emit_s_ptr, states_ptr [B, P, H, K, V], HAS_EMIT)
    inject,  # the kernel's (inj_t_ptr, inj_s_ptr, inj_v_ptr [B, Q, H, K, V] strided, iv_sq,
    #          inj_scale_ptr [B, Q], HAS_INJECT, INJECT_SET, HAS_SCALE)
    value_strides,  # (iv_sb, iv_sh): inject_value's row and head strides (state dims dense)
    L,
    H,
    K,
    V,
    P,
    Q,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
):
    """Start a program of a ``[K, V]``-state kernel (grid ``(V blocks, B * H)``).

    Returns ``S, at, tile, emit, inject, cursors``: the initial state tile ``[BK, BV]`` fp32;
    ``at = (i_b, i_h, o_k [BK], o_v [BV], m_k, m_v)`` the program's row, head, offsets and
    masks; ``tile = (o_kv, m_kv, state_off)``, the tile's ``[BK, BV]`` offsets in one state
    (and in one injected value, whose state dims are dense: :func:`dense_state_dims`), its mask
    and the row's and head's offset in ``[B, H, K, V]`` (for :func:`end_of_step`,
    :func:`emit_next`, :func:`close_matrix_row`);
    ``emit``, ``inject``, ``cursors`` both schedules positioned on the row and tile (see
    :func:`open_schedules`)."""
    iv_sb, iv_sh = value_strides
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    state_off = i_bh.to(tl.int64) * K * V
    if HAS_INITIAL:
        S = tl.load(s0_ptr + state_off + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    emit, inject, cursors = open_schedules(emit, inject, i_b, L, P, Q)
    e_times, e_slots, states_ptr, HAS_EMIT = emit  # the tile's bases, after the schedules' loads
    emit = (e_times, e_slots, states_ptr + i_b.to(tl.int64) * P * H * K * V + i_h * K * V, HAS_EMIT)
    i_times, i_slots, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE = inject
    inj_v_ptr += i_b.to(tl.int64) * iv_sb + i_h * iv_sh
    inject = (i_times, i_slots, inj_v_ptr, iv_sq, inj_scale_ptr, HAS_INJECT, INJECT_SET, HAS_SCALE)
    tile = (o_kv, m_kv, state_off)
    return S, (i_b, i_h, o_k, o_v, m_k, m_v), tile, emit, inject, cursors


@triton.jit
def emit_next(S, cursors, emit, slot_stride, tile):
    """Store ``S`` as the state at the row's next emission time; advance ``cursors``."""
    e_cur, e_next, i_cur, i_next = cursors
    e_cur, e_next = emit_tile(S, e_next, e_cur, e_next, emit, slot_stride, tile[0], tile[1])
    return e_cur, e_next, i_cur, i_next


@triton.jit
def inject_step(S, t, cursors, inject, tile):
    """Step 4 of the contract at the end of step ``t``: the row's injection there, if any (the
    groups of :func:`open_matrix_row`).  Returns ``S, cursors``."""
    e_cur, e_next, i_cur, i_next = cursors
    if inject[5]:  # HAS_INJECT
        S, i_cur, i_next = inject_tile(S, t, i_cur, i_next, inject, tile[0], tile[1])
    return S, (e_cur, e_next, i_cur, i_next)


@triton.jit
def end_of_step(S, t, cursors, emit, inject, tile, slot_stride):
    """Steps 4 and 5 of the contract at the end of step ``t``: inject, then emit (the groups of
    :func:`open_matrix_row`; ``slot_stride = H * K * V``).  Returns ``S, cursors``."""
    S, cursors = inject_step(S, t, cursors, inject, tile)
    e_cur, e_next, i_cur, i_next = cursors
    if emit[3]:  # HAS_EMIT
        e_cur, e_next = emit_tile(S, t, e_cur, e_next, emit, slot_stride, tile[0], tile[1])
    return S, (e_cur, e_next, i_cur, i_next)


@triton.jit
def piece_end(start, L, cursors, inject, BT: tl.constexpr):
    """Where the chunked kernels' piece from ``start`` ends (exclusive): ``BT`` tokens, cut
    short right after the row's next injection time (which then acts on its end state)."""
    end = tl.minimum(start + BT, L)
    if inject[5]:  # HAS_INJECT
        end = tl.minimum(end, cursors[3] + 1)
    return end


@triton.jit
def close_matrix_row(sT_ptr, S, tile, STORE_FINAL: tl.constexpr):
    """Store the final state tile ``S`` ``[BK, BV]`` into ``sT`` ``[B, H, K, V]`` if asked."""
    o_kv, m_kv, state_off = tile
    if STORE_FINAL:
        tl.store(sT_ptr + state_off + o_kv, S, mask=m_kv)
