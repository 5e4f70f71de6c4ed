"""How an instrumented pass reaches the layers of a statetap RWKV model.

The model is ours, so nothing is patched: for the length of a pass the adapter sets
``model.instrumentation`` (:meth:`~statetap.models.common.RwkvPreTrainedModel.instrumented`)
to an object with the two methods of :class:`Instrumentation` (``statetap.plan.Pass`` is one),
and each layer asks it, per state site, what to emit and inject.  The WKV recurrence hands
the answer to the kernel call as its ordinary instrumentation arguments (:func:`run_wkv`);
the token shifts carry it out with tensor ops (:mod:`statetap.models.token_shift`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from statetap.kernels import ScanOutput
from statetap.plan import SiteOps


class Instrumentation(Protocol):
    """What a pass does at each ``(site, layer)``, and where the emitted tensors go."""

    def at(self, site: str, layer: int) -> SiteOps | None:
        """The work at ``site`` of ``layer`` (None: nothing)."""

    def store(self, site: str, layer: int, value: torch.Tensor) -> None:
        """Keep the tensor emitted at ``site`` of ``layer``, ``[B, P, *shape]``."""


def site_ops(instrumentation: Instrumentation | None, site: str, layer: int) -> SiteOps | None:
    """The work at ``site`` of ``layer``, or None (also without an instrumented pass)."""
    return None if instrumentation is None else instrumentation.at(site, layer)


def run_wkv(
    kernel: Callable[..., ScanOutput],
    layer: int,
    instrumentation: Instrumentation | None,
    *inputs: torch.Tensor,
    initial_state: torch.Tensor | None,
    **options,
) -> ScanOutput:
    """``kernel(*inputs, initial_state=..., output_final_state=True, **options)`` with the
    ``"wkv"`` emission and injection of ``layer`` as its instrumentation arguments; emitted
    states ``[B, P, H, K, V]`` go to ``instrumentation.store``.  Returns the kernel's output."""
    ops = site_ops(instrumentation, "wkv", layer)
    arguments = {} if ops is None else ops.kernel_arguments()
    out = kernel(
        *inputs, initial_state=initial_state, output_final_state=True, **options, **arguments
    )
    if ops is not None and out.states is not None:
        instrumentation.store("wkv", layer, ops.expand_states(out.states))
    return out
