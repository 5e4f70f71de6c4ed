"""The torch path zoo Mamba models train through: transformers' model, statetap's scan.

transformers' torch fallback for the Mamba-1 selective scan indexes one timestep at a time out
of ``[B, D, L, N]`` tensors; autograd answers every such index with a zero-filled tensor of the
full size, so its backward costs ``O(L^2)`` memory traffic and dominates a CPU training step.
While a zoo Mamba trains, the name transformers' mixer calls (``mamba_selective_scan``) points
at statetap's training scan instead
(:func:`kernels.selective_scan.autograd.selective_scan_autograd`: the reference recurrence with
a hand-written backward, linear in ``L`` and computed over one state buffer in place). Same
parameters, same function (the tests compare its outputs and gradients with the reference
scan's, and the model's with transformers' own scan); only the step is faster.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from statetap.adapters.base import patched
from statetap.adapters.mamba import MambaAdapter, transformers_selective_scan
from statetap.kernels.selective_scan.autograd import selective_scan_autograd


@contextlib.contextmanager
def training_path(arch: str) -> Iterator[None]:
    """Within the block, transformers' Mamba-1 mixers scan with statetap's reference scan
    (``arch == "mamba"``); other architectures keep their own torch path."""
    if arch != "mamba":
        yield
        return
    module = importlib.import_module(MambaAdapter.modeling_module)
    with patched(module, MambaAdapter.scan_name, transformers_selective_scan(selective_scan_autograd)):
        yield
