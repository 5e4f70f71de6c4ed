"""Contrastive activation addition (CAA) and state steering of recurrent language models.

Rimsky et al.'s CAA as the paper ("Does Transformer Interpretability Transfer to RNNs?")
runs it, plus its state steering: vectors are mean differences of the residual stream at an
answer token, and of every recurrent-state component after it, between matching and
non-matching completions (:mod:`.vectors`); sweeps add them at each layer with each
multiplier in the residual stream, in the state, or both (:mod:`.modes`, :mod:`.sweeps`) and
measure ``p_match`` (:mod:`.metrics`).  The core takes any prompts with two answer tokens
(:class:`ContrastPairs`) or two prompt sets; the A/B datasets are one front end
(:func:`load_ab_items`, :func:`ab_pairs`).  See ``docs/steering.md``.
"""

from statetap._lazy import lazy_names

# loaded on first use: the command line parses its arguments before torch or transformers loads
lazy_names(
    __name__,
    {
        "LETTERS": "statetap.interp.steering.dataset",
        "TEMPLATES": "statetap.interp.steering.dataset",
        "ABItem": "statetap.interp.steering.dataset",
        "ContrastPairs": "statetap.interp.steering.dataset",
        "Prompts": "statetap.interp.steering.dataset",
        "PromptTemplate": "statetap.interp.steering.dataset",
        "ab_pairs": "statetap.interp.steering.dataset",
        "load_ab_items": "statetap.interp.steering.dataset",
        "generate_steered": "statetap.interp.steering.generate",
        "answer_probabilities": "statetap.interp.steering.metrics",
        "behaviour_range": "statetap.interp.steering.metrics",
        "max_effect_over_layers": "statetap.interp.steering.metrics",
        "MODE_NAMES": "statetap.interp.steering.modes",
        "Mode": "statetap.interp.steering.modes",
        "steering_mode": "statetap.interp.steering.modes",
        "plot_layers": "statetap.interp.steering.plots",
        "plot_modes": "statetap.interp.steering.plots",
        "load_sweep": "statetap.interp.steering.store",
        "load_vectors": "statetap.interp.steering.store",
        "save_sweep": "statetap.interp.steering.store",
        "save_vectors": "statetap.interp.steering.store",
        "SweepResult": "statetap.interp.steering.sweeps",
        "sweep": "statetap.interp.steering.sweeps",
        "SteeringVectors": "statetap.interp.steering.vectors",
        "mean_difference": "statetap.interp.steering.vectors",
    },
)

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
