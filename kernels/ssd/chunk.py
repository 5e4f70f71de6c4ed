"""Mamba-2 SSD forward in Triton, chunk-parallel, with states emitted and injected at any timestep.

Algorithm (the state-space-duality form of Mamba-2).  The sequence is cut into chunks of ``T``
tokens (from ``chunk_size``, see :func:`block_sizes`) and three kernels run one after another:

1. :mod:`.chunk_state`, programs over (row and chunk, head, channel/state tile): the discretised
   ``dt``, the in-chunk cumulative log2 decay ``g`` and the chunk-local end state
   ``U_c = sum_j 2^(g_end - g_j) dt_j x_j B_j^T`` (``[P, T] x [T, N]`` on tensor cores);
2. :mod:`.state_passing`, programs over (state tile, head, row): the light serial pass over the
   chunks, ``S <- 2^(g_end) S + U_c``, storing each chunk's entering state over ``U_c``;
3. :mod:`.chunk_output`, programs over (token and channel tile, head, row and chunk): the outputs
   ``y = 2^(g_i) C_i S^T + (C B^T o decay o dt) x + D x``, then the ``z`` gate.

Instrumentation maps onto this shape (the state contract of ``docs/semantics.md``):

* the final state is the state pass's last state; an emission at ``t`` is the state at the
  start of the tile that holds ``t`` (which stage 3 builds for the tile's outputs) decayed, plus
  the tile's tokens up to ``t`` (at most ``BM / BK`` K-block products; ``y`` is bit-identical
  with and without emission);
* an ``add`` injection at ``t`` is linear: stage 2 adds its value decayed to the chunk end, and
  stage 3 adds ``2^(g_i - g_t) C_i v`` to the outputs ``i > t`` of its chunk;
* ``seq_idx`` resets and ``set`` injections cut the row into *segments*: a ``set`` at ``t`` is a
  reset right after ``t`` followed by an ``add`` of its value.  Two ``[B, L]`` int32 maps, the
  segment of token ``t``'s update and of the state after step ``t``, are built on the device
  (:func:`segments`), and every term of every stage counts only within one segment;
* the per-row schedules stay per row: each stage finds a chunk's or a tile's events from start
  indices into the sorted schedule (:meth:`~.._schedule.Schedule.first_at_or_after`, on the
  device, no host read).

Dots run in the input dtype (fp16/bf16 on tensor cores; the entering state enters ``C S`` rounded
to it, as in mamba-ssm, while it is carried and emitted in float32); with float32 inputs, and
always under the interpreter, every dot is exact IEEE float32.
"""

from __future__ import annotations

import functools
import math

import torch
import triton.language as tl

from .. import _triton
from .._contract import ScanOutput, float64_runs
from .._triton import KernelInstrumentation
from .chunk_output import ssd_chunk_output_kernel
from .chunk_state import ssd_chunk_state_kernel
from .reference import ssd_chunked, validate
from .state_passing import ssd_state_passing_kernel


@functools.cache  # a pure function of ints, called on every launch
def block_sizes(
    head_dim: int,
    state_size: int,
    chunk_size: int,
    interpreter: bool = _triton.INTERPRETING,
    exact: bool = False,
) -> dict[str, int]:
    """Tile sizes of the three kernels: ``T`` the chunk (``chunk_size`` rounded down to a power of
    two in [16, 256]); ``BM`` the tokens of a stage-3 tile (128: one 64-row wgmma per warpgroup
    of its 8 warps, none duplicated; 64 when ``exact``, float32 inputs whose dots run on the
    FMA units, where 128 spills three times more; 32 under the interpreter; at most ``T``);
    ``BK`` the tokens of a stage-3 K-block (32 on a GPU: with 64 its ``[BM, BK]`` pair tiles
    take stage 3 over 128 registers; 16 under the interpreter, so a tile there has two K-blocks
    too) and ``BK1`` of a stage-1 K-block (64, or 16); ``BP`` the head channels per program (at
    most 64); ``BN`` the state (all of it in stage 3, at most 128 per stage-1 program);
    ``BLOCK`` the state elements per state-pass program; ``warps`` of stages 1 and 3 (stage 2
    runs 4)."""
    chunk = min(256, max(16, 1 << (max(1, chunk_size).bit_length() - 1)))
    n = _triton.block_size(state_size)
    return dict(
        T=chunk,
        BM=min(chunk, 32 if interpreter else 64 if exact else 128),
        BK=min(chunk, 16 if interpreter else 32),
        BK1=min(chunk, 16 if interpreter else 64),
        BP=min(64, _triton.block_size(head_dim)),
        BN=n,
        BN_STATE=min(n, 128),
        BLOCK=512,
        warps=4 if interpreter else 8,
    )


