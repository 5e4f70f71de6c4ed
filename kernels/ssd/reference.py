"""Mamba-2 SSD (state-space duality): the pure-torch definitions.

Per head ``h`` (scalar decay), head channel ``p`` and state index ``n``, with
``dt_t = clamp(softplus(dt_t + dt_bias), *dt_limit)`` and ``g(h)`` the group of head ``h``::

    S_t[h, p, n] = exp(dt_t[h] * A[h]) * S_{t-1}[h, p, n] + dt_t[h] * x_t[h, p] * B_t[g, n]
    y_t[h, p]    = sum_n S_t[h, p, n] * C_t[g, n] + D[h(, p)] * x_t[h, p],  then y_t *= silu(z_t)

``y_t`` reads the state after token ``t``.  Where ``seq_idx`` changes between ``t-1`` and
``t`` the state is reset to zero before token ``t`` (packed sequences).  Arguments follow
mamba-ssm's ``mamba_chunk_scan_combined``.

:func:`ssd_sequential` is the definition; :func:`ssd_chunked` is the blocked form a fast
kernel takes (intra-chunk quadratic term plus the state carried between chunks) and agrees
with it for every chunk size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._chunk_math import causal_decay
from .._contract import Instrumentation, ScanOutput, check_tensor, compute_dtype


@dataclass
class _Inputs:
    """Validated, discretised inputs in the compute dtype, heads expanded."""

    xdt: torch.Tensor  # [B, L, H, P]  dt * x
    dA: torch.Tensor  # [B, L, H]     dt * A  (log decay)
    B: torch.Tensor  # [B, L, H, N]
    C: torch.Tensor  # [B, L, H, N]
    reset: torch.Tensor | None  # [B, L] bool: state zeroed before token t
    instr: Instrumentation


def validate(
    x, dt, A, B, C, D, z, dt_bias, dt_limit, seq_idx, initial_states, instrumentation
) -> tuple[Instrumentation, torch.Tensor | None]:
    """Check every argument of :func:`ssd_chunked` (shapes, devices, dtypes, positions).

    Returns ``(instr, reset)``: the :class:`Instrumentation` of the call (compute dtype float32,
    or float64 for float64 inputs) and ``reset`` ``[B, L]`` bool (state zeroed before token
    ``t``; from ``seq_idx``) or None.  Shared by every backend, so that all raise the same errors.
    """
    check_tensor("x", x, (None, None, None, None), ("B", "L", "H", "P"))
    batch, length, heads, head_dim = x.shape
    device = x.device
    check_tensor("dt", dt, (batch, length, heads), ("B", "L", "H"), device=device)
    check_tensor("A", A, (heads,), ("H",), device=device)
    check_tensor("B", B, (batch, length, None, None), ("B", "L", "G", "N"), device=device)
    groups, state_size = B.shape[2:]
    check_tensor("C", C, (batch, length, groups, state_size), ("B", "L", "G", "N"), device=device)
    if heads % groups:
        raise ValueError(f"B and C have G={groups} groups, which must divide H={heads}")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, (heads,), ("H",), device=device)
    if D is not None:
        per_channel = getattr(D, "dim", lambda: 1)() == 2  # [H, P] rather than [H]
        check_tensor(
            "D",
            D,
            (heads, head_dim) if per_channel else (heads,),
            ("H", "P") if per_channel else ("H",),
            device=device,
        )
    if z is not None:
        check_tensor("z", z, (batch, length, heads, head_dim), ("B", "L", "H", "P"), device=device)
    if not (isinstance(dt_limit, tuple) and len(dt_limit) == 2 and dt_limit[0] <= dt_limit[1]):
        raise ValueError(f"dt_limit must be a (low, high) tuple with low <= high, got {dt_limit!r}")
    if initial_states is not None:
        if instrumentation.get("initial_state") is not None:
            raise ValueError("pass initial_state or its mamba-ssm alias initial_states, not both")
        instrumentation = {**instrumentation, "initial_state": initial_states}
    reset = None
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, (batch, length), ("B", "L"), device=device, floating=False)
        if seq_idx.is_floating_point() or seq_idx.dtype == torch.bool:
            raise TypeError(
                f"seq_idx must be an integer tensor of shape [B, L], got {seq_idx.dtype}"
            )
        reset = torch.zeros(batch, length, dtype=torch.bool, device=device)
        reset[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]

    dtype = compute_dtype(x, dt, A, B, C)
    instr = Instrumentation(
        batch=batch,
        length=length,
        state_shape=(heads, head_dim, state_size),
        device=device,
        dtype=dtype,
        **instrumentation,
    )
    return instr, reset


def _prepare(
    x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, seq_idx, initial_states, instrumentation
) -> _Inputs:
    instr, reset = validate(
        x, dt, A, B, C, D, z, dt_bias, dt_limit, seq_idx, initial_states, instrumentation
    )
    dtype, heads, groups = instr.dtype, x.shape[2], B.shape[2]
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, math.inf):
        dt = dt.clamp(*dt_limit)
    repeat = heads // groups
    return _Inputs(
        xdt=x.to(dtype) * dt[..., None],
        dA=dt * A.to(dtype),
        B=B.to(dtype).repeat_interleave(repeat, dim=2),
        C=C.to(dtype).repeat_interleave(repeat, dim=2),
        reset=reset,
        instr=instr,
    )


def _finish(inputs: _Inputs, ys, final, states, x, D, z) -> ScanOutput:
    """Stack the outputs, add the ``D`` skip and the ``z`` gate, cast to ``x.dtype``."""
    dtype = inputs.instr.dtype
    y = torch.cat(ys, dim=1)
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D).to(dtype) * x.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return inputs.instr.output(y.to(x.dtype), final, states)


# The longest piece the chunked form computes at once: its [B, H, n, n] pair products cost n^2 per
# head, its state hand-over n P N; 64 tokens balance the two on a CPU at Mamba-2's sizes.
PIECE = 64


def ssd_sequential(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=None,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    **instrumentation,
) -> ScanOutput:
    """Mamba-2 SSD, one token at a time: the definition.  Same arguments as :func:`ssd_chunked`
    (``chunk_size`` is accepted for signature parity and ignored)."""
    inputs = _prepare(
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        dt_softplus,
        dt_limit,
        seq_idx,
        initial_states,
        instrumentation,
    )

    def step(state: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.reset is not None:
            state = torch.where(inputs.reset[:, t, None, None, None], 0.0, state)
        decay = torch.exp(inputs.dA[:, t])[..., None, None]
        state = decay * state + inputs.xdt[:, t, :, :, None] * inputs.B[:, t, :, None, :]
        return state, torch.einsum("bhpn,bhn->bhp", state, inputs.C[:, t])[:, None]

    ys, final, states = inputs.instr.run_steps(step)
    return _finish(inputs, ys, final, states, x, D, z)


def ssd_chunked(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    **instrumentation,
) -> ScanOutput:
    """Mamba-2 SSD with state emission and injection, in chunked form (reference).

    Args:
        x: ``[B, L, H, P]`` input.
        dt: ``[B, L, H]`` time step before bias, softplus and clamp.
        A: ``[H]`` per-head decay rate (negative).
        B, C: ``[B, L, G, N]``; ``G`` divides ``H``.
        chunk_size: tokens per chunk (any positive int here; kernels use powers of two).  The
            same function for every chunk size; chunks longer than :data:`PIECE` tokens are
            walked in pieces of at most that many (the in-chunk products grow with its square).
        D: ``[H]`` or ``[H, P]`` skip weight; z: ``[B, L, H, P]`` gate, ``y *= silu(z)``.
        dt_bias: ``[H]``; dt_softplus: apply softplus; dt_limit: ``(low, high)`` clamp,
            applied unless it is the default ``(0, inf)`` (as mamba-ssm does).
        initial_states: mamba-ssm's name for ``initial_state`` ``[B, H, P, N]``.
        seq_idx: ``[B, L]`` integer sequence id per token; the state resets to zero where it
            changes (``initial_state`` seeds the first sequence only).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments (``docs/semantics.md``); the state
            ``S`` is ``[H, P, N]``.

    Returns:
        ``ScanOutput(y [B, L, H, P] in x.dtype, final_state [B, H, P, N],
        states [B, P', H, P, N])`` (``P'`` emission slots).

    Example:
        >>> x, dt = torch.randn(1, 10, 4, 8), torch.randn(1, 10, 4)
        >>> A, B, C = -torch.rand(4), torch.randn(1, 10, 1, 16), torch.randn(1, 10, 1, 16)
        >>> out = ssd_chunked(x, dt, A, B, C, chunk_size=4, dt_softplus=True,
        ...                   emit_at=torch.tensor([3, 9]), output_final_state=True)
        >>> torch.equal(out.states[:, 1], out.final_state)
        True
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    inputs = _prepare(
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        dt_softplus,
        dt_limit,
        seq_idx,
        initial_states,
        instrumentation,
    )
    instr = inputs.instr
    starts = []
    if inputs.reset is not None:
        starts = inputs.reset.any(0).nonzero().flatten().tolist()

    def piece(state, start, end, want_states):
        if inputs.reset is not None:
            state = torch.where(inputs.reset[:, start, None, None, None], 0.0, state)
        xdt, dA = inputs.xdt[:, start:end], inputs.dA[:, start:end]
        Bc, Cc = inputs.B[:, start:end], inputs.C[:, start:end]
        # Heads first, [B, H, n, *], and every product a matmul of two operands (torch.einsum
        # contracts more than two from the left, and C x decay first is an [B, n, n, H, N] tensor).
        decay = causal_decay(dA[..., None])[..., 0].permute(0, 3, 1, 2)  # [B, H, i, j]
        from_start = torch.exp(dA.cumsum(1)).transpose(1, 2)  # [B, H, n]: exp(g_i)
        Ch, Bh, xh = Cc.transpose(1, 2), Bc.transpose(1, 2), xdt.transpose(1, 2)
        scores = decay * (Ch @ Bh.transpose(-1, -2))  # exp(g_i - g_j) C_i . B_j, j <= i
        y = scores @ xh + from_start[..., None] * (Ch @ state.transpose(-1, -2))  # [B, H, n, P]
        y = y.transpose(1, 2)
        last = decay[:, :, -1]  # [B, H, n]: exp(g_end - g_j)
        span = None
        if want_states:
            outer = (xh[..., None] * Bh[:, :, :, None, :]).flatten(-2)  # [B, H, n, P N]
            span = (decay @ outer).unflatten(-1, state.shape[-2:])  # [B, H, n, P, N]
            span = (span + from_start[..., None, None] * state[:, :, None]).transpose(1, 2)
        end_state = from_start[:, :, -1, None, None] * state
        end_state = end_state + (last[..., None] * xh).transpose(-1, -2) @ Bh  # [B, H, P, N]
        return y, end_state, span

    pieces = instr.segments(min(chunk_size, PIECE), starts)
    ys, final, states = instr.run_segments(pieces, piece)
    return _finish(inputs, ys, final, states, x, D, z)
