"""Evaluation metrics of ELK probes.

:func:`auroc` is computed exactly from ranks (the Mann-Whitney U statistic), in float64: the
probability that a randomly drawn true example scores higher than a randomly drawn false one,
ties counting one half. It equals ``sklearn.metrics.roc_auc_score`` and an explicit count over
all (true, false) pairs, at ``O(N log N)`` cost.
"""

from __future__ import annotations

import torch


def as_binary_labels(labels: torch.Tensor, n: int, name: str = "labels") -> torch.Tensor:
    """``labels`` ``[n]`` (bool, or integer/float holding only 0 and 1) as a bool tensor.

    Raises ``TypeError`` for a non-tensor and ``ValueError`` for another shape or other values;
    the messages name ``name``.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {list(labels.shape)}")
    if labels.dtype == torch.bool:
        return labels
    if labels.is_complex() or not ((labels == 0) | (labels == 1)).all():
        raise ValueError(f"{name} must be bool or hold only 0 and 1")
    return labels == 1


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` against ``labels`` ``[N]``.

    Args:
        scores: ``[N]`` real scores, higher meaning "more likely true"; finite.
        labels: ``[N]`` bool, or 0/1 integers or floats; both classes must occur.

    Returns:
        ``U / (n_true * n_false)`` as a Python float, where ``U`` is the Mann-Whitney statistic
        computed from average ranks (tied scores share the mean of their ranks, so a tie between
        a true and a false example counts 1/2).

    Example:
        >>> import torch
        >>> auroc(torch.tensor([0.1, 0.4, 0.4, 0.9]), torch.tensor([0, 0, 1, 1]))
        0.875
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {list(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    truth = as_binary_labels(labels, scores.shape[0]).to(scores.device)
    n_true = int(truth.sum())
    n_false = truth.numel() - n_true
    if n_true == 0 or n_false == 0:
        raise ValueError(f"labels must contain both classes, got {n_true} true and {n_false} false")
    values = scores.to(torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("scores must be finite")
    _, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # 1-based rank of each group's last member
    ranks = (ends - (counts - 1).to(torch.float64) / 2)[inverse]
    u = ranks[truth].sum().item() - n_true * (n_true + 1) / 2
    return u / (n_true * n_false)
