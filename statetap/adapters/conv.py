"""The Mamba / Mamba-2 convolution window as a state site (``"conv"``).

The causal depthwise convolution of width ``K`` before the scan keeps, as transformers' cache
does, a window of the last ``K`` pre-convolution inputs: after token ``t`` the window is
``x[t-K+1 .. t]`` (zeros before the sequence start), ``[C, K]`` per row.  Emitting at ``t``
returns that window (after any injection at ``t``); injecting at ``t`` edits it, which
changes the convolution output of tokens ``t+1 .. t+K-1`` — the ones that still read it —
exactly as editing the cache between token ``t`` and ``t+1`` would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from statetap.adapters.upstream import refuse_unknown
from statetap.plan import Pass


def convolve_with_window_ops(
    pass_: Pass, original: Callable, hidden_states, weight, bias=None, activation=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolve ``hidden_states`` ``[B, C, L']`` (this pass's ``L`` tokens last, after any
    padding or previous window) with ``original``, carrying out the running layer's ``"conv"``
    work.  Returns the output ``[B, C, L']`` and the final window ``[B, C, K]``."""
    if pass_.at("conv") is None:
        out = original(hidden_states, weight, bias=bias, activation=activation)
        width = weight.shape[-1]
        return out, torch.nn.functional.pad(hidden_states, (width, 0))[:, :, -width:]
    return _window_pass(pass_, original, hidden_states, weight, bias, activation)


def conv_with_window_ops(
    pass_: Pass,
    original: Callable,
    write_cache: Callable[[int, torch.Tensor], None],
    upstream: tuple[str, str],
) -> Callable:
    """A drop-in for transformers' ``causal_conv1d_fn`` (prefill) that carries out the pass's
    ``"conv"`` work for the running layer, calling ``original`` for the convolution itself.

    ``write_cache(layer, window)`` stores the final ``[B, C, K]`` window in the model's cache
    when an injection changed it.  ``seq_idx`` ``[B, L]`` (packed sequences, Mamba-2) makes
    statetap's own convolution run, which does not mix inputs across a change of ``seq_idx``
    (transformers' torch fallback ignores it); other keyword arguments raise
    :class:`UpstreamDrift`, naming ``upstream`` (package, function).
    """

    def conv(hidden_states, weight, bias=None, activation=None, seq_idx=None, **unknown):
        refuse_unknown(*upstream, unknown)
        convolve = original
        if seq_idx is not None:
            if pass_.at("conv") is not None:
                raise ValueError(
                    "emitting or injecting the 'conv' window of a pass with seq_idx (packed "
                    "sequences) is not supported; emit or inject 'ssm' or 'residual' instead"
                )
            # The input may carry the cached window before this pass's tokens: it belongs to
            # the first sequence of each row.
            before = hidden_states.shape[-1] - seq_idx.shape[-1]
            ids = torch.cat([seq_idx[:, :1].expand(-1, before), seq_idx], dim=1)
            convolve = functools.partial(causal_conv1d, seq_idx=ids)
        if pass_.at("conv") is None:
            return convolve(hidden_states, weight, bias=bias, activation=activation)
        out, window = _window_pass(pass_, original, hidden_states, weight, bias, activation)
        if pass_.at("conv").injection is not None:
            write_cache(pass_.layer, window)
        return out

    return conv


def conv_update_with_window_ops(
    pass_: Pass, original_update: Callable, original: Callable, upstream: tuple[str, str]
) -> Callable:
    """A drop-in for transformers' ``causal_conv1d_update`` (decode: ``x`` ``[B, C, L]`` after
    the window ``conv_state`` ``[B, C, K]``, updated in place) with the pass's ``"conv"`` work;
    ``original`` is the prefill convolution it reuses.  Unknown keyword arguments raise
    :class:`UpstreamDrift`, naming ``upstream`` (package, function)."""

    def update(hidden_states, conv_state, weight, bias=None, activation=None, **unknown):
        refuse_unknown(*upstream, unknown)
        if pass_.at("conv") is None:
            return original_update(
                hidden_states, conv_state, weight, bias=bias, activation=activation
            )
        full = torch.cat([conv_state, hidden_states.to(conv_state.dtype)], dim=-1)
        out, window = _window_pass(pass_, original, full, weight, bias, activation)
        conv_state.copy_(window)
        return out[..., -hidden_states.shape[-1] :].to(hidden_states.dtype)

    return update


