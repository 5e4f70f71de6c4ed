"""RWKV-7 WKV on Triton: the public forward, its validation and the choice of kernel.

``wkv7_triton`` validates exactly as the reference does (:func:`.reference.validate`), prepares
a :class:`Launch7` and runs the kernel ``choose_form`` picks, as for RWKV-6 (the recurrent one
also for the decode step).  Forward only; float64
inputs (the exact oracle) run the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._contract import ScanOutput, float64_runs
from .._triton import KernelInstrumentation
from ..wkv6.launch import choose_form
from .chunk import AUTO_MAX_KEY_DIM, launch_chunked
from .fused_recurrent import launch_recurrent
from .reference import validate, wkv7_chunked


@dataclass(slots=True)
class Launch7:
    """One RWKV-7 launch: ``inputs`` ``(r, w, k, v, a, b)`` contiguous ``[B, L, H, K|V]``,
    ``y`` ``[B, L, H, V]`` in ``v.dtype`` (uninitialised), the instrumentation.  A decode step's
    tensors have no time axis (``[B, H, K|V]``, the same memory as ``L = 1``)."""

    inputs: tuple[torch.Tensor, ...]
    scale: float
    y: torch.Tensor
    instr: KernelInstrumentation
    dims: tuple[int, int, int, int, int]  # (B, L, H, K, V): a decode step's L is 1

    def kernel_args(self) -> tuple:
        """The leading positional arguments of ``wkv7_recurrent_kernel`` /
        ``wkv7_chunk_state_kernel``."""
        _, length, heads, key_dim, value_dim = self.dims
        return (
            *self.inputs,
            self.y,
            *self.instr.pointers(self.y),
            self.scale,
            length,
            heads,
            key_dim,
            value_dim,
            self.instr.emit_count,
            self.instr.inject_count,
            *self.instr.value_strides(),
        )

    def run(self, form: str = "auto") -> ScanOutput:
        """Run the kernel ``form`` names (``"auto"``: :func:`~..wkv6.launch.choose_form`) and
        return the result."""
        form = choose_form(form, self.dims, AUTO_MAX_KEY_DIM)
        (launch_chunked if form == "chunked" else launch_recurrent)(self)
        return self.instr.output(self.y)


def prepare7(r, w, k, v, a, b, scale, instrumentation: dict, state=None) -> Launch7:
    """Validate as the reference does and lay out one launch (``state``: decode one token in
    place, inputs ``[B, H, K|V]``)."""
    scale, instr = validate(r, w, k, v, a, b, scale, instrumentation, token=state is not None)
    inputs = tuple(t.contiguous() for t in (r, w, k, v, a, b))
    return Launch7(
        inputs=inputs,
        scale=scale,
        y=torch.empty_like(inputs[3]),
        instr=KernelInstrumentation.build(instr, state),
        dims=(instr.batch, instr.length, *instr.state_shape),
    )


@float64_runs(wkv7_chunked)
def wkv7_triton(r, w, k, v, a, b, scale=1.0, *, form="auto", **instrumentation) -> ScanOutput:
    """RWKV-7 WKV forward on Triton, with state emission and injection fused in.

    Args:
        r, w, k, a, b: ``[B, L, H, K]`` (``w`` log-decay ``<= 0``; transition
            ``diag(exp(w_t)) + b_t a_t^T``); v: ``[B, L, H, V]``.
        scale: multiplies ``r`` (default 1.0, as RWKV-7 models use).
        form: ``"auto"`` (as RWKV-6: :func:`~..wkv6.launch.choose_form`),
            ``"recurrent"`` or ``"chunked"`` (``K <= 128``).
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments of ``docs/semantics.md``; the state ``S``
            is ``[H, K, V]``, carried and emitted in float32.

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> r, k, v = (torch.randn(1, 20, 1, 16) for _ in range(3))
        >>> kappa = torch.nn.functional.normalize(torch.randn(1, 20, 1, 16), dim=-1)
        >>> out = wkv7_triton(r, -0.5 * torch.rand(1, 20, 1, 16), k, v, -kappa, 0.5 * kappa,
        ...                   form="chunked", emit_at=torch.tensor([7, 19]),
        ...                   output_final_state=True)
        >>> torch.allclose(out.states[:, 1], out.final_state)
        True
    """
    return prepare7(r, w, k, v, a, b, scale, instrumentation).run(form)
