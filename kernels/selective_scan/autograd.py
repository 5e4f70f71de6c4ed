"""Mamba-1 selective scan with a hand-written backward, for training on the CPU.

Autograd through the reference scan records every timestep's ops and allocates a fresh
``[B, D, N]`` tensor for each of them, forward and backward. Here the forward fills one
``[L, B, D, N]`` buffer of states in place and the backward runs the adjoint recurrence
backwards in time over one gradient buffer, in place as well; the contractions over ``N`` and
``D`` are batched matrix products. Same function as :func:`.reference.selective_scan`
(the tests compare outputs and gradients with it in float64), about half the memory traffic.

No instrumentation (``emit_at``/``inject_at``): this is the training path, where nothing is
emitted. B and C are per token and ungrouped, ``[B, N, L]`` (what transformers' Mamba passes).

Adjoint of ``S_t = a_t * S_{t-1} + b_t`` with ``a_t = exp(dt_t A)``, ``b_t = dt_t x_t B_t``
and ``y_t = S_t C_t``: with ``G_t = dL/dS_t``, ``G_t = dy_t C_t + a_{t+1} G_{t+1}``; then
``dL/da_t = G_t S_{t-1}`` and ``dL/db_t = G_t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._contract import ScanOutput, check_tensor


class _Recurrence(torch.autograd.Function):
    """``(dt, x [L, B, D], A [D, N], B, C [L, B, N]) -> (y [L, B, D], S_{L-1} [B, D, N])``.

    States are laid out ``[L, B, N, D]``: the channel axis, the long one, is innermost, so every
    elementwise op runs over contiguous rows of ``D``.
    """

    @staticmethod
    def forward(ctx, dt, x, A, B, C):
        decay = (dt[:, :, None, :] * A.T).exp_()  # [L, B, N, D]
        dtx = dt * x
        states = B[..., None] * dtx[:, :, None, :]  # the drive b_t, turned into S_t in place
        for t in range(1, len(states)):
            states[t].addcmul_(decay[t], states[t - 1])
        y = (C[:, :, None, :] @ states).squeeze(-2)
        ctx.save_for_backward(dt, x, A, B, C, decay, states)
        return y, states[-1].transpose(-1, -2).clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        dt, x, A, B, C, decay, states = ctx.saved_tensors
        grad = C[..., None] * grad_y[:, :, None, :]  # dL/dS_t, [L, B, N, D]
        if grad_final is not None:
            grad[-1] += grad_final.transpose(-1, -2)
        for t in range(len(grad) - 2, -1, -1):
            grad[t].addcmul_(decay[t + 1], grad[t + 1])
        grad_C = (states @ grad_y[..., None]).squeeze(-1)
        grad_dtx = (B[:, :, None, :] @ grad).squeeze(-2)
        grad_B = (grad @ (dt * x)[..., None]).squeeze(-1)
        # dL/d(dt A) at t >= 1 is G_t * S_{t-1} * a_t; S_{-1} = 0 contributes nothing at t = 0.
        grad_log_decay = (decay[1:] * states[:-1]).mul_(grad[1:])
        grad_dt = grad_dtx * x
        grad_dt[1:] += torch.einsum("lbnd,nd->lbd", grad_log_decay, A.T)
        grad_A = torch.einsum("lbnd,lbd->dn", grad_log_decay, dt[1:])
        return grad_dt, grad_dtx * dt, grad_A, grad_B, grad_C


def _ungrouped(value: object) -> object:
    """``[B, 1, N, L]`` (one group) as ``[B, N, L]``; anything else unchanged, for checking."""
    grouped = isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[1] == 1
    return value[:, 0] if grouped else value


def selective_scan_autograd(
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
    output_final_state: bool = False,
) -> ScanOutput:
    """Mamba-1 selective scan, differentiable with a hand-written backward (no instrumentation).

    Args:
        u: ``[B, D, L]`` input; delta: ``[B, D, L]`` time step before bias and softplus.
        A: ``[D, N]``; B, C: ``[B, N, L]`` per token (or ``[B, 1, N, L]``).
        D: ``[D]`` skip weight; z: ``[B, D, L]`` gate (``y *= silu(z)``); delta_bias: ``[D]``;
        delta_softplus: as in :func:`.reference.selective_scan`.
        output_final_state: also return the state after the last token.

    Returns:
        ``ScanOutput(y [B, D, L] in u.dtype, final_state [B, D, N] or None, None)``; the
        arithmetic runs in float32 (float64 for float64 inputs).

    Example:
        >>> u, delta = torch.randn(2, 8, 5), torch.randn(2, 8, 5)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 4, 5), torch.randn(2, 4, 5)
        >>> selective_scan_autograd(u, delta, A, B, C, delta_softplus=True).y.shape
        torch.Size([2, 8, 5])
    """
    check_tensor("u", u, (None, None, None), ("B", "D", "L"))
    batch, dim, length = u.shape
    check_tensor("delta", delta, (batch, dim, length), ("B", "D", "L"), device=u.device)
    check_tensor("A", A, (dim, None), ("D", "N"), device=u.device)
    state_size = A.shape[1]
    B, C = (
        check_tensor(
            name, _ungrouped(value), (batch, state_size, length), ("B", "N", "L"), device=u.device
        )
        for name, value in (("B", B), ("C", C))
    )
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    x = u.to(dtype)

    def time_major(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).permute(2, 0, 1).contiguous()  # [B, *, L] -> [L, B, *]

    y, final = _Recurrence.apply(
        time_major(dt), time_major(x), A.to(dtype), time_major(B), time_major(C)
    )
    y = y.permute(1, 2, 0)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return ScanOutput(y.to(u.dtype), final if output_final_state else None, None)
