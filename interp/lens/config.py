"""The training recipe of the tuned lens: one dataclass, which is also the command line.

:class:`TrainConfig` defaults to Belrose et al.'s recipe (250 steps of 2^18 tokens in windows
of 2048, SGD with Nesterov momentum 0.9, learning rate 1.0 decayed linearly to 0, weight decay
1e-3). :data:`ZOO_RECIPE` scales it to the zoo's byte-level models (windows of 64 bytes, the
length they were trained on, and the same 128 windows per step); :data:`DEMO_RECIPE` is the
cut-down version ``statetap demo`` trains in seconds. ``statetap lens train --recipe NAME``
starts from any of :data:`PRESETS`, and every field is a flag (``--tokens-per-step``).
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
        lr, momentum, nesterov, weight_decay: ``torch.optim.SGD``'s arguments.
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

    @property
    def windows_per_step(self) -> int:
        return self.tokens_per_step // self.seq_len


PAPER_RECIPE = TrainConfig()
ZOO_RECIPE = dataclasses.replace(PAPER_RECIPE, tokens_per_step=2**13, seq_len=64, batch_size=64)
DEMO_RECIPE = dataclasses.replace(ZOO_RECIPE, steps=40, tokens_per_step=2**12)
PRESETS = {"paper": PAPER_RECIPE, "zoo": ZOO_RECIPE, "demo": DEMO_RECIPE}
