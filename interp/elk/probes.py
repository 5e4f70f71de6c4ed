"""Linear probes for eliciting latent knowledge (ELK) from hidden states.

Every probe has the same two methods:

* ``fit(features, labels, negation=None) -> self``: ``features`` ``[N, D]`` real,
  ``labels`` ``[N]`` (bool or 0/1; ``True`` = the statement is true), ``negation`` ``[N, D]``
  the features of each statement's contrast pair partner (its negation), or ``None``;
* ``score(features, negation=None) -> [N]`` float64: higher = more likely true. Given with
  ``negation`` at fit time, ``negation`` must be given at score time too, and not otherwise.

All arithmetic is float64 on the features' device; the fitted parameters are float64 tensors.

========================  ===========  ================================  =====================
probe                     labels       input                             ``score`` returns
========================  ===========  ================================  =====================
:class:`LogisticProbe`    required     features, or pairs (difference)   logit
:class:`MeanDiffProbe`    required     features, or pairs (difference)   Platt-calibrated logit
:class:`LdaProbe`         required     features, or pairs (difference)   projection (0 = boundary)
:class:`CcsProbe`         sign only    pairs only                        probability
:class:`CrcProbe`         sign only    pairs only                        projection
:class:`RandomProbe`      ignored      features, or pairs (difference)   projection
========================  ===========  ================================  =====================

Pair variants: the supervised probes and the random baseline, given ``negation``, fit and
score the pair difference ``features - negation``, exactly as if that difference had been
passed as ``features``. CCS and CRC are defined on pairs and require ``negation``.

The unsupervised probes (CCS, CRC) find a direction up to sign. As in the ELK literature,
the sign is oriented with the training labels when they are given: the probe is flipped when
its AUROC on the training set is below 0.5. Without labels the sign is arbitrary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from concept_erasure import LeaceEraser, LeaceFitter

from statetap.interp.elk.metrics import as_binary_labels, auroc


def _check_features(features: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor, got {features.dtype}")
    if features.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {list(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} must be finite")
    return features.detach().to(torch.float64)


def _check_pair(
    features: torch.Tensor, negation: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = _check_features(features, "features")
    if negation is None:
        return x, None
    neg = _check_features(negation, "negation")
    if neg.shape != x.shape:
        raise ValueError(
            f"negation must have the shape of features {list(x.shape)}, got {list(neg.shape)}"
        )
    return x, neg.to(x.device)


def _check_training_labels(labels: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    y = as_binary_labels(labels, n).to(device)
    n_true = int(y.sum())
    if n_true == 0 or n_true == n:
        raise ValueError(
            f"labels must contain both classes to fit a probe, got {n_true} true of {n}"
        )
    return y


def _standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)`` ``[D]``: column means and standard deviations (1 where constant)."""
    shift = x.mean(0)
    scale = x.std(0, correction=0)
    return shift, torch.where(scale > 0, scale, torch.ones_like(scale))


