"""The torch paths zoo models train through: transformers' models, statetap's recurrences.

transformers' torch fallback for the Mamba-1 selective scan indexes one timestep at a time out
of ``[B, D, L, N]`` tensors; autograd answers every such index with a zero-filled tensor of the
full size, so its backward costs ``O(L^2)`` memory traffic and dominates a CPU training step.
While a zoo Mamba trains, the name transformers' mixer calls (``mamba_selective_scan``) points
at statetap's training scan instead
(:func:`kernels.selective_scan.autograd.selective_scan_autograd`: the reference recurrence with
a hand-written backward, linear in ``L`` and computed over one state buffer in place). Same
parameters, same function (the tests compare its outputs and gradients with the reference
scan's, and the model's with transformers' own scan); only the step is faster. The causal
depthwise convolution before the scan becomes ``K`` shifted multiply-adds
(:func:`causal_depthwise_conv`), whose backward is a few elementwise ops where oneDNN's
grouped-convolution backward is the slowest op of a CPU step.

RWKV-4's torch fallback (``rwkv_linear_attention_cpu``) has the same per-timestep indexing
(``key[:, t]``, ``output[:, t] = ...``); zoo RWKV-4 models train through statetap's WKV
reference (:func:`kernels.wkv4.reference.wkv4`, per-step views by ``unbind``) instead.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from statetap.adapters import rwkv
from statetap.adapters.base import patched
from statetap.adapters.mamba import MambaAdapter, transformers_selective_scan
from statetap.adapters.upstream import refuse_unknown
from statetap.kernels.selective_scan.autograd import selective_scan_autograd
from statetap.kernels.wkv4.reference import wkv4


def causal_depthwise_conv(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    **unknown,
) -> torch.Tensor:
    """transformers' ``causal_conv1d_fn`` as shifted sums: ``hidden_states`` ``[B, C, L]``,
    ``weight`` ``[C, K]``, ``bias`` ``[C]``; ``out[t] = bias + sum_k weight[k] x[t - K + 1 + k]``
    (zeros before the start), then ``activation`` (``"silu"`` or None). Returns ``[B, C, L]``.
    Other keyword arguments raise :class:`statetap.adapters.upstream.UpstreamDrift`."""
    refuse_unknown("transformers", "causal_conv1d_fn", unknown)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    length, width = hidden_states.shape[-1], weight.shape[-1]
    padded = F.pad(hidden_states.to(weight.dtype), (width - 1, 0))
    out = sum(weight[:, k, None] * padded[..., k : k + length] for k in range(width))
    if bias is not None:
        out = out + bias[:, None]
    if activation is not None:
        out = F.silu(out)
    return out.to(hidden_states.dtype)


def _decline_fused_training(*args, **kwargs) -> None:
    """transformers' ``mamba_inner_fn`` answering "no fused kernel": the mixer then runs its
    unfused path (convolution, then scan) even where mamba-ssm is installed."""
    return None


@contextlib.contextmanager
def training_path(arch: str) -> Iterator[None]:
    """Within the block, transformers' Mamba-1 mixers convolve with :func:`causal_depthwise_conv`
    and scan with statetap's training scan (``arch == "mamba"``; the fused training kernel
    ``mamba_inner_fn``, where mamba-ssm provides one, is declined so that they run), and RWKV-4
    attention runs statetap's WKV reference (``arch == "rwkv4"``); other architectures keep
    their own path."""
    if arch == "mamba":
        module = importlib.import_module(MambaAdapter.modeling_module)
        scan = transformers_selective_scan(selective_scan_autograd)
        with (
            patched(module, MambaAdapter.scan_name, scan),
            patched(module, MambaAdapter.conv_name, causal_depthwise_conv),
            patched(module, "mamba_inner_fn", _decline_fused_training),
        ):
            yield
    elif arch == "rwkv4":
        module = importlib.import_module(rwkv.MODELING_MODULE)
        with patched(module, rwkv.ATTENTION_NAME, rwkv.transformers_wkv4(wkv4)):
            yield
    else:
        yield
