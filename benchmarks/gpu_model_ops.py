"""What ``gpu_model.py`` models: each op's statetap calls and peer calls at the goal shapes, and
each kernel's loop trip counts.

Shapes and inputs follow ``bench_mamba.py`` / ``bench_rwkv.py`` (bf16 activations, fp32 state;
``D``, ``z``, bias and softplus on for Mamba), so the model's rows stand beside the suite's
measured ones. Values do not matter (nothing runs); inputs are zeros, or in range where a
wrapper checks it (negative decays).

A :class:`Case` is one row: ``op`` and ``shape``, ``impl`` (``statetap chunked``, ``mamba_ssm
mamba_chunk_scan_combined`` ...), ``variant`` (``plain``, ``emit 1%``, ``emit /64``), ``call``
(runs the public entry point: under ``gpu_model_capture.capture`` it launches nothing),
``emit`` (the emitted positions of every row) and ``analytic`` (a cost stated by hand, for the
one peer that is not Triton: mamba-ssm's CUDA ``selective_scan_fn``).

:data:`TRIPS` maps a kernel name to a function ``(values, emit) -> [LoopSpec, ...]``: the loop
nest and trip counts of one program, from the launch's argument values (``values``: every
non-tensor argument, constexprs included). ``_sass.dynamic_count`` checks the nest against the
compiled code and raises when they differ.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton

from statetap.kernels._sass import LoopSpec

_TRITON = tuple(int(part) for part in triton.__version__.split(".")[:2])

BF16 = torch.bfloat16
F32 = torch.float32
#: the ``lower_bound`` fla's RWKV-7 layer passes to ``chunk_rwkv7`` (its decay is
#: ``-exp(-0.5) * sigmoid(.)``; see research/kernels.md, fla ``layers/rwkv7.py``), which licenses
#: fla's 64-token tensor-core chunks
RWKV7_LOWER_BOUND = -math.exp(-0.5)
#: thread-instructions per (t, n) state element of mamba-ssm's CUDA ``selective_scan_fwd``
SCAN_CUDA_THREAD_INSTR = 15


@dataclass
class Analytic:
    """A kernel modelled by hand: ``warp_instr`` (dynamic total), ``mufu`` warp-instructions,
    ``bytes`` moved, ``programs`` x ``warps``, and ``note`` saying where the figure comes from."""

    kernel: str
    warp_instr: float
    mufu: float
    bytes: int
    programs: int
    warps: int
    note: str


@dataclass
class Case:
    op: str
    shape: str
    impl: str
    variant: str
    call: Callable[[], Any] | None
    emit: tuple[int, ...] = ()
    analytic: Analytic | None = None

    @property
    def events(self) -> int:
        """Emissions per sequence row."""
        return len(self.emit)

    @property
    def key(self) -> str:
        return f"{self.op} | {self.shape} | {self.impl} | {self.variant}"


def _z(*shape, dtype=BF16, fill: float = 0.0) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype)
    return t.fill_(fill) if fill else t.zero_()


def _every(length: int, step: int) -> torch.Tensor:
    return torch.arange(step - 1, length, step)


def _one_percent(length: int) -> torch.Tensor:
    return torch.linspace(0, length - 1, max(1, length // 100)).long()


def _emit_variants(length: int) -> dict[str, torch.Tensor | None]:
    return {"plain": None, "emit 1%": _one_percent(length), "emit /64": _every(length, 64)}


# --------------------------------------------------------------------------------------------
# Mamba-1 selective scan


def _mamba1(batch, length, dim, n):
    return dict(
        u=_z(batch, dim, length),
        delta=_z(batch, dim, length),
        A=_z(dim, n, dtype=F32, fill=-1.0),
        B=_z(batch, 1, n, length),
        C=_z(batch, 1, n, length),
        D=_z(dim, dtype=F32),
        z=_z(batch, dim, length),
        delta_bias=_z(dim, dtype=F32),
        delta_softplus=True,
    )


def selective_scan_cases(batch=8, length=2048, dim=1536, n=16) -> list[Case]:
    from statetap.kernels.selective_scan.fused_recurrent import selective_scan_triton

    shape = f"B{batch} L{length} D{dim} N{n}"
    cases = []
    for variant, emit in _emit_variants(length).items():
        kw = {} if emit is None else dict(emit_at=emit)

        def call(kw=kw):
            return selective_scan_triton(**_mamba1(batch, length, dim, n), **kw)

        cases.append(
            Case(
                "selective_scan",
                shape,
                "statetap",
                variant,
                call,
                () if emit is None else tuple(emit.tolist()),
            )
        )
    elements = batch * dim * length * n
    # u, delta, z, out [B, D, L] bf16; B, C [B, 1, N, L] bf16; A [D, N], D, bias fp32
    moved = 4 * batch * dim * length * 2 + 2 * batch * n * length * 2 + (dim * n + 2 * dim) * 4
    cases.append(
        Case(
            "selective_scan",
            shape,
            "mamba_ssm selective_scan_fn (CUDA)",
            "plain",
            None,
            analytic=Analytic(
                kernel="selective_scan_fwd_kernel (CUDA, analytic)",
                warp_instr=elements * SCAN_CUDA_THREAD_INSTR / 32,
                mufu=elements / 32,  # one ex2 per (t, n)
                bytes=moved,
                programs=batch * dim,
                warps=4,
                note=f"{SCAN_CUDA_THREAD_INSTR} thread-instructions per (t, n) element",
            ),
        )
    )
    return cases


# --------------------------------------------------------------------------------------------
# Mamba-2 SSD


def _mamba2(batch, length, heads, head_dim, n):
    return dict(
        x=_z(batch, length, heads, head_dim),
        dt=_z(batch, length, heads),
        A=_z(heads, dtype=F32, fill=-1.0),
        B=_z(batch, length, 1, n),
        C=_z(batch, length, 1, n),
        D=_z(heads, dtype=F32),
        z=_z(batch, length, heads, head_dim),
        dt_bias=_z(heads, dtype=F32),
        dt_softplus=True,
    )


def ssd_cases(batch=8, length=2048, heads=24, head_dim=64, n=128, variants=True) -> list[Case]:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    from statetap.kernels.ssd.chunk import ssd_triton

    shape = f"B{batch} L{length} H{heads} P{head_dim} N{n}"
    cases = []
    chosen = _emit_variants(length) if variants else {"plain": None}
    for variant, emit in chosen.items():
        kw = {} if emit is None else dict(emit_at=emit)

        def call(kw=kw):
            return ssd_triton(**_mamba2(batch, length, heads, head_dim, n), chunk_size=256, **kw)

        cases.append(
            Case(
                "ssd",
                shape,
                "statetap",
                variant,
                call,
                () if emit is None else tuple(emit.tolist()),
            )
        )

    def peer():
        return mamba_chunk_scan_combined(
            **_mamba2(batch, length, heads, head_dim, n), chunk_size=256
        )

    cases.append(Case("ssd", shape, "mamba_ssm mamba_chunk_scan_combined", "plain", peer))
    return cases


# --------------------------------------------------------------------------------------------
# RWKV


def _rwkv6(batch, length, heads, dim):
    s = (batch, length, heads, dim)
    return dict(r=_z(*s), k=_z(*s), v=_z(*s), w=_z(*s, fill=-0.5), u=_z(heads, dim))


def _rwkv7(batch, length, heads, dim):
    s = (batch, length, heads, dim)
    return dict(r=_z(*s), w=_z(*s, fill=-0.5), k=_z(*s), v=_z(*s), a=_z(*s), b=_z(*s))


def _form_cases(op: str, shape: str, length: int, run) -> list[Case]:
    """statetap's rows of an op with two forms: ``run(form, instrumentation)`` for each form and
    emission variant."""
    cases = []
    for form in ("chunked", "recurrent"):
        for variant, emit in _emit_variants(length).items():
            kw = {} if emit is None else dict(emit_at=emit)
            emitted = () if emit is None else tuple(emit.tolist())
            call = functools.partial(run, form, kw)
            cases.append(Case(op, shape, f"statetap {form}", variant, call, emitted))
    return cases


def wkv_cases(op: str, batch=8, length=2048, heads=64, dim=64) -> list[Case]:
    from statetap.kernels.wkv6.launch import wkv6_triton
    from statetap.kernels.wkv7.launch import wkv7_triton

    inputs = _rwkv6 if op == "wkv6" else _rwkv7
    fused = wkv6_triton if op == "wkv6" else wkv7_triton
    shape = f"B{batch} L{length} H{heads} K{dim} V{dim}"

    def run(form, kw):
        return fused(**inputs(batch, length, heads, dim), scale=1.0, form=form, **kw)

    cases = _form_cases(op, shape, length, run)
    if op == "wkv6":
        from fla.ops.rwkv6 import chunk_rwkv6

        def peer():
            return chunk_rwkv6(**inputs(batch, length, heads, dim), scale=1.0)

        cases.append(Case(op, shape, "fla chunk_rwkv6", "plain", peer))
    else:
        from fla.ops.rwkv7 import chunk_rwkv7

        def peer():
            return chunk_rwkv7(
                **inputs(batch, length, heads, dim), scale=1.0, lower_bound=RWKV7_LOWER_BOUND
            )

        cases.append(Case(op, shape, "fla chunk_rwkv7 (lower_bound)", "plain", peer))
    return cases


def _gated_delta(batch, length, heads, dim):
    s = (batch, length, heads, dim)
    return dict(
        q=_z(*s),
        k=_z(*s),
        v=_z(*s),
        g=_z(batch, length, heads, dtype=F32, fill=-0.5),
        beta=_z(batch, length, heads, fill=0.5),
    )


def delta_rule_cases(batch=8, length=2048, heads=16, dim=128) -> list[Case]:
    """Qwen3-Next's gated delta rule (a gate per head, L2-normalised q/k, K = V = 128): both
    statetap forms against fla's ``chunk_gated_delta_rule``. The chunked form's mapping onto
    ``wkv7`` (four float32 ``[B, L, H, K]`` tensors built by torch ops) is not modelled."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    from statetap.kernels.delta_rule.launch import delta_rule_triton

    shape = f"B{batch} L{length} H{heads} K{dim} V{dim}"

    def run(form, kw):
        x = _gated_delta(batch, length, heads, dim)
        q, k, v, g, beta = (x[n] for n in ("q", "k", "v", "g", "beta"))
        return delta_rule_triton(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, form=form, **kw)

    cases = _form_cases("delta_rule", shape, length, run)

    def peer():
        x = _gated_delta(batch, length, heads, dim)
        return chunk_gated_delta_rule(**x, use_qk_l2norm_in_kernel=True)

    cases.append(Case("delta_rule", shape, "fla chunk_gated_delta_rule", "plain", peer))
    return cases


