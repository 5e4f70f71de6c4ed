"""Activation patching: how much of the clean-corrupt gap each (site, layer, position) carries.

Each patch sets one site of the corrupted run, at one layer and after one token, to its value
in the clean run (``residual`` / ``mixer``: the activation at that token; a state component:
the state after it, the paper's cache edit) and reads the metric at the last token.  The
effect is the fraction of the gap recovered, ``(patched - corrupt) / (clean - corrupt)``.
The sweep is batched (:mod:`statetap.interp.patching.sweep`): a few passes per site, not one
per patch.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.patching import activation_patching
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> clean = torch.randint(0, 64, (2, 7))
    >>> corrupt = clean.clone(); corrupt[:, 2] = 5
    >>> answers = torch.tensor([1, 2]), torch.tensor([3, 4])  # answer and wrong token per pair
    >>> result = activation_patching(tap, clean, corrupt, answers)
    >>> result.effect["ssm"].shape, result.mean_effect("residual").shape  # [N, layers, L]
    (torch.Size([2, 2, 7]), torch.Size([2, 7]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from statetap import Tap
from statetap.interp.patching.metrics import Metric, fraction_recovered, logit_difference
from statetap.interp.patching.result import PatchingResult
from statetap.interp.patching.sweep import patch_sweep


def activation_patching(
    tap: Tap,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric | tuple[torch.Tensor, torch.Tensor],
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | str = "all",
    positions: Sequence[int] | None = None,
    batch_tokens: int = 2048,
    same_length: bool = False,
) -> PatchingResult:
    """Patch every (site, layer, position) of the clean run into the corrupted one.

    Args:
        tap: the model's :class:`statetap.Tap`.
        clean, corrupt: ``[N, L]`` token ids, aligned position by position.
        metric: ``(answer, wrong)``, two ``[N]`` token-id tensors (the metric is then the
            logit difference ``answer - wrong`` at the last token), or any
            ``metric(logits [B, V], pairs [B]) -> [B]``.
        sites, layers, positions, batch_tokens, same_length: see
            :func:`statetap.interp.patching.sweep.patch_sweep` (default sites: ``residual``,
            ``mixer`` and each state component).

    Returns:
        A :class:`PatchingResult`: ``effect[site]`` ``[N, layers, positions]`` is the fraction
        of the gap recovered (NaN for a pair whose clean and corrupted metrics are equal).
    """
    if isinstance(metric, tuple):
        if len(metric) != 2:
            raise ValueError("metric must be (answer, wrong) token ids or a callable")
        metric = logit_difference(*metric)
    if not callable(metric):
        raise TypeError(f"metric must be (answer, wrong) token ids or a callable, got {metric!r}")
    found = patch_sweep(
        tap,
        clean,
        corrupt,
        metric,
        sites=sites,
        layers=layers,
        positions=positions,
        batch_tokens=batch_tokens,
        same_length=same_length,
    )
    return found.to_result("activation patching", fraction_recovered)