def _lbfgs(
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    w: torch.Tensor,
    b: torch.Tensor,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w [D], b [])`` minimising ``objective(w, b)`` by full-batch L-BFGS (strong-Wolfe
    line search) from the given start."""
    w = w.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(w, b)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def _fit_logistic(
    z: torch.Tensor, targets: torch.Tensor, l2: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w [D], b [])`` minimising ``mean BCE(z @ w + b, targets) + l2/2 * ||w||^2`` from
    zero; ``targets`` ``[N]`` in [0, 1]."""

    def objective(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(z @ w + b, targets)
        return loss + 0.5 * l2 * w.square().sum()

    zeros = torch.zeros(z.shape[1] + 1, dtype=z.dtype, device=z.device)
    return _lbfgs(objective, zeros[1:], zeros[0], max_iter)


def fit_eraser(features: torch.Tensor, concept: torch.Tensor) -> LeaceEraser:
    """A LEACE eraser (Belrose et al. 2023, ``concept_erasure.LeaceFitter``) of ``concept``.

    Args:
        features: ``[M, D]`` real.
        concept: ``[M]`` or ``[M, K]`` real (a 0/1 indicator, or one-hot columns).

    Returns:
        The affine eraser ``x -> x - (x - mean) @ P.T`` fitted in float64 with the package's
        defaults (shrunk covariance estimate, singular values of the whitened cross-covariance
        below 0.01 ignored) except ``constrain_cov_trace=False``: the exact LEACE projection,
        whose guarantee is that the erased features' class-conditional means coincide, so no
        linear classifier does better than a constant at predicting ``concept``.
    """
    x = _check_features(features, "features")
    if not isinstance(concept, torch.Tensor):
        raise TypeError(f"concept must be a torch.Tensor, got {type(concept).__name__}")
    if concept.ndim not in (1, 2) or concept.shape[0] != x.shape[0]:
        raise ValueError(
            f"concept must have shape [{x.shape[0]}] or [{x.shape[0]}, K], "
            f"got {list(concept.shape)}"
        )
    z = concept.to(device=x.device, dtype=torch.float64).reshape(x.shape[0], -1)
    return LeaceFitter.fit(x, z, constrain_cov_trace=False).eraser


@dataclass
class Probe(ABC):
    """The common interface; see the module docstring.

    Attributes:
        dim: ``D`` of the training features (``None`` before ``fit``).
        paired: whether ``fit`` was given ``negation``.
    """

    dim: int | None = field(default=None, init=False, repr=False)
    paired: bool | None = field(default=None, init=False, repr=False)

    @abstractmethod
    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
    ) -> Probe:
        """Fit on ``features`` ``[N, D]`` with ``labels`` ``[N]`` and optional pairs."""

    @abstractmethod
    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """``[N]`` float64 scores, higher = more likely true."""

    def _fit_inputs(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None,
        negation: torch.Tensor | None,
        *,
        supervised: bool,
        pairs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Checked ``(features, labels, negation)`` as float64 / bool; records ``dim`` and
        ``paired``."""
        x, neg = _check_pair(features, negation)
        name = type(self).__name__
        if pairs and neg is None:
            raise ValueError(f"{name} works on contrast pairs: negation [N, D] is required")
        if labels is None:
            if supervised:
                raise ValueError(f"{name} is supervised: labels [N] are required")
            if x.shape[0] < 2:
                raise ValueError(f"features must have at least 2 rows, got {x.shape[0]}")
            y = None
        else:
            y = _check_training_labels(labels, x.shape[0], x.device)
        self.dim = x.shape[1]
        self.paired = neg is not None
        return x, y, neg

    def _score_inputs(
        self, features: torch.Tensor, negation: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        name = type(self).__name__
        if self.dim is None:
            raise RuntimeError(f"{name} is not fitted: call fit() first")
        x, neg = _check_pair(features, negation)
        if x.shape[1] != self.dim:
            raise ValueError(f"features must have {self.dim} columns (as in fit), got {x.shape[1]}")
        if self.paired and neg is None:
            raise ValueError(f"{name} was fitted on contrast pairs: negation is required")
        if not self.paired and neg is not None:
            raise ValueError(f"{name} was fitted without pairs: negation must be None")
        return x, neg


def _difference(x: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
    return x if neg is None else x - neg


@dataclass
class LogisticProbe(Probe):
    """L2-regularised logistic regression, fitted by full-batch L-BFGS in float64.

    Features are standardised with the training set's column means and standard deviations
    (constant columns left unscaled); on the standardised features ``z`` the probe minimises
    ``mean_i BCE(z_i @ w + b, y_i) + l2 / 2 * ||w||^2``, the bias unregularised. ``weight``
    and ``bias`` are folded back to the raw features, so ``score(x) = x @ weight + bias``,
    the logit of ``p(true)``.

    Attributes:
        l2: the penalty on the standardised weights (> 0 keeps separable data finite).
        max_iter: L-BFGS iterations.
        weight, bias: ``[D]`` and ``[]``, in raw feature space (after ``fit``).
        shift, scale: ``[D]`` the standardisation (after ``fit``).
    """

    l2: float = 1e-3
    max_iter: int = 500
    weight: torch.Tensor | None = field(default=None, init=False, repr=False)
    bias: torch.Tensor | None = field(default=None, init=False, repr=False)
    shift: torch.Tensor | None = field(default=None, init=False, repr=False)
    scale: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
    ) -> LogisticProbe:
        """Fit on ``features`` ``[N, D]`` (or ``features - negation``) and ``labels`` ``[N]``."""
        x, y, neg = self._fit_inputs(features, labels, negation, supervised=True, pairs=False)
        x = _difference(x, neg)
        self.shift, self.scale = _standardizer(x)
        w, b = _fit_logistic((x - self.shift) / self.scale, y.to(x.dtype), self.l2, self.max_iter)
        self.weight = w / self.scale
        self.bias = b - self.shift @ self.weight
        return self

    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N]`` of ``p(true)``."""
        x, neg = self._score_inputs(features, negation)
        return _difference(x, neg) @ self.weight + self.bias


@dataclass
class MeanDiffProbe(Probe):
    """Difference of class means, calibrated by Platt scaling.

    ``direction = mean(features | true) - mean(features | false)`` (not normalised). The
    projections ``features @ direction`` are calibrated by Platt's method: an unregularised
    1-D logistic regression (L-BFGS) with Platt's smoothed targets ``(n_true + 1) /
    (n_true + 2)`` for true and ``1 / (n_false + 2)`` for false examples, which keeps the fit
    finite on separable data. ``score(x) = slope * (x @ direction) + intercept``, a logit.

    Attributes:
        max_iter: L-BFGS iterations of the Platt fit.
        direction: ``[D]``; slope, intercept: ``[]`` (after ``fit``).
    """

    max_iter: int = 100
    direction: torch.Tensor | None = field(default=None, init=False, repr=False)
    slope: torch.Tensor | None = field(default=None, init=False, repr=False)
    intercept: torch.Tensor | None = field(default=None, init=False, repr=False)

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
    ) -> MeanDiffProbe:
        """Fit on ``features`` ``[N, D]`` (or ``features - negation``) and ``labels`` ``[N]``."""
        x, y, neg = self._fit_inputs(features, labels, negation, supervised=True, pairs=False)
        x = _difference(x, neg)
        self.direction = x[y].mean(0) - x[~y].mean(0)
        projection = (x @ self.direction)[:, None]
        n_true = int(y.sum())
        n_false = y.numel() - n_true
        targets = torch.where(y, (n_true + 1) / (n_true + 2), 1 / (n_false + 2)).to(x.dtype)
        shift, scale = _standardizer(projection)
        w, b = _fit_logistic((projection - shift) / scale, targets, 0.0, self.max_iter)
        self.slope = w[0] / scale[0]
        self.intercept = b - self.slope * shift[0]
        return self

    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """Platt-calibrated logits ``[N]`` of ``p(true)``."""
        x, neg = self._score_inputs(features, negation)
        return self.slope * (_difference(x, neg) @ self.direction) + self.intercept