def segments(
    reset: torch.Tensor | None, launch: KernelInstrumentation, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_segment, state_segment)`` ``[B, L]`` int32: the segment of token ``t``'s update and
    of the state after step ``t`` (after its injection).  A ``seq_idx`` reset before ``t`` and a
    ``set`` injection at ``t - 1`` each start a new segment at ``t``; the set's value belongs to
    the new one.  Built with device ops only."""
    batch = launch.instr.batch
    device = launch.instr.device
    starts = torch.zeros(batch, length, dtype=torch.int32, device=device)
    if reset is not None:
        starts += reset.to(torch.int32)
    if launch.instr.inject_mode == "set" and launch.inject_value is not None:
        sets = torch.zeros(batch, length + 1, dtype=torch.int32, device=device)
        sets.scatter_(1, launch.inject_times.long(), 1)  # unused slots and the sentinel hit L
        sets = sets[:, :length]
        starts[:, 1:] += sets[:, :-1]
        token = starts.cumsum(1, dtype=torch.int32)
        return token, token + sets
    token = starts.cumsum(1, dtype=torch.int32)
    return token, token


#: stage 1 is held to 128 registers a thread (two CTAs of 8 warps per SM), which ptxas meets
#: without spilling on sm_80 and sm_90 (checked ahead of time); not an interpreter option
REGISTER_CAP = {} if _triton.INTERPRETING else {"maxnreg": 128}

DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@float64_runs(ssd_chunked)
def ssd_triton(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    dt_softplus=False,
    dt_limit=(0.0, math.inf),
    **instrumentation,
) -> ScanOutput:
    """Mamba-2 SSD, Triton chunked forward with states emitted and injected at any timestep.

    Same arguments, validation and result as the reference
    :func:`statetap.kernels.ssd.reference.ssd_chunked` (mamba-ssm's
    ``mamba_chunk_scan_combined`` plus the instrumentation of ``docs/semantics.md``).

    Args:
        x: ``[B, L, H, P]`` (float32, float16 or bfloat16); dt: ``[B, L, H]``; A: ``[H]``;
        B, C: ``[B, L, G, N]``; chunk_size: 256 (the kernels' chunk is this rounded down
            to a power of two in [16, 256]; the result does not depend on it beyond rounding).
        D: ``[H]`` or ``[H, P]``; z: ``[B, L, H, P]``; dt_bias: ``[H]``; dt_softplus: False;
        dt_limit: ``(0, inf)`` (clamp applied when different); initial_states (mamba-ssm's
            name) or initial_state: ``[B, H, P, N]``; seq_idx: ``[B, L]`` integer.
        output_final_state, emit_at, inject_at, inject_value, inject_mode, inject_scale: the
            state contract, state ``[H, P, N]``.

    Returns:
        ``ScanOutput(y [B, L, H, P] in x.dtype, final_state [B, H, P, N] fp32 or None,
        states [B, P', H, P, N] fp32 or None)``.  Float64 inputs run the reference.

    Example (CUDA, or any device under ``TRITON_INTERPRET=1``):
        >>> dev = "cuda" if torch.cuda.is_available() else "cpu"
        >>> x, dt = torch.randn(1, 10, 2, 8, device=dev), torch.randn(1, 10, 2, device=dev)
        >>> A = -torch.rand(2, device=dev)
        >>> B, C = torch.randn(1, 10, 1, 16, device=dev), torch.randn(1, 10, 1, 16, device=dev)
        >>> out = ssd_triton(x, dt, A, B, C, chunk_size=16, dt_softplus=True,
        ...                  emit_at=torch.tensor([3, 9], device=dev), output_final_state=True)
        >>> # S_9 emitted (by the output kernel) and returned as the final state (by the state
        >>> # pass): the same state, summed in another order
        >>> torch.allclose(out.states[:, 1], out.final_state, rtol=1e-5, atol=1e-5)
        True
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    instr, reset = validate(
        x, dt, A, B, C, D, z, dt_bias, dt_limit, seq_idx, initial_states, instrumentation
    )
    _triton.check_launchable(x.device, "ssd")
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2:]
    device = x.device
    launch = KernelInstrumentation.build(instr)
    f32 = dict(dtype=torch.float32, device=device)
    spare = _triton.dummy(device)
    ieee = _triton.INTERPRETING or x.dtype == torch.float32
    tiles = block_sizes(head_dim, state_size, chunk_size, exact=ieee)
    chunk, tile = tiles["T"], tiles["BM"]
    chunks = _triton.cdiv(length, chunk)
    padded = chunks * chunk
    y = _triton.empty((batch, length, heads, head_dim), x.dtype, device)
    dt_tokens = torch.empty(batch, heads, padded, **f32)
    g_tokens = torch.empty(batch, heads, padded, **f32)
    states = torch.empty(batch, chunks, heads, head_dim, state_size, **f32)
    has_segments = reset is not None or (
        instr.inject_mode == "set" and launch.inject_value is not None
    )
    token_seg = state_seg = _triton.dummy(device, torch.int32)
    if has_segments:
        token_seg, state_seg = segments(reset, launch, length)
    if D is not None:
        D = (D[:, None].expand(heads, head_dim) if D.dim() == 1 else D).to(torch.float32)
    dot_dtype = tl.float32 if ieee else DOT_DTYPES[x.dtype]
    x, B, C = x.contiguous(), B.contiguous(), C.contiguous()
    initial, final, emit_t, emit_s, emitted, inj_t, inj_s, inj_v, inj_scale = launch.pointers(spare)
    p_tiles = _triton.cdiv(head_dim, tiles["BP"])

    ssd_chunk_state_kernel[
        (batch * chunks, heads, p_tiles * _triton.cdiv(state_size, tiles["BN_STATE"]))
    ](
        x,
        dt.contiguous(),
        A.to(torch.float32).contiguous(),
        spare if dt_bias is None else dt_bias.to(torch.float32).contiguous(),
        B,
        token_seg,
        state_seg,
        dt_tokens,
        g_tokens,
        torch.empty(batch, heads, padded, **f32),
        states,
        length,
        heads,
        head_dim,
        state_size,
        groups,
        heads // groups,
        padded,
        float(dt_limit[0]),
        float(min(dt_limit[1], 3.0e38)),
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus),
        HAS_LIMIT=tuple(dt_limit) != (0.0, math.inf),
        HAS_SEGMENTS=has_segments,
        IEEE=ieee,
        DOT_DTYPE=dot_dtype,
        T=chunk,
        BK=tiles["BK1"],
        BP=tiles["BP"],
        BN=tiles["BN_STATE"],
        num_warps=tiles["warps"],
        num_stages=2,
        **REGISTER_CAP,
    )
    flags = launch.flags()
    state_elements = head_dim * state_size
    ssd_state_passing_kernel[(_triton.cdiv(state_elements, tiles["BLOCK"]), heads, batch)](
        states,
        g_tokens,
        state_seg,
        initial,
        final,
        inj_t,
        inj_s,
        inj_v,
        inj_scale,
        *launch.value_strides(),
        length,
        heads,
        state_size,
        state_elements,
        padded,
        launch.inject_count,
        HAS_INITIAL=flags["HAS_INITIAL"],
        STORE_FINAL=flags["STORE_FINAL"],
        HAS_SEGMENTS=has_segments,
        HAS_INJECT=flags["HAS_INJECT"],
        HAS_SCALE=flags["HAS_SCALE"],
        T=chunk,
        BLOCK=tiles["BLOCK"],
        num_stages=1,
        num_warps=4,
    )
    emit_first = inj_first = _triton.dummy(device, torch.int32)
    if flags["HAS_EMIT"]:
        emit_first = launch.instr.emit_schedule.first_at_or_after(tile, padded // tile)
    if flags["HAS_INJECT"]:
        inj_first = launch.instr.inject_schedule.first_at_or_after(chunk, padded // chunk)
    ssd_chunk_output_kernel[(chunk // tile * p_tiles, heads, batch * chunks)](
        x,
        y if z is None else z.contiguous(),
        y,
        B,
        C,
        spare if D is None else D,
        *(D.stride() if D is not None else (0, 0)),
        dt_tokens,
        g_tokens,
        states,
        token_seg,
        state_seg,
        emit_t,
        emit_s,
        emit_first,
        emitted,
        inj_t,
        inj_s,
        inj_first,
        inj_v,
        inj_scale,
        *launch.value_strides(),
        length,
        heads,
        head_dim,
        state_size,
        groups,
        heads // groups,
        padded,
        launch.emit_count,
        launch.inject_count,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_SEGMENTS=has_segments,
        HAS_EMIT=flags["HAS_EMIT"],
        HAS_INJECT=flags["HAS_INJECT"],
        HAS_SCALE=flags["HAS_SCALE"],
        IEEE=ieee,
        DOT_DTYPE=dot_dtype,
        T=chunk,
        BM=tile,
        BK=tiles["BK"],
        BP=tiles["BP"],
        BN=tiles["BN"],
        num_warps=tiles["warps"],
        num_stages=2,
    )
    return launch.output(y)
