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

from statetap.interp.patching.activation import activation_patching
from statetap.interp.patching.metrics import (
    answer_probability,
    fraction_recovered,
    logit_difference,
)
from statetap.interp.patching.result import PatchingResult, load_result
from statetap.interp.patching.sweep import STATE, SweepMetrics, patch_sweep
from statetap.interp.patching.tracing import causal_trace

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
]
