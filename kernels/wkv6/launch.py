"""RWKV-5/6 WKV on Triton: the public forward, its validation and the choice of kernel.

``wkv6_triton`` validates exactly as the reference does (:func:`.reference.validate`), prepares
a :class:`Launch` (inputs made contiguous where needed, output allocated, instrumentation
scheduled) and runs the kernel :func:`choose_form` picks: the recurrent one for short
sequences and for batches that fill the GPU with its warps, the chunked one otherwise.  Forward
only; float64 inputs (the exact oracle) run the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _triton
from .._contract import ScanOutput, float64_runs
from .._triton import KernelInstrumentation
from .chunk import MAX_KEY_DIM, launch_chunked
from .fused_recurrent import launch_recurrent, recurrent_blocks
from .reference import validate, wkv6_chunked

#: ``form="auto"`` runs sequences up to this length with the recurrent kernel.
RECURRENT_MAX_LENGTH = 64
#: ``form="auto"`` runs longer sequences with the recurrent kernel when it launches at least this
#: many warps (one per 16 value columns of a row and head): two per scheduler of an H100 (132 SMs
#: x 4). The compiled performance model (``make gpu-model``, a prediction) puts the recurrent form
#: below the chunked one at B 8, H 64, K = V = 64 (2048 warps; 0.82x for RWKV-6, 0.73x for
#: RWKV-7, 0.68x and 0.70x of fla's chunked kernels) but its per-token chain is serial: with
#: fewer warps than this the latency the model leaves out is not hidden, and the chunked form's
#: B x H x L/64 programs fill the GPU instead.
RECURRENT_MIN_WARPS = 2 * 132 * 4
FORMS = ("auto", "recurrent", "chunked")


def choose_form(form: str, dims: tuple[int, ...], max_key_dim: int) -> str:
    """The kernel form a call runs: ``form`` itself unless ``"auto"``, which picks
    ``"recurrent"`` for ``L <= RECURRENT_MAX_LENGTH``, for ``K > max_key_dim`` (the chunked
    kernel's limit) and when the recurrent kernel launches at least ``RECURRENT_MIN_WARPS``
    warps (``B * H * ceil(V / 16)``, from :func:`.fused_recurrent.recurrent_blocks`), else
    ``"chunked"``. ``dims`` is ``(B, L, H, K, V)``."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form != "auto":
        return form
    batch, length, heads, key_dim, value_dim = dims
    if length <= RECURRENT_MAX_LENGTH or key_dim > max_key_dim:
        return "recurrent"
    _, block_v, warps_per_program = recurrent_blocks(key_dim, value_dim)
    warps = batch * heads * _triton.cdiv(value_dim, block_v) * warps_per_program
    return "recurrent" if warps >= RECURRENT_MIN_WARPS else "chunked"


@dataclass(slots=True)
class Launch:
    """Everything a WKV-5/6 kernel launch reads and writes.

    ``r, k`` ``[B, L, H, K]``, ``v`` ``[B, L, H, V]`` contiguous; ``w`` with strides
    ``(w_strides[0], w_strides[1], K, 1)`` (zeros over batch and time for RWKV-5's static
    decay); ``u`` ``[H, K]``; ``y`` ``[B, L, H, V]`` in ``v.dtype`` (uninitialised).  A decode
    step's tensors have no time axis (``[B, H, K]``, the same memory as ``L = 1``).
    """

    r: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor
    w_strides: tuple[int, int]
    u: torch.Tensor
    scale: float
    y: torch.Tensor
    instr: KernelInstrumentation
    dims: tuple[int, int, int, int, int]  # (B, L, H, K, V): a decode step's L is 1

    def output(self) -> ScanOutput:
        return self.instr.output(self.y)

    def kernel_args(self) -> tuple:
        """The positional arguments of ``wkv6_recurrent_kernel`` / ``wkv6_chunk_kernel``."""
        _, length, heads, key_dim, value_dim = self.dims
        return (
            self.r,
            self.k,
            self.v,
            self.w,
            self.u,
            self.y,
            *self.instr.pointers(self.y),
            self.scale,
            length,
            heads,
            key_dim,
            value_dim,
            self.instr.emit_count,
            self.instr.inject_count,
            *self.w_strides,
            *self.instr.value_strides(),
        )


def prepare(r, k, v, w, u, scale, instrumentation: dict, state=None) -> Launch:
    """Validate (as the reference) and lay out one launch.  ``w`` may be a broadcast view
    ``[B, L, H, K]`` of a ``[H, K]`` decay.  ``state``: decode one token in place, inputs
    ``[B, H, K]`` (see ``step.py``)."""
    token = state is not None
    scale, instr = validate(r, k, v, w, u, scale, instrumentation, token=token)
    key_dim = r.shape[-1]
    if w.stride(-1) != 1 or w.stride(-2) != key_dim:
        w = w.contiguous()
    v = v.contiguous()
    return Launch(
        r=r.contiguous(),
        k=k.contiguous(),
        v=v,
        w=w,
        w_strides=(w.stride(0), 0 if token else w.stride(1)),
        u=u.contiguous(),
        scale=scale,
        y=torch.empty_like(v),
        instr=KernelInstrumentation.build(instr, state),
        dims=(instr.batch, instr.length, *instr.state_shape),
    )


def run(launch: Launch, form: str = "auto") -> ScanOutput:
    """Run the kernel ``form`` names (``"auto"``: :func:`choose_form`) and return the result."""
    form = choose_form(form, launch.dims, MAX_KEY_DIM)
    (launch_chunked if form == "chunked" else launch_recurrent)(launch)
    return launch.output()


@float64_runs(wkv6_chunked)
def wkv6_triton(r, k, v, w, u, scale=None, *, form="auto", **instrumentation) -> ScanOutput:
    """RWKV-6 WKV forward on Triton, with state emission and injection fused in.

    Args:
        r, k: ``[B, L, H, K]`` receptance and key (fp32, fp16 or bf16).
        v: ``[B, L, H, V]`` value.
        w: ``[B, L, H, K]`` log-decay (``<= 0``).
        u: ``[H, K]`` bonus.
        scale: multiplies ``r``; default ``K ** -0.5`` (RWKV-6 models use 1.0).
        form: ``"auto"`` (:func:`choose_form`: recurrent for ``L <= 64``, ``K > 64`` or
            ``B * H * ceil(V / 16) >= 1056``, else chunked), ``"recurrent"`` or ``"chunked"``.
        initial_state, output_final_state, emit_at, inject_at, inject_value, inject_mode,
        inject_scale: the instrumentation arguments of ``docs/semantics.md``; the state ``S``
            is ``[H, K, V]``, carried and emitted in float32.

    Returns:
        ``ScanOutput(y [B, L, H, V] in v.dtype, final_state [B, H, K, V] | None,
        states [B, P, H, K, V] | None)``.

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> r, k, v = (torch.randn(1, 20, 1, 16) for _ in range(3))
        >>> w = torch.nn.functional.logsigmoid(torch.randn(1, 20, 1, 16))
        >>> out = wkv6_triton(r, k, v, w, torch.randn(1, 16), form="chunked",
        ...                   emit_at=torch.tensor([0, 15, 19]))
        >>> out.states.shape
        torch.Size([1, 3, 1, 16, 16])
    """
    return run(prepare(r, k, v, w, u, scale, instrumentation), form)
