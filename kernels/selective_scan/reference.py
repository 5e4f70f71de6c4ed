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


def _expand_groups(value: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, G, N, L]`` -> ``[B, D, N, L]`` (channel ``d`` reads group ``d // (D / G)``)."""
    return value if value.dim() == 2 else value.repeat_interleave(dim // value.shape[1], dim=1)


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
        inject_scale: the instrumentation arguments (``docs/semantics.md``); the state
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
        ),
    )
    dim, dtype = u.shape[1], instr.dtype
    B, C = _expand_groups(B, dim), _expand_groups(C, dim)

    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A, B, C, x = A.to(dtype), B.to(dtype), C.to(dtype), u.to(dtype)

    # Every step's decay and input term at once, [B, D, L, N]; the loop only accumulates.
    decay = torch.exp(dt[..., None] * A[:, None, :])
    drive = (dt * x)[..., None] * (B[:, None, :] if B.dim() == 2 else B.transpose(-1, -2))
    C = C[:, None, :] if C.dim() == 2 else C.transpose(-1, -2)
    # Per-step views by unbind, not by indexing: autograd then gathers their gradients with one
    # stack instead of a zero-filled [B, D, L, N] tensor per step (training through this scan).
    decays, drives = decay.unbind(2), drive.unbind(2)
    c_steps = C.unbind(2) if C.dim() == 4 else [C[:, 0]] * len(decays)

    def step(state: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        state = decays[t] * state + drives[t]
        return state, (state * c_steps[t]).sum(-1)

    ys, final, states = instr.run_steps(step)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return instr.output(y.to(u.dtype), final, states)
