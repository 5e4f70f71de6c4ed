"""statetap: instrumented recurrences for recurrent language models.

Fused kernels for the recurrences of Mamba-1, Mamba-2 and RWKV-4/5/6/7 that emit the
recurrent state at chosen timesteps, or inject into it, and interpretability methods
built on them.  See ``docs/semantics.md`` for the state contract.
"""

__version__ = "0.1.0"
