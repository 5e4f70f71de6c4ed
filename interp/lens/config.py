"""The training recipe of the tuned lens: one dataclass, which is also the command line.

:class:`TrainConfig` defaults to statetap's recipe (``"paper"``): Belrose et al.'s budget and
schedule (250 steps of 2^18 tokens in windows of 2048, SGD with Nesterov momentum 0.9, weight
decay 1e-3, the learning rate decayed linearly to 0) with SGD stepping at learning rate 1.0.
The ``tuned-lens`` package, which the paper ran, steps at ``lr_scale * (1 - momentum)`` = 0.1
and clips each step's gradient to norm 1.0: :data:`REFERENCE_RECIPE` is that recipe
(``momentum_scaled_lr=True``, ``max_grad_norm=1.0``).  Measured on the zoo's text models,
statetap's reaches a lower KL at layer 0 (``docs/lens.md``), hence the default.

:data:`ZOO_RECIPE` scales the budget to the zoo's byte-level models (windows of 64 bytes, the
length they were trained on, and the same 128 windows per step), :data:`ZOO_REFERENCE_RECIPE`
is the same with tuned-lens's optimiser; :data:`DEMO_RECIPE` is the cut-down version
``statetap demo`` trains in seconds. ``statetap lens train --recipe NAME`` starts from any of
:data:`PRESETS`, and every field is a flag (``--tokens-per-step``, ``--momentum-scaled-lr``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """How the translators are trained (the model stays frozen).

    Attributes:
        steps: optimiser steps; the learning rate decays linearly from ``lr`` to 0 over them.
        tokens_per_step: tokens per step, a whole number of ``seq_len`` windows.
        seq_len: tokens per window cut from the training stream.
        batch_size: windows per forward pass; a step accumulates gradients over its passes,
            so memory depends on this, not on ``tokens_per_step``.
        lr, momentum, nesterov, weight_decay: ``torch.optim.SGD``'s arguments (``lr`` times
            ``1 - momentum`` with ``momentum_scaled_lr``).
        momentum_scaled_lr: SGD steps at ``lr * (1 - momentum)``, as ``tuned-lens`` does (its
            ``lr_scale`` is then ``lr``): the step size of plain gradient descent once the
            momentum's ``1 / (1 - momentum)`` gain is undone.
        max_grad_norm: clip each step's gradient (all translators together) to this norm
            before the step, as ``tuned-lens`` does at 1.0; 0 clips nothing.
        seed: order in which the windows are drawn (shuffled epochs).
    """

    steps: int = field(default=250, metadata=_help("optimiser steps (linear decay to 0)"))
    tokens_per_step: int = field(
        default=2**18, metadata=_help("tokens per step, a multiple of --seq-len")
    )
    seq_len: int = field(default=2048, metadata=_help("tokens per training window"))
    batch_size: int = field(
        default=8, metadata=_help("windows per forward pass (gradients accumulate over a step)")
    )
    lr: float = field(default=1.0, metadata=_help("SGD learning rate at step 0"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    nesterov: bool = field(default=True, metadata=_help("Nesterov momentum"))
    weight_decay: float = field(default=1e-3, metadata=_help("SGD weight decay"))
    momentum_scaled_lr: bool = field(
        default=False,
        metadata=_help("step at lr x (1 - momentum), tuned-lens's parametrisation"),
    )
    max_grad_norm: float = field(
        default=0.0, metadata=_help("clip each step's gradient to this norm (0: no clipping)")
    )
    seed: int = field(default=0, metadata=_help("seed of the window order"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, f.name, value)
            if type(value) is not expected:
                raise TypeError(f"{f.name} must be a {expected.__name__}, got {value!r}")
        for name in ("steps", "tokens_per_step", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tokens_per_step % self.seq_len:
            raise ValueError(
                f"tokens_per_step ({self.tokens_per_step}) must be a multiple of seq_len "
                f"({self.seq_len})"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm >= 0:
            raise ValueError(
                f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}"
            )

    @property
    def windows_per_step(self) -> int:
        return self.tokens_per_step // self.seq_len

    @property
    def step_lr(self) -> float:
        """The learning rate SGD is given at step 0."""
        return self.lr * (1 - self.momentum) if self.momentum_scaled_lr else self.lr


PAPER_RECIPE = TrainConfig()
ZOO_RECIPE = dataclasses.replace(PAPER_RECIPE, tokens_per_step=2**13, seq_len=64, batch_size=64)
DEMO_RECIPE = dataclasses.replace(ZOO_RECIPE, steps=40, tokens_per_step=2**12)
# the tuned-lens package's optimiser: SGD at lr_scale 1.0 x (1 - 0.9), gradients clipped at 1.0
_TUNED_LENS_OPTIMISER = dict(momentum_scaled_lr=True, max_grad_norm=1.0)
REFERENCE_RECIPE = dataclasses.replace(PAPER_RECIPE, **_TUNED_LENS_OPTIMISER)
ZOO_REFERENCE_RECIPE = dataclasses.replace(ZOO_RECIPE, **_TUNED_LENS_OPTIMISER)
PRESETS = {
    "paper": PAPER_RECIPE,
    "reference": REFERENCE_RECIPE,
    "zoo": ZOO_RECIPE,
    "zoo-reference": ZOO_REFERENCE_RECIPE,
    "demo": DEMO_RECIPE,
}
