"""Random inputs for every reference op, and how to slice them in time.

Each :class:`OpCase` knows how to draw fresh inputs for ``B`` rows of ``L`` tokens, which
inputs run along time (and on which axis), and how to call each form of the op.  The
contract tests use these to state the identities of ``docs/semantics.md`` once for all ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from statetap.kernels.selective_scan.reference import selective_scan
from statetap.kernels.ssd.reference import ssd_chunked, ssd_sequential
from statetap.kernels.wkv4.reference import wkv4
from statetap.kernels.wkv5.reference import wkv5_chunked, wkv5_sequential
from statetap.kernels.wkv6.reference import wkv6_chunked, wkv6_sequential
from statetap.kernels.wkv7.reference import wkv7_chunked, wkv7_sequential


@dataclass(frozen=True)
class OpCase:
    name: str
    forms: dict[str, Callable]  # "sequential" / "chunked" -> function taking keyword inputs
    make: Callable[[int, int, torch.dtype], dict]  # (B, L, dtype) -> keyword inputs
    time_axes: dict[str, int]  # time-varying input -> its time axis
    y_time_axis: int = 1
    chunk_size: int = 4  # small chunk used by the tests of the chunked form

    def slice(self, inputs: dict, start: int, end: int) -> dict:
        """The inputs restricted to tokens ``start .. end-1``."""
        out = dict(inputs)
        for name, axis in self.time_axes.items():
            out[name] = inputs[name].narrow(axis, start, end - start)
        return out

    def y_slice(self, y: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return y.narrow(self.y_time_axis, start, end - start)

    def call(self, form: str, inputs: dict, **instrumentation):
        if form == "chunked":
            instrumentation.setdefault("chunk_size", self.chunk_size)
        return self.forms[form](**inputs, **instrumentation)


def _selective_scan(B: int, L: int, dtype: torch.dtype) -> dict:
    D, N, G = 6, 3, 2
    return dict(
        u=torch.randn(B, D, L, dtype=dtype),
        delta=torch.randn(B, D, L, dtype=dtype),
        A=-torch.exp(torch.randn(D, N, dtype=dtype)),
        B=torch.randn(B, G, N, L, dtype=dtype),
        C=torch.randn(B, G, N, L, dtype=dtype),
        D=torch.randn(D, dtype=dtype),
        z=torch.randn(B, D, L, dtype=dtype),
        delta_bias=torch.randn(D, dtype=dtype),
        delta_softplus=True,
    )


def _ssd(B: int, L: int, dtype: torch.dtype) -> dict:
    H, P, G, N = 4, 3, 2, 5
    return dict(
        x=torch.randn(B, L, H, P, dtype=dtype),
        dt=torch.randn(B, L, H, dtype=dtype),
        A=-torch.exp(torch.randn(H, dtype=dtype)),
        B=torch.randn(B, L, G, N, dtype=dtype),
        C=torch.randn(B, L, G, N, dtype=dtype),
        D=torch.randn(H, P, dtype=dtype),
        z=torch.randn(B, L, H, P, dtype=dtype),
        dt_bias=torch.randn(H, dtype=dtype),
        dt_softplus=True,
    )


def _wkv4(B: int, L: int, dtype: torch.dtype) -> dict:
    C = 7
    return dict(
        w=-torch.exp(torch.randn(C, dtype=dtype)),
        u=torch.randn(C, dtype=dtype),
        k=torch.randn(B, L, C, dtype=dtype),
        v=torch.randn(B, L, C, dtype=dtype),
    )


def _rwkv_rkv(B: int, L: int, dtype: torch.dtype, H: int = 2, K: int = 4, V: int = 3) -> dict:
    return dict(
        r=torch.randn(B, L, H, K, dtype=dtype),
        k=torch.randn(B, L, H, K, dtype=dtype),
        v=torch.randn(B, L, H, V, dtype=dtype),
    )


def _wkv5(B: int, L: int, dtype: torch.dtype) -> dict:
    inputs = _rwkv_rkv(B, L, dtype)
    H, K = inputs["r"].shape[2:]
    return inputs | dict(w=F.logsigmoid(torch.randn(H, K, dtype=dtype)), u=torch.randn(H, K, dtype=dtype))


def _wkv6(B: int, L: int, dtype: torch.dtype) -> dict:
    inputs = _rwkv_rkv(B, L, dtype)
    H, K = inputs["r"].shape[2:]
    return inputs | dict(
        w=F.logsigmoid(torch.randn(B, L, H, K, dtype=dtype)), u=torch.randn(H, K, dtype=dtype)
    )


def _wkv7(B: int, L: int, dtype: torch.dtype) -> dict:
    inputs = _rwkv_rkv(B, L, dtype)
    kappa = F.normalize(torch.randn_like(inputs["k"]), dim=-1)
    rate = torch.sigmoid(torch.randn_like(inputs["k"]))
    return inputs | dict(
        w=-0.6065306597126334 * torch.sigmoid(torch.randn_like(inputs["k"])), a=-kappa, b=kappa * rate
    )


_RWKV_TIME = dict(r=1, k=1, v=1)

CASES = {
    case.name: case
    for case in (
        OpCase("selective_scan", {"sequential": selective_scan}, _selective_scan,
               dict(u=2, delta=2, B=3, C=3, z=2), y_time_axis=2),
        OpCase("ssd", {"sequential": ssd_sequential, "chunked": ssd_chunked}, _ssd,
               dict(x=1, dt=1, B=1, C=1, z=1)),
        OpCase("wkv4", {"sequential": wkv4}, _wkv4, dict(k=1, v=1)),
        OpCase("wkv5", {"sequential": wkv5_sequential, "chunked": wkv5_chunked}, _wkv5, _RWKV_TIME),
        OpCase("wkv6", {"sequential": wkv6_sequential, "chunked": wkv6_chunked}, _wkv6,
               _RWKV_TIME | dict(w=1)),
        OpCase("wkv7", {"sequential": wkv7_sequential, "chunked": wkv7_chunked}, _wkv7,
               _RWKV_TIME | dict(w=1, a=1, b=1)),
    )
}

OP_FORMS = [(name, form) for name, case in CASES.items() for form in case.forms]
CHUNKED_OPS = [name for name, case in CASES.items() if "chunked" in case.forms]


def rel_error(reference: torch.Tensor, value: torch.Tensor) -> float:
    """``||reference - value|| / ||reference||`` (flash-linear-attention's ratio)."""
    reference, value = reference.double(), value.double()
    return ((reference - value).norm() / reference.norm().clamp_min(1e-300)).item()
