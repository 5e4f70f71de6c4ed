"""RWKV-7 WKV, chunk-parallel Triton forward for prefill (the generalised delta rule in WY form).

Three kernels, one after the other, on chunks of :data:`CHUNK` tokens:

1. :mod:`.chunk_factors`, two kernels with programs over (chunk, batch row and head, V tile):
   the chunk's pair matrices on tensor cores, then the blocked triangular inverse, the WY
   factors, and from them what the state pass needs: ``q_eff``, ``y_local``, the chunk
   transition ``M`` and drive ``D`` (``S_end = M S0 + D``), and ``P_t, Q_t`` for emissions
   inside the chunk;
2. :mod:`.chunk_state`, programs over (V tile, batch row and head): the light serial pass
   ``y = y_local + q_eff S``, ``S <- M S + D`` with emission and injection fused in.

Dots: exact IEEE fp32 for float32 values ``v`` and under the interpreter (and always in the
triangular inverse); for fp16/bf16 values every other product runs on tensor cores in TF32 from
fp32 operands (fp32's range: the factorised decays reach ``e^30``, past fp16's; TF32's 10-bit
mantissa, finer than bf16's and as fine as fp16's, where fla rounds its operands to the input
dtype), the state itself carried and emitted in fp32.
"""

from __future__ import annotations

import torch

from .. import _triton
from .chunk_factors import FACTOR_BOUND, wkv7_chunk_factors_kernel, wkv7_chunk_pairs_kernel
from .chunk_state import wkv7_chunk_state_kernel

__all__ = ["AUTO_MAX_KEY_DIM", "CHUNK", "MAX_KEY_DIM", "launch_chunked"]

CHUNK = 64  # BT: tokens per chunk (a multiple of 16, the inverse's diagonal blocks)
#: key channels stage 1 holds at once: its products run over blocks of this many
KEY_BLOCK = 64
#: K the chunked kernels take (the state pass keeps all of K for ``a^T S``; stage 1 parks the
#: WY factor ``W``, two key blocks at most, in two ``[CHUNK, CHUNK]`` scratch slots)
MAX_KEY_DIM = 2 * KEY_BLOCK
#: the largest K ``form="auto"`` runs chunked (``wkv7`` and ``delta_rule``); past it the
#: recurrent kernel runs (docs/semantics.md, "Which Triton kernel runs")
AUTO_MAX_KEY_DIM = 64
#: V columns per stage-1 program (its pair matrices are recomputed per V tile beyond this)
FACTOR_MAX_BV = 64


def state_blocks(key_dim: int, value_dim: int) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)`` of the state pass: all of K, ``BV <= 32`` and a state tile of at
    most 2048 elements (``BV = 16`` at ``K = 128``), 8 warps (16 cap registers at 128 and spill
    more)."""
    if key_dim > MAX_KEY_DIM:
        raise ValueError(
            f"the chunked kernel takes K <= {MAX_KEY_DIM}, got K={key_dim}; use the recurrent form"
        )
    bk = _triton.block_size(key_dim)
    return bk, min(_triton.block_size(value_dim), 32, 2048 // bk), 8


def launch_chunked(launch) -> None:
    """Run both stages on a prepared :class:`~.launch.Launch7` (``K <= MAX_KEY_DIM``)."""
    batch, length, heads, key_dim, value_dim = launch.dims
    bk, bv, warps = state_blocks(key_dim, value_dim)
    chunks = _triton.cdiv(length, CHUNK)
    factor_bv = min(_triton.block_size(value_dim), FACTOR_MAX_BV)
    value_tiles = _triton.cdiv(value_dim, factor_bv)
    device = launch.y.device
    f32 = torch.float32
    instr = launch.instr
    per_chunk = (batch, heads, chunks)
    q_eff = torch.empty(*per_chunk, CHUNK, key_dim, dtype=f32, device=device)
    y_local = torch.empty(*per_chunk, CHUNK, value_dim, dtype=f32, device=device)
    trans = torch.empty(*per_chunk, key_dim, key_dim, dtype=f32, device=device)
    drive = torch.empty(*per_chunk, key_dim, value_dim, dtype=f32, device=device)
    work = torch.empty(*per_chunk, value_tiles, 3, CHUNK, CHUNK, dtype=f32, device=device)
    events = instr.emit_count
    if instr.states is not None:
        snap_p = torch.empty(batch, events, heads, key_dim, key_dim, dtype=f32, device=device)
        snap_q = torch.empty(batch, events, heads, key_dim, value_dim, dtype=f32, device=device)
    else:
        snap_p = snap_q = _triton.dummy(device)
    exact = launch.inputs[3].dtype == torch.float32 or _triton.INTERPRETING  # v's dtype
    precision = "ieee" if exact else "tf32"
    grid = (chunks, batch * heads, value_tiles)
    wkv7_chunk_pairs_kernel[grid](
        *launch.inputs,
        y_local,
        work,
        launch.scale,
        length,
        heads,
        key_dim,
        value_dim,
        chunks,
        BT=CHUNK,
        BK=bk,
        BV=factor_bv,
        PRECISION=precision,
        KB=min(bk, KEY_BLOCK),
        FACTOR_BOUND=FACTOR_BOUND,
        num_warps=warps,
    )
    wkv7_chunk_factors_kernel[grid](
        *launch.inputs,
        q_eff,
        y_local,
        trans,
        drive,
        work,
        instr.emit_times,
        snap_p,
        snap_q,
        launch.scale,
        length,
        heads,
        key_dim,
        value_dim,
        chunks,
        events,
        BT=CHUNK,
        BK=bk,
        BV=factor_bv,
        KB=min(bk, KEY_BLOCK),
        BP=_triton.next_power_of_2(events + 1),
        HAS_EMIT=instr.states is not None,
        PRECISION=precision,
        num_warps=warps,
    )
    wkv7_chunk_state_kernel[(_triton.cdiv(value_dim, bv), batch * heads)](
        *launch.kernel_args(),
        q_eff,
        y_local,
        trans,
        drive,
        snap_p,
        snap_q,
        chunks,
        BK=bk,
        BV=bv,
        BT=CHUNK,
        PRECISION=precision,
        num_warps=warps,
        num_stages=1,  # the chunk loop's loads are consumed at once: prefetching costs registers
        **instr.flags(),
    )
