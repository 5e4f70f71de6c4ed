"""statetap: instrumented recurrences for recurrent language models.

Fused kernels for the recurrences of Mamba-1, Mamba-2 and RWKV-4/5/6/7 that emit the
recurrent state at chosen timesteps, or inject into it (``statetap.kernels``); model
adapters that do the same at any site, layer and position of a whole model in one pass
(:func:`attach`); and interpretability methods built on them (``statetap.interp``).
See ``docs/semantics.md`` for the state contract.
"""

__version__ = "0.1.0"

from statetap.state import RecurrentState
from statetap.tap import Emit, Inject, Tap, TapResult, attach

__all__ = ["Emit", "Inject", "RecurrentState", "Tap", "TapResult", "__version__", "attach"]
