"""Mamba-1 selective scan: the pure-torch definition (sequential over time).

Per channel ``d`` and state index ``n``, with ``dt_t = softplus(delta_t + delta_bias)``
(softplus optional)::

    S_t[d, n] = exp(dt_t[d] * A[d, n]) * S_{t-1}[d, n] + dt_t[d] * B_t[g(d), n] * u_t[d]
    y_t[d]    = sum_n S_t[d, n] * C_t[g(d), n] + D[d] * u_t[d],   then  y_t *= silu(z_t[d])

``y_t`` reads the state *after* token ``t``; an injection at ``t`` therefore first changes
``y_{t+1}``.  Arguments follow mamba-ssm's ``selective_scan_fn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._contract import Instrumentation, ScanOutput, check_tensor, compute_dtype


def check_bc(name: str, value, batch: int, dim: int, length: int, state_size: int, device):
    """Validate B or C: ``[D, N]`` (shared over time) is returned as is; per-token ``[B, N, L]``
    or grouped ``[B, G, N, L]`` is returned as ``[B, G, N, L]`` (a view, groups not expanded)."""
    if isinstance(value, torch.Tensor) and value.dim() == 2:
        return check_tensor(name, value, (dim, state_size), ("D", "N"), device=device)
    if isinstance(value, torch.Tensor) and value.dim() == 3:
        value = value[:, None]
    check_tensor(
        name, value, (batch, None, state_size, length), ("B", "G", "N", "L"), device=device
    )
    groups = value.shape[1]
    if dim % groups:
        raise ValueError(f"{name} has G={groups} groups, which must divide D={dim}")
    return value


def validate(u, delta, A, B, C, D, z, delta_bias, instrumentation: dict):
    """Check every argument of :func:`selective_scan` (shapes, devices, dtypes, positions).

    Returns ``(B, C, instr)``: B and C as :func:`check_bc` gives them and the
    :class:`Instrumentation` of the call (compute dtype float32, or float64 for float64 inputs).
    Shared by every backend, so that all raise the same errors.
    """
    check_tensor("u", u, (None, None, None), ("B", "D", "L"))
    batch, dim, length = u.shape
    device = u.device
    check_tensor("delta", delta, (batch, dim, length), ("B", "D", "L"), device=device)
    check_tensor("A", A, (dim, None), ("D", "N"), device=device)
    state_size = A.shape[1]
    B = check_bc("B", B, batch, dim, length, state_size, device)
    C = check_bc("C", C, batch, dim, length, state_size, device)
    if D is not None:
        check_tensor("D", D, (dim,), ("D",), device=device)
    if z is not None:
        check_tensor("z", z, (batch, dim, length), ("B", "D", "L"), device=device)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, (dim,), ("D",), device=device)
    instr = Instrumentation(
        batch=batch,
        length=length,
        state_shape=(dim, state_size),
        device=device,
        dtype=compute_dtype(u, delta, A, B, C),
        **instrumentation,
    )
    return B, C, instr


# Tokens per piece of the walk: each piece's decays and inputs ``[n, B, D, N]`` are built at once
# and read while still in cache (building all L at once sends them through memory twice).
PIECE = 64


def _per_token(value: torch.Tensor) -> torch.Tensor | None:
    """Grouped ``[B, G, N, L]`` B or C as ``[L, B, G, N]`` (time first); None for ``[D, N]``."""
    return None if value.dim() == 2 else value.permute(3, 0, 1, 2)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    emit_at: torch.Tensor | None = None,
    inject_at: torch.Tensor | None = None,
    inject_value: torch.Tensor | None = None,
    inject_mode: str = "add",
    inject_scale: torch.Tensor | float | None = None,
    states_out: torch.Tensor | None = None,
) -> ScanOutput:
    """Mamba-1 selective scan with state emission and injection (reference).

    Args:
        u: ``[B, D, L]`` input.
        delta: ``[B, D, L]`` time step before bias and softplus.
        A: ``[D, N]`` state matrix (negative for a decaying state).
        B, C: ``[D, N]`` shared over time, or ``[B, N, L]``, or grouped ``[B, G, N, L]``.
        D: ``[D]`` skip weight, optional.
        z: ``[B, D, L]`` gate, optional: ``y *= silu(z)``.
        delta_bias: ``[D]`` added to ``delta`` before the softplus.
        delta_softplus: apply softplus to ``delta``.
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale, states_out: the instrumentation arguments (``docs/semantics.md``); the state
            ``S`` is ``[D, N]``.

    Returns:
        ``ScanOutput(y [B, D, L] in u.dtype, final_state [B, D, N], states [B, P, D, N])``,
        states in float32 (float64 for float64 inputs).

    Example:
        >>> u, delta = torch.randn(2, 8, 5), torch.randn(2, 8, 5)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 1, 4, 5), torch.randn(2, 1, 4, 5)
        >>> out = selective_scan(u, delta, A, B, C, delta_softplus=True,
        ...                      emit_at=torch.tensor([0, 4]), output_final_state=True)
        >>> out.states.shape, torch.equal(out.states[:, 1], out.final_state)
        (torch.Size([2, 2, 8, 4]), True)
    """
    B, C, instr = validate(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        dict(
            initial_state=initial_state,
            output_final_state=output_final_state,
            emit_at=emit_at,
            inject_at=inject_at,
            inject_value=inject_value,
            inject_mode=inject_mode,
            inject_scale=inject_scale,
            states_out=states_out,
        ),
    )
    batch, dim, length = u.shape
    dtype = instr.dtype
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A, B, C, x = A.to(dtype), B.to(dtype), C.to(dtype), u.to(dtype)

    # Time-first layouts, so that token t's values are one contiguous block: [L, B, D].
    dt_steps, drive_steps = dt.permute(2, 0, 1), (dt * x).permute(2, 0, 1)
    B_steps, C_steps = _per_token(B), _per_token(C)

    def drive_of(start: int, end: int) -> torch.Tensor:
        """``dt_t * u_t * B_t`` for tokens ``start .. end-1``: ``[n, B, D, N]``."""
        scaled = drive_steps[start:end, :, :, None]  # [n, B, D, 1]
        if B_steps is None:
            return scaled * B
        n, groups = end - start, B_steps.shape[2]
        per_group = scaled.reshape(n, batch, groups, dim // groups, 1)
        return (per_group * B_steps[start:end, :, :, None, :]).reshape(n, batch, dim, -1)

    def read(state: torch.Tensor, t: int) -> torch.Tensor:
        """``y_t[d] = sum_n S_t[d, n] C_t[g(d), n]`` for the state ``[B, D, N]``: ``[B, D]``."""
        if C_steps is None:
            return (state * C).sum(-1)
        groups = C_steps.shape[2]
        by_group = state.view(batch, groups, dim // groups, -1)  # [B, G, D/G, N]
        return (by_group @ C_steps[t, :, :, :, None]).view(batch, dim)

    def piece(state: torch.Tensor, start: int, end: int, want_states: bool):
        decays = torch.exp(dt_steps[start:end, :, :, None] * A)  # [n, B, D, N]
        drives = drive_of(start, end)
        ys, span = [], []
        for i, t in enumerate(range(start, end)):
            state = torch.addcmul(drives[i], decays[i], state)  # decay * state + drive
            ys.append(read(state, t))
            if want_states:
                span.append(state)
        return torch.stack(ys, dim=-1), state, torch.stack(span, 1) if want_states else None

    ys, final, states = instr.run_segments(instr.segments(PIECE), piece)
    y = torch.cat(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return instr.output(y.to(u.dtype), final, states)
