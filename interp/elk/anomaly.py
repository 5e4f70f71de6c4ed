"""Mechanistic anomaly detection (Mallen et al.): is this context Alice's or Bob's?

A Gaussian is fitted to some trusted representation of Alice's *easy* examples (in the ELK
experiments: a probe's credence at every layer); a new example's anomaly score is its squared
Mahalanobis distance to that Gaussian. Bob's examples, on which the model's computation
differs, should lie further out than Alice's hard ones, and the detector's AUROC for telling
them apart measures how well that works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MahalanobisDetector:
    """Squared Mahalanobis distance to a Gaussian fitted on normal examples.

    Attributes:
        ridge: added to the covariance's diagonal, relative to its mean variance (keeps the
            precision finite when a direction has no variance, e.g. two identical layers).
    """

    ridge: float = 1e-6
    mean: torch.Tensor | None = field(default=None, init=False, repr=False)
    precision: torch.Tensor | None = field(default=None, init=False, repr=False)

    def fit(self, normal: torch.Tensor) -> MahalanobisDetector:
        """Fit on ``normal`` ``[M, D]`` (``M >= 2``) real, finite."""
        x = _check(normal, "normal")
        if x.shape[0] < 2:
            raise ValueError(f"normal needs at least 2 examples to fit, got {x.shape[0]}")
        self.mean = x.mean(0)
        centred = x - self.mean
        cov = centred.T @ centred / (x.shape[0] - 1)
        scale = cov.diagonal().mean().clamp_min(torch.finfo(cov.dtype).tiny)
        cov = cov + self.ridge * scale * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.precision = torch.linalg.inv(cov)
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``[N]`` float64 squared distances of ``features`` ``[N, D]`` (higher: anomalous)."""
        if self.mean is None:
            raise ValueError("fit the detector before scoring")
        x = _check(features, "features")
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features must have {self.mean.shape[0]} columns like the fit, got {x.shape[1]}"
            )
        centred = x - self.mean
        return ((centred @ self.precision) * centred).sum(1)


def _check(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating torch.Tensor")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x.to(torch.float64).cpu()
