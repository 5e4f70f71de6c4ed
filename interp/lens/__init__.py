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

from statetap._lazy import lazy_names

# loaded on first use: the command line parses its arguments before torch or transformers loads
lazy_names(
    __name__,
    {
        "DEMO_RECIPE": "statetap.interp.lens.config",
        "PAPER_RECIPE": "statetap.interp.lens.config",
        "PRESETS": "statetap.interp.lens.config",
        "ZOO_RECIPE": "statetap.interp.lens.config",
        "TrainConfig": "statetap.interp.lens.config",
        "step_windows": "statetap.interp.lens.data",
        "token_stream": "statetap.interp.lens.data",
        "windows": "statetap.interp.lens.data",
        "zoo_corpus": "statetap.interp.lens.data",
        "FINAL_LAYER_TOLERANCE": "statetap.interp.lens.evaluate",
        "LensEvaluation": "statetap.interp.lens.evaluate",
        "evaluate": "statetap.interp.lens.evaluate",
        "LogitLens": "statetap.interp.lens.lens",
        "TunedLens": "statetap.interp.lens.lens",
        "plot_bits_per_byte": "statetap.interp.lens.plots",
        "plot_trajectory": "statetap.interp.lens.plots",
        "train": "statetap.interp.lens.train",
    },
)

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
