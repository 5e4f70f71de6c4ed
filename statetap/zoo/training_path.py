"""The torch path zoo Mamba models train through: transformers' model, statetap's scan.

transformers' torch fallback for the Mamba-1 selective scan indexes one timestep at a time out
of ``[B, D, L, N]`` tensors; autograd answers every such index with a zero-filled tensor of the
full size, so its backward costs ``O(L^2)`` memory traffic and dominates a CPU training step.
While a zoo Mamba trains, the name transformers' mixer calls (``mamba_selective_scan``) points
at statetap's reference scan instead (:func:`kernels.selective_scan.reference.selective_scan`,
the float32 ground truth of every kernel test), whose backward is linear in ``L``. Same
parameters, same function (the tests compare outputs and gradients with transformers' own
scan); only the step is faster. The reference is called explicitly, never the Triton kernel,
which has no backward.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from statetap.adapters.base import patched
from statetap.adapters.mamba import MambaAdapter
from statetap.kernels.selective_scan.reference import selective_scan


def reference_scan(
    hidden_states,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    **_,
):
    """transformers' ``mamba_selective_scan`` (``hidden_states`` ``[B, D, L]``, ``dt``
    ``[B, D, L]``, ``A`` ``[D, N]``, ``B``/``C`` ``[B, N, L]``) computed by statetap's reference
    scan. Returns ``y`` ``[B, D, L]``, with the final state ``[B, D, N]`` when
    ``return_last_state``."""
    out = selective_scan(
        hidden_states,
        dt,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        output_final_state=return_last_state,
    )
    return (out.y, out.final_state) if return_last_state else out.y


@contextlib.contextmanager
def training_path(arch: str) -> Iterator[None]:
    """Within the block, transformers' Mamba-1 mixers scan with :func:`reference_scan`
    (``arch == "mamba"``); other architectures keep their own torch path."""
    if arch != "mamba":
        yield
        return
    module = importlib.import_module(MambaAdapter.modeling_module)
    with patched(module, MambaAdapter.scan_name, reference_scan):
        yield
