"""Backend choice: one public function per op, dispatching to the implementation for a device.

Backends: ``torch`` (the pure-torch reference, any device), ``triton`` (CUDA tensors) and
``cpu`` (the C++ extension ``statetap._C``).  The default is the fastest one available for
the inputs' device; the environment variable ``STATETAP_BACKEND`` forces one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping

import torch

BACKENDS = ("torch", "triton", "cpu")
BACKEND_ENV = "STATETAP_BACKEND"
_PREFERRED = {"cuda": ("triton", "torch"), "cpu": ("cpu", "torch")}


def choose_backend(op: str, device: torch.device, available: Mapping[str, Callable]) -> str:
    """The backend that runs ``op`` on ``device``: ``STATETAP_BACKEND`` if set, else the
    first of the device's preferred backends that ``op`` has."""
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(
                f"{BACKEND_ENV}={forced!r} is not a backend; expected one of {BACKENDS}"
            )
        if forced not in available:
            raise RuntimeError(
                f"{BACKEND_ENV}={forced!r}, but {op} has no {forced} implementation "
                f"(it has: {', '.join(available)})"
            )
        return forced
    for name in _PREFERRED.get(device.type, ("torch",)):
        if name in available:
            return name
    return "torch"


def dispatching(op: str, implementations: Mapping[str, Callable]) -> Callable:
    """Public function for ``op`` with the torch implementation's signature and docstring,
    routing each call by the device of its first tensor argument."""
    reference = implementations["torch"]

    @functools.wraps(reference)
    def public(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
        return implementations[choose_backend(op, device, implementations)](*args, **kwargs)

    public.__name__ = public.__qualname__ = op
    public.implementations = implementations
    return public
