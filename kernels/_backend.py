"""Backend choice: one public function per op, dispatching to the implementation for a device.

Backends: ``torch`` (the pure-torch reference, any device), ``triton`` (CUDA tensors) and
``cpu`` (the C++ extension ``statetap._C``).  The default is the fastest one available for
the inputs' device; the environment variable ``STATETAP_BACKEND`` forces one.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping

import torch

from . import _cpu

BACKENDS = ("torch", "triton", "cpu")
BACKEND_ENV = "STATETAP_BACKEND"
_PREFERRED = {"cuda": ("triton", "torch"), "cpu": ("cpu", "torch")}


def choose_backend(op: str, device: torch.device, available: Mapping[str, Callable]) -> str:
    """The backend that runs ``op`` on ``device``: ``STATETAP_BACKEND`` if set, else the
    first of the device's preferred backends that ``op`` has (``cpu`` only where
    ``statetap._C`` is built; otherwise the reference runs, with a one-time notice)."""
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
        if forced == "cpu" and not _cpu.built():
            raise RuntimeError(
                f"{BACKEND_ENV}='cpu', but statetap._C (the cpu backend) is not built: "
                f"{_cpu.BUILD_HINT}"
            )
        return forced
    for name in _PREFERRED.get(device.type, ("torch",)):
        if name == "cpu" and name in available and not _cpu.built():
            _cpu.notice_missing()
            continue
        if name in available:
            return name
    return "torch"


def dispatching(op: str, implementations: Mapping[str, Callable]) -> Callable:
    """Public function for ``op`` with the torch implementation's signature and docstring,
    routing each call by the device of its first tensor argument.

    The fused backends are forward-only: when autograd needs a gradient of any input, the call
    runs the differentiable torch reference instead, and warns (every such call) saying so.
    """
    reference = implementations["torch"]

    @functools.wraps(reference)
    def public(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        backend = choose_backend(op, device, implementations)
        if backend != "torch" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            _warn_backward_fallback(op, backend, device)
            backend = "torch"
        return implementations[backend](*args, **kwargs)

    public.__name__ = public.__qualname__ = op
    public.implementations = implementations
    return public


def _warn_backward_fallback(op: str, backend: str, device: torch.device) -> None:
    warnings.warn(
        f"statetap: {op} on {device} runs the pure-torch reference, not its {backend} kernel: "
        f"an input requires a gradient and the {backend} kernel is forward-only. Call it under "
        f"torch.no_grad() to use the kernel",
        stacklevel=3,
    )