@dataclass
class LdaProbe(Probe):
    """Fisher's linear discriminant.

    ``direction = (S_w + ridge * tr(S_w) / D * I)^{-1} (mu_true - mu_false)``, where ``S_w``
    is the pooled within-class covariance ``sum_c (X_c - mu_c)^T (X_c - mu_c) / (N - 2)``
    (divided by 1 when ``N = 2``); the ridge is relative to the mean eigenvalue of ``S_w``
    (absolute when ``S_w = 0``). ``score(x) = (x - (mu_true + mu_false) / 2) @ direction``:
    positive on the true side of the equal-prior boundary; not a calibrated logit.

    Attributes:
        ridge: relative ridge added to ``S_w`` (>= 0; > 0 when ``D`` exceeds ``N - 2``).
        direction, midpoint: ``[D]`` (after ``fit``).
    """

    ridge: float = 1e-3
    direction: torch.Tensor | None = field(default=None, init=False, repr=False)
    midpoint: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
    ) -> LdaProbe:
        """Fit on ``features`` ``[N, D]`` (or ``features - negation``) and ``labels`` ``[N]``."""
        x, y, neg = self._fit_inputs(features, labels, negation, supervised=True, pairs=False)
        x = _difference(x, neg)
        mu_true, mu_false = x[y].mean(0), x[~y].mean(0)
        centred = torch.where(y[:, None], x - mu_true, x - mu_false)
        within = centred.T @ centred / max(x.shape[0] - 2, 1)
        trace = within.trace()
        level = trace / x.shape[1] if trace > 0 else torch.ones_like(trace)
        regularised = within + self.ridge * level * torch.eye(
            x.shape[1], dtype=x.dtype, device=x.device
        )
        self.direction = torch.linalg.solve(regularised, mu_true - mu_false)
        self.midpoint = (mu_true + mu_false) / 2
        return self

    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """Signed projections ``[N]`` onto the discriminant, 0 at the midpoint of the means."""
        x, neg = self._score_inputs(features, negation)
        return (_difference(x, neg) - self.midpoint) @ self.direction


