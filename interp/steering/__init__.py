"""Contrastive activation addition (CAA) and state steering of recurrent language models.

Rimsky et al.'s CAA as the paper ("Does Transformer Interpretability Transfer to RNNs?")
runs it, plus its state steering: vectors are mean differences of the residual stream at an
answer token, and of every recurrent-state component after it, between matching and
non-matching completions (:mod:`.vectors`); sweeps add them at each layer with each
multiplier in the residual stream, in the state, or both (:mod:`.modes`, :mod:`.sweep`) and
measure ``p_match`` (:mod:`.metrics`).  The core takes any prompts with two answer tokens
(:class:`ContrastPairs`) or two prompt sets; the A/B datasets are one front end
(:func:`load_ab_items`, :func:`ab_pairs`).  See ``docs/steering.md``.
"""

from statetap.interp.steering.dataset import (
    LETTERS,
    TEMPLATES,
    ABItem,
    ContrastPairs,
    Prompts,
    PromptTemplate,
    ab_pairs,
    load_ab_items,
)
from statetap.interp.steering.generate import generate_steered
from statetap.interp.steering.metrics import (
    answer_probabilities,
    behaviour_range,
    max_effect_over_layers,
)
from statetap.interp.steering.modes import MODE_NAMES, Mode, steering_mode
from statetap.interp.steering.plots import plot_layers, plot_modes
from statetap.interp.steering.store import load_sweep, load_vectors, save_sweep, save_vectors
from statetap.interp.steering.sweep import SweepResult, sweep
from statetap.interp.steering.vectors import SteeringVectors, mean_difference

__all__ = [
    "LETTERS",
    "MODE_NAMES",
    "TEMPLATES",
    "ABItem",
    "ContrastPairs",
    "Mode",
    "PromptTemplate",
    "Prompts",
    "SteeringVectors",
    "SweepResult",
    "ab_pairs",
    "answer_probabilities",
    "behaviour_range",
    "generate_steered",
    "load_ab_items",
    "load_sweep",
    "load_vectors",
    "max_effect_over_layers",
    "mean_difference",
    "plot_layers",
    "plot_modes",
    "save_sweep",
    "save_vectors",
    "steering_mode",
    "sweep",
]
