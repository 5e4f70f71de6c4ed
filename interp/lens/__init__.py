"""The tuned lens and the logit lens for recurrent LMs (Belrose et al., as the paper runs them
on Mamba and RWKV), on every architecture statetap instruments.

A lens decodes the residual stream after each block with the model's own final norm and
unembedding: as it is (:class:`LogitLens`), or through an affine translator per layer trained
to minimise KL(p_final || p_lens) with the model frozen (:class:`TunedLens`, :func:`train`,
recipe :class:`TrainConfig`). :func:`evaluate` scores both per layer on held-out text (bits per
byte, nats per token, KL to the final layer, entropy) and checks that the last layer reproduces
the model's logits; :mod:`.plots` draws bits per byte against depth and prediction
trajectories. See ``docs/lens.md``.
"""

from statetap.interp.lens.config import (
    DEMO_RECIPE,
    PAPER_RECIPE,
    PRESETS,
    ZOO_RECIPE,
    TrainConfig,
)
from statetap.interp.lens.data import step_windows, token_stream, windows, zoo_corpus
from statetap.interp.lens.evaluate import FINAL_LAYER_TOLERANCE, LensEvaluation, evaluate
from statetap.interp.lens.lens import LogitLens, TunedLens
from statetap.interp.lens.plots import plot_bits_per_byte, plot_trajectory
from statetap.interp.lens.train import train

__all__ = [
    "DEMO_RECIPE",
    "FINAL_LAYER_TOLERANCE",
    "PAPER_RECIPE",
    "PRESETS",
    "ZOO_RECIPE",
    "LensEvaluation",
    "LogitLens",
    "TrainConfig",
    "TunedLens",
    "evaluate",
    "plot_bits_per_byte",
    "plot_trajectory",
    "step_windows",
    "token_stream",
    "train",
    "windows",
    "zoo_corpus",
]