def wkv4_cases(batch=8, length=2048, channels=4096) -> list[Case]:
    from statetap.kernels.wkv4.fused_recurrent import wkv4_triton

    shape = f"B{batch} L{length} C{channels}"
    cases = []
    for variant, emit in _emit_variants(length).items():
        kw = {} if emit is None else dict(emit_at=emit)

        def call(kw=kw):
            return wkv4_triton(
                _z(channels, dtype=F32, fill=-0.5),
                _z(channels, dtype=F32),
                _z(batch, length, channels),
                _z(batch, length, channels),
                **kw,
            )

        cases.append(
            Case(
                "wkv4",
                shape,
                "statetap",
                variant,
                call,
                () if emit is None else tuple(emit.tolist()),
            )
        )
    return cases


# --------------------------------------------------------------------------------------------
# decode steps


def step_cases(batch=64) -> list[Case]:
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    from statetap.kernels.selective_scan.step import selective_scan_step_triton
    from statetap.kernels.ssd.step import ssd_step_triton
    from statetap.kernels.wkv6.step import wkv6_step_triton
    from statetap.kernels.wkv7.step import wkv7_step_triton

    cases = []
    dim, n = 5120, 16
    m1 = {
        k: (v.select(-1, 0) if k in ("u", "delta", "z", "B", "C") else v)
        for k, v in _mamba1(batch, 1, dim, n).items()
    }

    def scan_step():
        return selective_scan_step_triton(_z(batch, dim, n, dtype=F32), **m1)

    def scan_peer():
        return selective_state_update(
            _z(batch, dim, n, dtype=F32),
            m1["u"],
            m1["delta"],
            m1["A"],
            m1["B"],
            m1["C"],
            m1["D"],
            m1["z"],
            dt_bias=m1["delta_bias"],
            dt_softplus=True,
        )

    shape = f"B{batch} D{dim} N{n}"
    cases += [
        Case("selective_scan_step", shape, "statetap", "plain", scan_step),
        Case("selective_scan_step", shape, "mamba_ssm selective_state_update", "plain", scan_peer),
    ]
    heads, head_dim, n2 = 80, 64, 128
    m2 = {
        k: (v.select(1, 0) if k in ("x", "dt", "z", "B", "C") else v)
        for k, v in _mamba2(batch, 1, heads, head_dim, n2).items()
    }

    def ssd_step():
        return ssd_step_triton(_z(batch, heads, head_dim, n2, dtype=F32), **m2)

    def ssd_peer():
        return selective_state_update(
            _z(batch, heads, head_dim, n2, dtype=F32),
            m2["x"],
            m2["dt"][..., None].expand(-1, -1, head_dim),
            m2["A"][:, None, None].expand(heads, head_dim, n2),
            m2["B"],
            m2["C"],
            m2["D"][:, None].expand(heads, head_dim),
            m2["z"],
            dt_bias=m2["dt_bias"][:, None].expand(heads, head_dim),
            dt_softplus=True,
        )

    shape = f"B{batch} H{heads} P{head_dim} N{n2}"
    cases += [
        Case("ssd_step", shape, "statetap", "plain", ssd_step),
        Case("ssd_step", shape, "mamba_ssm selective_state_update", "plain", ssd_peer),
    ]
    h, d = 64, 64

    def tok(fill=0.0):
        return _z(batch, h, d, fill=fill)

    def wkv6_step():
        return wkv6_step_triton(
            tok(), tok(), tok(), tok(-0.5), _z(h, d), _z(batch, h, d, d, dtype=F32), 1.0
        )

    def wkv7_step():
        return wkv7_step_triton(
            tok(), tok(-0.5), tok(), tok(), tok(), tok(), _z(batch, h, d, d, dtype=F32)
        )

    shape = f"B{batch} H{h} K{d} V{d}"
    cases += [
        Case("wkv6_step", shape, "statetap", "plain", wkv6_step),
        Case("wkv7_step", shape, "statetap", "plain", wkv7_step),
    ]
    return cases


