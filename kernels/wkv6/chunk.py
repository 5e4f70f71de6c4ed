"""RWKV-5/6 WKV, chunk-parallel Triton forward for prefill: the launcher.

Two kernels over chunks of :data:`CHUNK_SIZE` tokens:

1. :func:`.chunk_states.wkv6_chunk_states_kernel`, grid ``(V tiles, B * H)``: the serial state
   pass, one tensor-core update per chunk; writes the state entering every chunk into ``h``
   ``[B, NT, H, K, V]`` and the final state; emissions and injections act here, per event.
2. :func:`.chunk_output.wkv6_chunk_output_kernel`, grid ``(V tiles, B * H, NT)``: every chunk's
   outputs at once from ``h``, its intra-chunk matrix and the injections' corrections.

``h`` is kept in the dtype of the dots (the inputs' 16-bit dtype, float32 for float32 inputs,
whose dots run in exact IEEE arithmetic); the state itself is carried and emitted in float32.
"""

from __future__ import annotations

import torch

from .. import _triton
from .chunk_output import wkv6_chunk_output_kernel
from .chunk_states import wkv6_chunk_states_kernel

#: Tokens per chunk of the chunked kernels.
CHUNK_SIZE = 64
#: Tokens per diagonal sub-block of a chunk (exact per-element decays inside).
SUB_BLOCK = 16
#: Largest key dimension of the chunked kernels (RWKV-5/6/7 models use 64); larger heads run
#: the recurrent kernel.
MAX_KEY_DIM = 64
#: Largest value tile: the intra-chunk matrix is built once per chunk up to ``V = 64``.
MAX_VALUE_TILE = 64
#: Launch shapes (at most 128 registers, no spills, on sm_80 and sm_90): the state pass's loads
#: are software-pipelined across chunks; the output kernel's small loops are not (buffers for
#: their loads would cost registers).
STATE_WARPS, STATE_STAGES, STATE_VALUE_TILE = 8, 3, 32
OUTPUT_WARPS, OUTPUT_STAGES = 8, 1


def dot_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the kernels' ``tl.dot`` operands take: the inputs' 16-bit dtype, else float32."""
    dtype = tensors[0].dtype
    if dtype in (torch.float16, torch.bfloat16) and all(t.dtype == dtype for t in tensors):
        return dtype
    return torch.float32


def launch_chunked(launch) -> None:
    """Run the state pass and the output kernel on a prepared :class:`~.launch.Launch`."""
    batch, length, heads, key_dim, value_dim = launch.dims
    if key_dim > MAX_KEY_DIM:
        raise ValueError(
            f"the chunked kernel takes K <= {MAX_KEY_DIM}, got K={key_dim}; use the recurrent form"
        )
    instr = launch.instr
    flags = instr.flags()
    bk = _triton.block_size(key_dim)
    bv = min(_triton.block_size(value_dim), MAX_VALUE_TILE)
    chunks = _triton.cdiv(length, CHUNK_SIZE)
    dtype = dot_dtype(launch.r, launch.k, launch.v)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    h = torch.empty((batch, chunks, heads, key_dim, value_dim), dtype=dtype, device=launch.v.device)
    (initial, final, emit_t, emit_s, states, inj_t, inj_s, inj_v, inj_scale) = instr.pointers(
        launch.y
    )
    value_strides = instr.value_strides()
    inj_first = _triton.dummy(launch.y.device, torch.int32)
    if flags["HAS_INJECT"]:
        inj_first = instr.instr.inject_schedule.first_at_or_after(CHUNK_SIZE, chunks)
    bv_state = min(bv, STATE_VALUE_TILE)
    wkv6_chunk_states_kernel[(_triton.cdiv(value_dim, bv_state), batch * heads)](
        launch.k,
        launch.v,
        launch.w,
        h,
        initial,
        final,
        emit_t,
        emit_s,
        states,
        inj_t,
        inj_s,
        inj_v,
        inj_scale,
        length,
        heads,
        key_dim,
        value_dim,
        instr.emit_count,
        instr.inject_count,
        *launch.w_strides,
        *value_strides,
        BK=bk,
        BV=bv_state,
        BT=CHUNK_SIZE,
        PRECISION=precision,
        num_warps=STATE_WARPS,
        num_stages=STATE_STAGES,
        **flags,
    )
    wkv6_chunk_output_kernel[(_triton.cdiv(value_dim, bv), batch * heads, chunks)](
        launch.r,
        launch.k,
        launch.v,
        launch.w,
        launch.u,
        launch.y,
        h,
        inj_t,
        inj_s,
        inj_first,
        inj_v,
        inj_scale,
        launch.scale,
        length,
        heads,
        key_dim,
        value_dim,
        instr.inject_count,
        *launch.w_strides,
        *value_strides,
        BK=bk,
        BV=bv,
        BT=CHUNK_SIZE,
        BC=SUB_BLOCK,
        HAS_INJECT=flags["HAS_INJECT"],
        INJECT_SET=flags["INJECT_SET"],
        HAS_SCALE=flags["HAS_SCALE"],
        PRECISION=precision,
        num_warps=OUTPUT_WARPS,
        num_stages=OUTPUT_STAGES,
    )