def causal_conv1d(hidden_states, weight, bias=None, activation=None, seq_idx=None) -> torch.Tensor:
    """The causal depthwise convolution in torch: ``[B, C, L]`` with ``weight`` ``[C, K]`` ->
    ``[B, C, L]`` (output ``t`` reads inputs ``t-K+1 .. t``, zeros before the start), then
    SiLU when ``activation`` is ``"silu"``/``"swish"``.  With ``seq_idx`` ``[B, L]`` (integer
    sequence id per token), output ``t`` reads only the inputs of its own sequence."""
    channels, width = weight.shape
    padded = torch.nn.functional.pad(hidden_states, (width - 1, 0))
    weight = weight.to(hidden_states.dtype)
    bias = None if bias is None else bias.to(hidden_states.dtype)
    if seq_idx is None:
        out = torch.nn.functional.conv1d(padded, weight[:, None], bias, groups=channels)
    else:
        ids = torch.nn.functional.pad(seq_idx.to(hidden_states.device), (width - 1, 0), value=-1)
        same = ids.unfold(1, width, 1) == seq_idx[..., None]  # [B, L, K]: input of my sequence
        windows = padded.unfold(2, width, 1)  # [B, C, L, K]
        out = (windows * same[:, None].to(windows.dtype) * weight[:, None]).sum(-1)
        if bias is not None:
            out = out + bias[:, None]
    if activation in ("silu", "swish"):
        return torch.nn.functional.silu(out)
    if activation is not None:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return out


def causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None):
    """One decode step of :func:`causal_conv1d`: ``hidden_states`` ``[B, C, L]`` after the
    window ``conv_state`` ``[B, C, K]`` (updated in place).  Returns ``[B, C, L]``."""
    full = torch.cat([conv_state, hidden_states.to(conv_state.dtype)], dim=-1)
    conv_state.copy_(full[:, :, -conv_state.shape[-1] :])
    out = causal_conv1d(full, weight, bias, activation)
    return out[:, :, -hidden_states.shape[-1] :].to(hidden_states.dtype)


def _window_pass(pass_: Pass, original, hidden_states, weight, bias, activation):
    """Convolve ``hidden_states`` ``[B, C, L']`` (this pass's tokens last) with the running
    layer's window emissions and injections.  Returns the output and the final window."""
    ops = pass_.at("conv")
    width = weight.shape[-1]
    # The input may carry padding or a previous window before this pass's tokens.
    first = hidden_states.shape[-1] - pass_.length
    padded = torch.nn.functional.pad(hidden_states, (width, 0))  # index i -> i + width
    out = original(hidden_states, weight, bias=bias, activation=activation)
    injection = ops.injection
    times = set()
    for schedule in (ops.emit_schedule, None if injection is None else injection.schedule):
        if schedule is not None:
            times |= set(schedule.distinct_times())
    windows = None
    if ops.emit_at is not None:
        windows = padded.new_zeros(*ops.emit_at.shape, padded.shape[1], width, dtype=torch.float32)
    rows = torch.arange(padded.shape[0], device=padded.device)
    for t in sorted(times):
        end = first + t + width  # padded index of token t
        if injection is not None:
            hit = injection.positions == t  # [B, Q]
            if bool(hit.any()):
                _inject_window(padded, hit, injection, end, width)
                out = _recompute(
                    original, padded, out, hit.any(1), end, width, weight, bias, activation
                )
        if windows is not None:
            wanted = ops.emit_at == t  # [B, P]
            if bool(wanted.any()):
                window = padded[:, :, end - width + 1 : end + 1]  # [B, C, K]
                windows[wanted] = window[rows[:, None].expand_as(wanted)[wanted]].to(windows.dtype)
    if windows is not None:
        pass_.store("conv", pass_.layer, windows)
    return out, padded[:, :, -width:]


def _inject_window(padded, hit, injection, end, width) -> None:
    """Edit, in place, the window ending at padded index ``end`` for the rows in ``hit``."""
    rows, slots = hit.nonzero(as_tuple=True)
    window = padded[rows, :, end - width + 1 : end + 1]  # [n, C, K]
    padded[rows, :, end - width + 1 : end + 1] = injection.updated(window, rows, slots)


def _recompute(original, padded, out, rows_hit, end, width, weight, bias, activation):
    """Outputs of the ``width - 1`` tokens after padded index ``end`` from the edited input."""
    first_out = end - width + 1  # output index of the token after the edited window
    last_out = min(first_out + width - 1, out.shape[-1])
    if first_out >= last_out:
        return out
    # Output at index s reads padded[s+1 .. s+width]; give the convolution exactly that span.
    span = padded[rows_hit][:, :, first_out + 1 : last_out + width]
    fresh = original(span, weight, bias=bias, activation=activation)[:, :, width - 1 :]
    out = out.clone()
    out[rows_hit, :, first_out:last_out] = fresh.to(out.dtype)
    return out