def all_cases() -> list[Case]:
    """Every row ``gpu_model.py`` prints, in table order."""
    return (
        selective_scan_cases()
        + ssd_cases()
        + ssd_cases(heads=80, variants=False)
        + wkv_cases("wkv6")
        + wkv_cases("wkv7")
        + delta_rule_cases()
        + wkv4_cases()
        + step_cases()
    )


# --------------------------------------------------------------------------------------------
# loop trip counts per program, by kernel name: (values, emit positions) -> [LoopSpec, ...]


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _pieces(length: int, block: int) -> int:
    return _cdiv(length, block)


def _mid_piece(emit: tuple[int, ...], block: int) -> int:
    """Emissions that fall inside a piece of ``block`` tokens, not on its last token."""
    return sum(1 for t in emit if t % block != block - 1)


def _emission_loop(count: int, parent_trips: int) -> tuple[LoopSpec, ...]:
    """The loop over one piece's emissions, run ``count`` times in all per program."""
    return (LoopSpec(trips=count / parent_trips),)


def _ssd_chunk_output(v, emit):
    """The K-blocks before the tile (tile m of a chunk runs m * BM / BK; the tile's own blocks
    are unrolled) and, when injecting, the injections before it; when emitting, the loop over
    the tile's emissions, each over the tile's K-blocks up to its time (and the injections so
    far); when injecting, the loop over the tile's injections."""
    from statetap.kernels.ssd.chunk_output import EMIT_BK

    chunk, tile, block = v["T"], v["BM"], v["BK"]
    loops = [LoopSpec(trips=tile / block * (chunk // tile - 1) / 2)]
    if v["HAS_INJECT"]:
        loops.append(LoopSpec(trips=0))
    if v["HAS_EMIT"]:
        blocks = sum((t % tile) // EMIT_BK.value + 1 for t in emit) / max(1, len(emit))
        inner = (LoopSpec(trips=blocks),) + ((LoopSpec(trips=0),) if v["HAS_INJECT"] else ())
        loops.append(LoopSpec(trips=len(emit) / (v["LP"] // tile), children=inner))
    if v["HAS_INJECT"]:
        loops.append(LoopSpec(trips=0))
    return loops


def _ssd_state_passing(v, emit):
    inject = (LoopSpec(trips=0),) if v["HAS_INJECT"] else ()
    return [LoopSpec(trips=v["LP"] // v["T"], children=inject)]


def _wkv6_chunk_states(v, emit):
    chunks = _pieces(v["L"], v["BT"])
    return [LoopSpec(trips=chunks, children=_emission_loop(len(emit), chunks) if emit else ())]


def _wkv6_chunk_output(v, emit):
    """The diagonal sub-blocks a key column a step; then per row sub-block the earlier ones."""
    blocks = v["BT"] // v["BC"]
    earlier = LoopSpec(trips=(blocks - 1) / 2)
    return [LoopSpec(trips=v["BC"]), LoopSpec(trips=blocks, children=(earlier,))]


def _wkv7_chunk_factors(v, emit):
    """One chunk per program: past one key block, the loop over the transition's key-block rows
    (in each, over its columns in the first V tile's programs only); one snapshot (the same
    loops) per emission inside the chunk."""
    chunks = _pieces(v["L"], v["BT"])
    blocks = v["BK"] // v["KB"]
    columns = LoopSpec(trips=blocks / _cdiv(v["V"], v["BV"]))
    cut = (LoopSpec(trips=blocks, children=(columns,)),) if blocks > 1 else ()
    snapshots = [LoopSpec(trips=_mid_piece(emit, v["BT"]) / chunks, children=cut)]
    return [*cut, *(snapshots if v["HAS_EMIT"] else [])]


def _wkv7_chunk_state(v, emit):
    chunks = _pieces(v["L"], v["BT"])
    extra = _emission_loop(_mid_piece(emit, v["BT"]), chunks) if v["HAS_EMIT"] else ()
    return [LoopSpec(trips=chunks, children=extra)]


def _column_segments(v, emit):
    """The wkv6/wkv7 recurrent walk: segments ending at each emission (and at L), tokens
    inside them (a decode step, L = 1, compiles to straight-line code)."""
    length, events = v["L"], sorted(set(emit))
    if length == 1:
        return []
    segments = len(events) + (0 if events and events[-1] == length - 1 else 1)
    return [LoopSpec(trips=segments, children=(LoopSpec(trips=length / segments),))]


def _wkv4_segments(v, emit):
    """RWKV-4's segmented walk; with emission, triton 3.8's LLVM nests it one level deeper (an
    outer loop over the segments that end in an emission, entering the segment loop once)."""
    if v["L"] == 1:
        return []
    (walk,) = _column_segments(v, emit)
    if not emit or _TRITON < (3, 8):
        return [walk]
    return [LoopSpec(trips=walk.trips, children=(LoopSpec(trips=1, children=walk.children),))]


def _selective_scan(v, emit):
    """The kernel's loop over segments, as it runs on a row that emits at ``emit``: whole tiles
    with no event (unrolled), then the tile of the next event, or the tokens past the last whole
    tile, token by token; one segment when nothing is emitted."""
    length, block = v["L"], v["BLOCK_T"]
    tiles, full = _cdiv(length, block), length // block
    event_tiles = sorted({t // block for t in emit})
    segments = plain = tokens = start = 0
    while start < tiles:
        stop = min(next((k for k in event_tiles if k >= start), full), full)
        plain += stop - start
        if stop < tiles:
            tokens += min(block, length - stop * block)
        segments += 1
        start = stop + 1
    inner = (LoopSpec(trips=plain / segments), LoopSpec(trips=tokens / segments))
    return [LoopSpec(trips=segments, children=inner)]


def _chunk_scan(v, emit):
    chunk, bm, bk = v["chunk_size"], v["BLOCK_SIZE_M"], v["BLOCK_SIZE_K"]
    tiles = _cdiv(chunk, bm)
    if v.get("IS_CAUSAL", True):
        trips = sum(_cdiv(min((m + 1) * bm, chunk), bk) for m in range(tiles)) / tiles
    else:
        trips = _cdiv(chunk, bk)
    return [LoopSpec(trips=trips)]


TRIPS: dict[str, Callable[[dict, tuple[int, ...]], list[LoopSpec]]] = {
    # statetap
    "_selective_scan_fwd_kernel": _selective_scan,
    "_token_major_kernel": lambda v, e: [],
    "ssd_chunk_state_kernel": lambda v, e: [LoopSpec(trips=v["T"] // v["BK"])],
    "ssd_state_passing_kernel": _ssd_state_passing,
    "ssd_chunk_output_kernel": _ssd_chunk_output,
    "wkv6_chunk_states_kernel": _wkv6_chunk_states,
    "wkv6_chunk_output_kernel": _wkv6_chunk_output,
    "wkv6_recurrent_kernel": _column_segments,
    # the column loops (two pair kinds x key blocks) of chunks whose decay is too strong to
    # factorise: never at RWKV-7's decay, the model's inputs
    "wkv7_chunk_pairs_kernel": lambda v, e: [LoopSpec(trips=0)] * (2 * v["BK"] // v["KB"]),
    "wkv7_chunk_factors_kernel": _wkv7_chunk_factors,
    "wkv7_chunk_state_kernel": _wkv7_chunk_state,
    "wkv7_recurrent_kernel": _column_segments,
    "delta_rule_recurrent_kernel": _column_segments,
    "wkv4_recurrent_kernel": _wkv4_segments,
    "_state_update_kernel": lambda v, e: [],
    # mamba-ssm
    "_chunk_cumsum_fwd_kernel": lambda v, e: [],
    "_chunk_state_fwd_kernel": lambda v, e: [
        LoopSpec(trips=_cdiv(v["chunk_size"], v["BLOCK_SIZE_K"]))
    ],
    "_state_passing_fwd_kernel": lambda v, e: [LoopSpec(trips=v["nchunks"])],
    "_bmm_chunk_fwd_kernel": lambda v, e: [LoopSpec(trips=_cdiv(v["K"], v["BLOCK_SIZE_K"]))],
    "_chunk_scan_fwd_kernel": _chunk_scan,
    "_selective_scan_update_kernel": lambda v, e: [],
    # fla
    "chunk_rwkv6_fwd_cumsum_kernel": lambda v, e: [],
    "chunk_fwd_kernel_h": lambda v, e: [LoopSpec(trips=_cdiv(v["T"], v["BT"]))],
    "chunk_rwkv6_fwd_A_kernel_intra_sub_inter": lambda v, e: [
        LoopSpec(trips=_cdiv(v["K"], v["BK"]))
    ],
    "chunk_rwkv6_fwd_A_kernel_intra_sub_intra": lambda v, e: [LoopSpec(trips=v["BC"])],
    "chunk_gla_fwd_kernel_o": lambda v, e: [LoopSpec(trips=_cdiv(v["K"], v["BK"]))],
    "chunk_dplr_fwd_A_kernel_intra_tensorcore": lambda v, e: [],
    "prepare_wy_repr_fwd_kernel_safe": lambda v, e: [],
    "wu_fwd_kernel": lambda v, e: [],
    "chunk_dplr_fwd_kernel_h": lambda v, e: [
        LoopSpec(trips=_cdiv(v["T"], v["BT"]), children=(LoopSpec(trips=_cdiv(v["BT"], v["BC"])),))
    ],
    "chunk_dplr_fwd_kernel_o": lambda v, e: [],
    "l2norm_fwd_kernel": lambda v, e: [],
    "l2norm_fwd_kernel_row": lambda v, e: [],
    "chunk_local_cumsum_scalar_kernel": lambda v, e: [],
    "chunk_gated_delta_rule_fwd_kkt_solve_kernel": lambda v, e: [
        LoopSpec(trips=_cdiv(v["K"], v["BK"])),
        *(LoopSpec(trips=v["BC"] - 2) for _ in range(4)),
    ],
    "recompute_w_u_fwd_kernel": lambda v, e: [
        LoopSpec(trips=_cdiv(v["V"], v["BV"])),
        LoopSpec(trips=_cdiv(v["K"], v["BK"])),
    ],
    "chunk_gated_delta_rule_fwd_kernel_h_blockdim64": lambda v, e: [
        LoopSpec(trips=_cdiv(v["T"], v["BT"]))
    ],
    "chunk_fwd_kernel_o": lambda v, e: (
        [LoopSpec(trips=_cdiv(v["K"], v["BK"]))] if v["K"] > v["BK"] else []
    ),
}