@dataclass
class CcsProbe(Probe):
    """Contrast-consistent search (Burns et al. 2022), unsupervised, on contrast pairs.

    Each side of the pairs is centred by its own training mean, and both are divided by one
    shared scalar (the root-mean-square entry of the centred training features, which only
    conditions the optimisation). With ``p(x) = sigmoid(x @ w + b)`` on the normalised
    features the probe minimises the mean over pairs of

        ``(p(x+) - (1 - p(x-)))^2 + min(p(x+), p(x-))^2``  (consistency + confidence)

    by full-batch L-BFGS from ``restarts`` random starts (``w ~ N(0, I / D)``, ``b = 0``,
    drawn from ``seed``), keeping the lowest loss. ``score = (p(x+) + 1 - p(x-)) / 2``, the
    probability that the statement is true. Labels, when given, only orient the sign: if the
    training AUROC is below 0.5 then ``w, b`` become ``-w, -b`` (``loss`` is that of the
    unflipped solution; the loss is not symmetric under the flip).

    Attributes:
        restarts: random starts (>= 1).
        max_iter: L-BFGS iterations per start.
        seed: seed of the starts.
        weight, bias: ``[D]`` and ``[]`` on the normalised features (after ``fit``).
        mean_pos, mean_neg: ``[D]`` the side means; norm: ``[]`` the shared scale.
        loss: the lowest training loss.
    """

    restarts: int = 10
    max_iter: int = 200
    seed: int = 0
    weight: torch.Tensor | None = field(default=None, init=False, repr=False)
    bias: torch.Tensor | None = field(default=None, init=False, repr=False)
    mean_pos: torch.Tensor | None = field(default=None, init=False, repr=False)
    mean_neg: torch.Tensor | None = field(default=None, init=False, repr=False)
    norm: torch.Tensor | None = field(default=None, init=False, repr=False)
    loss: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    @staticmethod
    def objective(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
        """The CCS loss ``[]`` of probabilities ``p_pos``, ``p_neg`` ``[N]``."""
        consistency = (p_pos - (1 - p_neg)).square()
        confidence = torch.minimum(p_pos, p_neg).square()
        return (consistency + confidence).mean()

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
    ) -> CcsProbe:
        """Fit on pairs ``features`` / ``negation`` ``[N, D]``; ``labels`` ``[N]`` (optional)
        orient the sign."""
        x, y, neg = self._fit_inputs(features, labels, negation, supervised=False, pairs=True)
        self.mean_pos, self.mean_neg = x.mean(0), neg.mean(0)
        centred_pos, centred_neg = x - self.mean_pos, neg - self.mean_neg
        rms = torch.cat([centred_pos, centred_neg]).square().mean().sqrt()
        self.norm = rms if rms > 0 else torch.ones_like(rms)
        z_pos, z_neg = centred_pos / self.norm, centred_neg / self.norm

        def objective(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.objective(torch.sigmoid(z_pos @ w + b), torch.sigmoid(z_neg @ w + b))

        generator = torch.Generator().manual_seed(self.seed)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        best = None
        for _ in range(self.restarts):
            start = torch.randn(x.shape[1], generator=generator, dtype=x.dtype) / x.shape[1] ** 0.5
            w, b = _lbfgs(objective, start.to(x.device), zero, self.max_iter)
            loss = objective(w, b).item()
            if best is None or loss < best[0]:
                best = (loss, w, b)
        self.loss, self.weight, self.bias = best
        if y is not None and auroc(self.score(features, negation), y) < 0.5:
            self.weight, self.bias = -self.weight, -self.bias
        return self

    def probabilities(
        self, features: torch.Tensor, negation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p(x+), p(x-))``, each ``[N]``."""
        x, neg = self._score_inputs(features, negation)
        p_pos = torch.sigmoid((x - self.mean_pos) / self.norm @ self.weight + self.bias)
        p_neg = torch.sigmoid((neg - self.mean_neg) / self.norm @ self.weight + self.bias)
        return p_pos, p_neg

    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """``(p(x+) + 1 - p(x-)) / 2`` ``[N]``, the probability that each statement is true."""
        p_pos, p_neg = self.probabilities(features, negation)
        return (p_pos + 1 - p_neg) / 2


@dataclass
class CrcProbe(Probe):
    """Contrast-representation clustering, top-principal-component variant (CRC-TPC).

    Fitting stacks the ``2N`` statements ``[features; negation]`` and erases, with LEACE
    (:func:`fit_eraser`), the concept "which side of its pair a statement is" (1 for
    ``features``, 0 for ``negation``), jointly with the one-hot columns of ``nuisance`` (e.g.
    the prompt template of each pair, shared by both sides) when given. After erasure the two
    sides have the same mean, so the constant offset that negation adds to every pair is
    gone. The direction is the top principal component of the erased, centred differences
    ``E(x+) - E(x-)`` (unit norm); ``score = (E(x+) - E(x-)) @ direction``. Labels, when
    given, only orient the sign (flipped if the training AUROC is below 0.5).

    Attributes:
        eraser: the fitted ``concept_erasure.LeaceEraser``; direction: ``[D]`` (after ``fit``).
    """

    eraser: LeaceEraser | None = field(default=None, init=False, repr=False)
    direction: torch.Tensor | None = field(default=None, init=False, repr=False)

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
        nuisance: torch.Tensor | None = None,
    ) -> CrcProbe:
        """Fit on pairs ``features`` / ``negation`` ``[N, D]``.

        Args:
            labels: ``[N]`` (optional) orient the sign.
            nuisance: ``[N]`` integer class of each pair to erase as well (optional).
        """
        x, y, neg = self._fit_inputs(features, labels, negation, supervised=False, pairs=True)
        n = x.shape[0]
        side = torch.cat([torch.ones(n), torch.zeros(n)]).to(x)[:, None]
        if nuisance is None:
            concept = side
        else:
            if not isinstance(nuisance, torch.Tensor):
                raise TypeError(f"nuisance must be a torch.Tensor, got {type(nuisance).__name__}")
            if nuisance.ndim != 1 or nuisance.shape[0] != n or nuisance.is_floating_point():
                raise ValueError(f"nuisance must be an integer tensor [{n}]")
            if (nuisance < 0).any():
                raise ValueError("nuisance classes must be >= 0")
            one_hot = F.one_hot(nuisance.to(device=x.device, dtype=torch.long)).to(x)
            concept = torch.cat([side, torch.cat([one_hot, one_hot])], dim=1)
        self.eraser = fit_eraser(torch.cat([x, neg]), concept)
        differences = self.eraser(x) - self.eraser(neg)
        _, _, vh = torch.linalg.svd(differences - differences.mean(0), full_matrices=False)
        self.direction = vh[0]
        if y is not None and auroc(differences @ self.direction, y) < 0.5:
            self.direction = -self.direction
        return self

    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """Projections ``[N]`` of the erased pair differences onto the direction."""
        x, neg = self._score_inputs(features, negation)
        return (self.eraser(x) - self.eraser(neg)) @ self.direction


@dataclass
class RandomProbe(Probe):
    """The baseline: a uniformly random unit direction drawn from ``seed``.

    ``score(x) = x @ direction`` (or the pair difference's projection). Labels are checked
    when given but never used, not even for the sign.

    Attributes:
        seed: seed of the direction.
        direction: ``[D]`` unit norm (after ``fit``).
    """

    seed: int = 0
    direction: torch.Tensor | None = field(default=None, init=False, repr=False)

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negation: torch.Tensor | None = None,
    ) -> RandomProbe:
        """Draw a direction for features ``[N, D]``; labels are ignored."""
        x, _, _ = self._fit_inputs(features, labels, negation, supervised=False, pairs=False)
        generator = torch.Generator().manual_seed(self.seed)
        direction = torch.randn(x.shape[1], generator=generator, dtype=x.dtype)
        self.direction = (direction / direction.norm()).to(x.device)
        return self

    def score(self, features: torch.Tensor, negation: torch.Tensor | None = None) -> torch.Tensor:
        """Projections ``[N]`` onto the random direction."""
        x, neg = self._score_inputs(features, negation)
        return _difference(x, neg) @ self.direction
