"""Where the Triton kernel tests run: one device for every kernel test module.

Under the Triton interpreter (``TRITON_INTERPRET=1``, the default that ``conftest.py`` sets)
the kernels run on CPU tensors; with the interpreter off they are compiled and need CUDA
tensors. Build every tensor a kernel test hands to a Triton launcher on :data:`DEVICE`
(``torch.randn(..., device=DEVICE)`` or :func:`on_device`), and mark the module with
:data:`needs_kernel_device`, which skips it where neither is possible.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
DEVICE = torch.device("cpu" if INTERPRETING else "cuda")

needs_kernel_device = pytest.mark.skipif(
    not INTERPRETING and not torch.cuda.is_available(),
    reason="the Triton kernels need CUDA, or TRITON_INTERPRET=1 for the CPU interpreter",
)


def on_device(values: dict) -> dict:
    """``values`` with every tensor moved to :data:`DEVICE` (other values unchanged)."""
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
