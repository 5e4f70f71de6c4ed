"""The paper's behaviour metrics and the summaries of its figures.

* ``p_match = p(matching) / (p(matching) + p(not matching))`` and
  ``nonsense = 1 - (p(matching) + p(not matching))`` at the next-token distribution;
* "max effect over layers" per multiplier: the largest change of the mean ``p_match`` from the
  unsteered model over layers, for a positive multiplier (the most negative for a negative one);
* "maximum behaviour % difference" per mode: the total range of that change over layers and
  multipliers (the best positive minus the best negative), the paper's residual / state / both
  bars.

Changes are fractions (``0.05`` is 5 percentage points).
"""

from __future__ import annotations

import torch


def answer_probabilities(
    logits: torch.Tensor, matching: torch.Tensor, not_matching: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_match, nonsense)``, each ``[...]``, from next-token ``logits`` ``[..., V]`` and the
    answer tokens ``matching`` / ``not_matching`` ``[...]`` (int64)."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    p_yes = probabilities.gather(-1, matching.to(logits.device)[..., None])[..., 0]
    p_no = probabilities.gather(-1, not_matching.to(logits.device)[..., None])[..., 0]
    both = p_yes + p_no
    return p_yes / both, 1 - both


def effects(p_match: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Mean ``p_match`` ``[..., N]`` over prompts minus the unsteered mean (``baseline``
    ``[N]``): ``[...]``."""
    return p_match.mean(-1) - baseline.mean()


def max_effect_over_layers(
    p_match: torch.Tensor, baseline: torch.Tensor, multipliers: torch.Tensor
) -> torch.Tensor:
    """The paper's per-multiplier curve.

    Args:
        p_match: ``[modes, layers, M, N]``.
        baseline: ``[N]``, the unsteered model's ``p_match``.
        multipliers: ``[M]``.

    Returns:
        ``[modes, M]``: the largest change over layers for ``m >= 0``, the smallest (most
        negative) for ``m < 0``.
    """
    change = effects(p_match, baseline)  # [modes, layers, M]
    return torch.where(multipliers < 0, change.amin(1), change.amax(1))


def behaviour_range(p_match: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """The paper's "maximum behaviour % difference" ``[modes]`` of ``p_match``
    ``[modes, layers, M, N]``: the largest increase minus the largest decrease of the mean
    ``p_match`` over layers and multipliers (the unsteered model counts as no change)."""
    change = effects(p_match, baseline).flatten(1)  # [modes, layers * M]
    return change.amax(1).clamp_min(0) - change.amin(1).clamp_max(0)
