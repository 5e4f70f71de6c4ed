"""Activation patching, causal tracing and state transplants on recurrent language models.

Activation patching (:func:`activation_patching`) puts the clean run's residual stream,
mixer output or recurrent state at one (layer, position) into a corrupted run and measures
the fraction of the metric's gap recovered; causal tracing (:func:`causal_trace`, ROME's)
noises the subject tokens' embeddings and restores the clean run one (layer, position) at a
time; a state transplant (:func:`transplant_state`) moves one prompt's state into another's
before a chosen token and continues or generates.  Each sweep runs a few batched passes (each
row its own patch), continuing from the corrupted run's state rather than re-running the
prefix (:mod:`.sweep`).  See ``docs/patching.md``.
"""

from statetap._lazy import lazy_names

# loaded on first use: the command line parses its arguments before torch or transformers loads
lazy_names(
    __name__,
    {
        "activation_patching": "statetap.interp.patching.activation",
        "answer_probability": "statetap.interp.patching.metrics",
        "fraction_recovered": "statetap.interp.patching.metrics",
        "logit_difference": "statetap.interp.patching.metrics",
        "PatchingResult": "statetap.interp.patching.result",
        "load_result": "statetap.interp.patching.result",
        "STATE": "statetap.interp.patching.sweep",
        "SweepMetrics": "statetap.interp.patching.sweep",
        "patch_sweep": "statetap.interp.patching.sweep",
        "causal_trace": "statetap.interp.patching.tracing",
        "transplant_state": "statetap.interp.patching.transplant",
    },
)

__all__ = [
    "STATE",
    "PatchingResult",
    "SweepMetrics",
    "activation_patching",
    "answer_probability",
    "causal_trace",
    "fraction_recovered",
    "load_result",
    "logit_difference",
    "patch_sweep",
    "transplant_state",
]
