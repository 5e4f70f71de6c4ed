"""SASS of a compiled kernel: disassembly, control-flow graph, loops, instruction classes and the
dynamic warp-instruction count those give for stated loop trip counts.

The cubin comes from ``triton.compile`` (see ``_aot.py``); ``nvdisasm`` (bundled with Triton in
``triton/backends/nvidia/bin``) turns it into text, which :func:`analyse` parses:

* instructions (``/*0c40*/ @!P0 FFMA R4, R5, R6, R4 ;``) and labels (``.L_x_3:``);
* basic blocks, split at labels and after every branch or ``EXIT``; successors from ``BRA``
  targets and fall-through (a predicated ``BRA``/``EXIT`` has both, an unpredicated one only its
  target/none); blocks not reachable from the entry (the trailing ``BRA`` to itself) are dropped;
* dominators, back edges (``u -> h`` with ``h`` dominating ``u``) and natural loops, one loop
  per header, nested by containment and ordered by address;
* per loop and per iteration: the instructions of its own blocks (inner loops excluded) that run
  every iteration (blocks that dominate every latch of the loop) and the *conditional* ones
  (the rest: an ``if`` inside the loop), each counted by :data:`CLASSES`.

:func:`dynamic_count` multiplies those by trip counts given as a :class:`LoopSpec` tree that must
match the loops found (:class:`LoopStructureError` otherwise: ptxas may peel or unroll a loop,
and a count from a wrong structure would be silently wrong).

Example::

    from statetap.kernels import _sass

    kernel = _sass.analyse(_sass.disassemble(cubin_bytes))
    print(kernel.describe())
    per_warp = _sass.dynamic_count(kernel, [_sass.LoopSpec(trips=2048)])
    print(per_warp.total, per_warp.counts["mufu"])
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CLASSES",
    "Block",
    "DynamicCount",
    "Instruction",
    "Kernel",
    "Loop",
    "LoopSpec",
    "LoopStructureError",
    "analyse",
    "classify",
    "disassemble",
    "dynamic_count",
    "find_nvdisasm",
    "mma_flops",
]

#: Instruction classes, in report order. ``fp32``: the FP32 pipe (FFMA, FMUL, FADD, FMNMX and
#: the packed half-precision HFMA2/HADD2/HMUL2); ``mufu``: the special-function unit (ex2, lg2,
#: rcp, rsq, sin, cos, tanh); ``shfl``: warp shuffles; ``bar``: CTA barriers; ``gmem``: global
#: memory (LDG, STG, LDGSTS, atomics/reductions, TMA); ``smem``: shared memory (LDS, STS, LDSM,
#: STSM); ``mma``: warp-level tensor-core MMA (HMMA, IMMA, DMMA); ``gmma``: Hopper warpgroup MMA
#: (HGMMA); ``other``: everything else (integer, conversion, predicate, control, moves).
CLASSES = ("fp32", "mufu", "shfl", "bar", "gmem", "smem", "mma", "gmma", "other")

_CLASS_OF = {
    **dict.fromkeys(("FFMA", "FMUL", "FADD", "FMNMX", "HFMA2", "HADD2", "HMUL2", "HMNMX2"), "fp32"),
    "MUFU": "mufu",
    "SHFL": "shfl",
    "BAR": "bar",
    **dict.fromkeys(
        (
            "LDG",
            "STG",
            "LDGSTS",
            "LDGDEPBAR",
            "ATOMG",
            "ATOM",
            "RED",
            "REDG",
            "UTMALDG",
            "UTMASTG",
            "UTMAPF",
            "UBLKCP",
            "UTMAREDG",
        ),
        "gmem",
    ),
    **dict.fromkeys(("LDS", "STS", "LDSM", "STSM", "ATOMS"), "smem"),
    **dict.fromkeys(("HMMA", "IMMA", "DMMA", "BMMA"), "mma"),
    **dict.fromkeys(("HGMMA", "IGMMA", "QGMMA", "BGMMA"), "gmma"),
}

_BRANCHES = {"BRA", "JMP"}
_INDIRECT = {"BRX", "JMX"}
_EXITS = {"EXIT", "RET", "KILL"}


def classify(opcode: str) -> str:
    """The :data:`CLASSES` entry of a SASS opcode (``"FFMA.FTZ"`` -> ``"fp32"``)."""
    if not isinstance(opcode, str) or not opcode:
        raise TypeError(f"opcode must be a non-empty str, got {opcode!r}")
    return _CLASS_OF.get(opcode.split(".", 1)[0], "other")


_RE_MMA_SHAPE = re.compile(r"^(?:HMMA|IMMA)\.(16|8)(8|16)(\d+)\b")  # 16816: m16 n8 k16
_RE_GMMA_SHAPE = re.compile(r"^[HIQB]GMMA\.(\d+)x(\d+)x(\d+)")


def mma_flops(opcode: str) -> int:
    """Multiply-add flops (2 per MAC) that one *warp* executing this instruction contributes.

    ``HMMA.16816.F32.BF16``: m16 n8 k16 -> 4096. ``HGMMA.64x128x16.F32.BF16`` is a warpgroup
    (4 warps) instruction of 64 x 128 x 16 MACs, so each warp's copy counts a quarter. 0 for
    anything else.
    """
    if m := _RE_MMA_SHAPE.match(opcode):
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    if m := _RE_GMMA_SHAPE.match(opcode):
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) // 4
    return 0


# --------------------------------------------------------------------------------------------
# disassembly


def find_nvdisasm() -> str:
    """Path of ``nvdisasm``: Triton's bundled one (``triton/backends/nvidia/bin``), else ``PATH``.

    Raises ``RuntimeError`` when there is none.
    """
    spec = importlib.util.find_spec("triton")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(base, "backends", "nvidia", "bin", "nvdisasm")
        if os.access(path, os.X_OK):
            return path
    path = shutil.which("nvdisasm")
    if path is None:
        raise RuntimeError("no nvdisasm: none bundled with triton and none on PATH")
    return path


def disassemble(cubin: bytes, nvdisasm: str | None = None) -> str:
    """SASS text of a cubin (``nvdisasm -c``). Raises ``RuntimeError`` if nvdisasm fails."""
    if not isinstance(cubin, bytes | bytearray) or not cubin:
        raise TypeError(f"cubin must be non-empty bytes, got {type(cubin).__name__}")
    exe = nvdisasm or find_nvdisasm()
    with tempfile.TemporaryDirectory(prefix="statetap-sass-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        proc = subprocess.run([exe, "-c", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvdisasm failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


# --------------------------------------------------------------------------------------------
# parsing and control flow


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: byte ``address``, ``opcode`` with modifiers (``"FFMA.FTZ"``),
    guard ``predicate`` (``"!P0"``, or None when unconditional), the branch ``target`` label (or
    None) and its :func:`classify` class ``cls``."""

    address: int
    opcode: str
    predicate: str | None
    target: str | None
    cls: str

    @property
    def op(self) -> str:
        """The opcode without modifiers (``"FFMA"``)."""
        return self.opcode.split(".", 1)[0]


@dataclass
class Block:
    """A basic block: ``index`` in address order, its ``instructions``, successor indices."""

    index: int
    instructions: list[Instruction]
    successors: list[int] = field(default_factory=list)

    @property
    def address(self) -> int:
        return self.instructions[0].address


@dataclass
class Loop:
    """A natural loop. ``blocks``: every block index in it (inner loops included); ``own``: those
    not inside an inner loop; ``always``/``conditional``: per-iteration class counts of ``own``
    blocks that do / do not dominate every latch (``*_flops``: their tensor-core flops per warp,
    :func:`mma_flops`); ``children``: inner loops by address."""

    header: int
    address: int
    blocks: frozenset[int]
    own: frozenset[int]
    always: Counter
    conditional: Counter
    always_flops: int = 0
    conditional_flops: int = 0
    children: list[Loop] = field(default_factory=list)

    @property
    def per_iteration(self) -> int:
        """Instructions of one iteration on the always-executed path (inner loops excluded)."""
        return sum(self.always.values())


@dataclass
class Kernel:
    """The analysed SASS of one kernel: ``name``, ``blocks`` (reachable only), top-level
    ``loops`` and the class counts of the code outside every loop (``outside``)."""

    name: str
    blocks: list[Block]
    loops: list[Loop]
    outside: Counter

    def walk(self) -> list[tuple[int, Loop]]:
        """Every loop with its depth (0 = outermost), in pre-order (address order)."""
        out: list[tuple[int, Loop]] = []

        def visit(loops: list[Loop], depth: int) -> None:
            for loop in loops:
                out.append((depth, loop))
                visit(loop.children, depth + 1)

        visit(self.loops, 0)
        return out

    def structure(self) -> str:
        """The loop nest as text, e.g. ``"[loop@0x0c60 [loop@0x0e00]]"``."""

        def show(loops: list[Loop]) -> str:
            return " ".join(
                f"loop@{loop.address:#06x}" + (f" [{show(loop.children)}]" if loop.children else "")
                for loop in loops
            )

        return f"[{show(self.loops)}]"

    def describe(self) -> str:
        """A few lines: the loop nest and each loop's per-iteration class counts."""
        lines = [f"{self.name}: {sum(len(b.instructions) for b in self.blocks)} instructions"]
        for depth, loop in self.walk():
            counts = " ".join(f"{c}={loop.always[c]}" for c in CLASSES if loop.always[c])
            cond = sum(loop.conditional.values())
            lines.append(
                f"{'  ' * (depth + 1)}loop@{loop.address:#06x}: {loop.per_iteration}/iter "
                f"({counts}) + {cond} conditional"
            )
        return "\n".join(lines)


_RE_FUNC = re.compile(r"^\s*\.text\.(\S+):\s*$")
_RE_LABEL = re.compile(r"^\s*(\.L\w+):\s*$")
_RE_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;")
_RE_TARGET = re.compile(r"`\(([^)]+)\)")


def _parse(text: str) -> dict[str, list[Instruction | str]]:
    """``{function: [label str | Instruction, ...]}`` in text order."""
    functions: dict[str, list[Instruction | str]] = {}
    current: list[Instruction | str] | None = None
    for line in text.splitlines():
        if m := _RE_FUNC.match(line):
            current = functions.setdefault(m.group(1), [])
            continue
        if current is None:
            continue
        if m := _RE_LABEL.match(line):
            current.append(m.group(1))
            continue
        if m := _RE_INSTR.match(line):
            body = m.group(2).split()
            predicate = None
            if body and body[0].startswith("@"):
                predicate = body.pop(0)[1:]
            if not body:
                continue
            opcode = body[0]
            target = _RE_TARGET.search(m.group(2))
            current.append(
                Instruction(
                    address=int(m.group(1), 16),
                    opcode=opcode,
                    predicate=None if predicate in (None, "PT") else predicate,
                    target=target.group(1) if target else None,
                    cls=classify(opcode),
                )
            )
    return functions


def _blocks(items: list[Instruction | str], name: str) -> list[Block]:
    """Basic blocks with successors, unreachable ones removed, re-indexed in address order."""
    groups: list[list[Instruction]] = [[]]
    labels_at: dict[str, int] = {}
    for item in items:
        if isinstance(item, str):
            if groups[-1]:
                groups.append([])
            labels_at[item] = len(groups) - 1
            continue
        groups[-1].append(item)
        if item.op in _BRANCHES or item.op in _EXITS or item.op in _INDIRECT:
            groups.append([])
    # labels that end up on an empty trailing group point at the next non-empty one
    keep = [i for i, g in enumerate(groups) if g]
    remap: dict[int, int] = {}
    for i in range(len(groups) - 1, -1, -1):
        remap[i] = keep.index(i) if groups[i] else remap.get(i + 1, -1)
    blocks = [Block(index=j, instructions=groups[i]) for j, i in enumerate(keep)]
    for block in blocks:
        last = block.instructions[-1]
        nxt = block.index + 1 if block.index + 1 < len(blocks) else None
        if last.op in _INDIRECT:
            raise ValueError(f"{name}: indirect branch {last.opcode} at {last.address:#06x}")
        if last.op in _BRANCHES:
            if last.target not in labels_at or remap[labels_at[last.target]] < 0:
                raise ValueError(f"{name}: branch to unknown label {last.target!r}")
            block.successors.append(remap[labels_at[last.target]])
            if last.predicate is not None and nxt is not None:
                block.successors.append(nxt)
        elif last.op in _EXITS:
            if last.predicate is not None and nxt is not None:
                block.successors.append(nxt)
        elif nxt is not None:
            block.successors.append(nxt)
    # reachability from the entry
    seen, stack = {0}, [0]
    while stack:
        for s in blocks[stack.pop()].successors:
            if s not in seen:
                seen.add(s)
                stack.append(s)
    order = sorted(seen)
    new = {old: i for i, old in enumerate(order)}
    return [
        Block(
            index=new[o],
            instructions=blocks[o].instructions,
            successors=[new[s] for s in blocks[o].successors],
        )
        for o in order
    ]


def _dominators(blocks: list[Block]) -> list[set[int]]:
    n = len(blocks)
    preds: list[list[int]] = [[] for _ in range(n)]
    for b in blocks:
        for s in b.successors:
            preds[s].append(b.index)
    everything = set(range(n))
    dom = [everything.copy() for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for i in range(1, n):
            new = set.intersection(*(dom[p] for p in preds[i])) if preds[i] else set()
            new = new | {i}
            if new != dom[i]:
                dom[i], changed = new, True
    return dom


def _count(blocks: list[Block], indices) -> Counter:
    counts: Counter = Counter()
    for i in indices:
        counts.update(ins.cls for ins in blocks[i].instructions)
    return counts


def analyse(text: str, name: str | None = None) -> Kernel:
    """Parse ``nvdisasm -c`` output and find the blocks and loops of kernel ``name`` (default:
    the only function in the text). Raises ``ValueError`` if the text holds no such function,
    several functions and no name, or an indirect branch."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    functions = _parse(text)
    if name is None:
        if len(functions) != 1:
            raise ValueError(f"expected one function in the SASS, found {sorted(functions)}")
        name = next(iter(functions))
    if name not in functions or not any(isinstance(i, Instruction) for i in functions[name]):
        raise ValueError(f"no instructions for function {name!r} (found {sorted(functions)})")
    blocks = _blocks(functions[name], name)
    dom = _dominators(blocks)
    preds: dict[int, list[int]] = {b.index: [] for b in blocks}
    for b in blocks:
        for s in b.successors:
            preds[s].append(b.index)
    latches: dict[int, list[int]] = {}
    for b in blocks:
        for s in b.successors:
            if s in dom[b.index]:
                latches.setdefault(s, []).append(b.index)
    bodies: dict[int, set[int]] = {}
    for header, tails in latches.items():
        body, stack = {header}, [t for t in tails if t != header]
        body.update(stack)
        while stack:
            for p in preds[stack.pop()]:
                if p not in body:
                    body.add(p)
                    stack.append(p)
        bodies[header] = body
    # nest: a loop's parent is the smallest other loop containing its header
    headers = sorted(bodies, key=lambda h: (len(bodies[h]), h))
    parent: dict[int, int | None] = {}
    for h in headers:
        outer = [g for g in bodies if g != h and h in bodies[g] and bodies[h] <= bodies[g]]
        parent[h] = min(outer, key=lambda g: len(bodies[g])) if outer else None
    loops: dict[int, Loop] = {}
    for h in sorted(bodies, key=lambda h: len(bodies[h])):
        inner = [g for g in bodies if parent[g] == h]
        own = set(bodies[h]).difference(*(bodies[g] for g in inner))
        always = {i for i in own if all(i in dom[t] for t in latches[h])}
        loops[h] = Loop(
            header=h,
            address=blocks[h].address,
            blocks=frozenset(bodies[h]),
            own=frozenset(own),
            always=_count(blocks, always),
            conditional=_count(blocks, own - always),
            always_flops=_flops(blocks, always),
            conditional_flops=_flops(blocks, own - always),
            children=sorted((loops[g] for g in inner), key=lambda lp: lp.address),
        )
    top = sorted((loops[h] for h in bodies if parent[h] is None), key=lambda lp: lp.address)
    in_loops = set().union(*bodies.values()) if bodies else set()
    outside = _count(blocks, [b.index for b in blocks if b.index not in in_loops])
    return Kernel(name=name, blocks=blocks, loops=top, outside=outside)


# --------------------------------------------------------------------------------------------
# dynamic counts


class LoopStructureError(ValueError):
    """The loops found in the SASS are not the loops the trip-count spec describes."""


@dataclass(frozen=True)
class LoopSpec:
    """Trip counts of one loop: ``trips`` iterations per entry (per iteration of the enclosing
    loop), ``conditional`` the fraction of iterations that run its conditional blocks (1.0: all,
    an upper bound), ``children`` the specs of its inner loops in address order."""

    trips: float
    conditional: float = 1.0
    children: tuple[LoopSpec, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.trips, int | float) or self.trips < 0:
            raise ValueError(f"trips must be a number >= 0, got {self.trips!r}")
        if not 0.0 <= self.conditional <= 1.0:
            raise ValueError(f"conditional must be in [0, 1], got {self.conditional!r}")

    def shape(self) -> str:
        inner = " ".join(c.shape() for c in self.children)
        return "loop" + (f" [{inner}]" if inner else "")


@dataclass(frozen=True)
class DynamicCount:
    """Warp-instructions one warp executes: ``counts`` by class, ``flops`` of its tensor-core
    instructions (see :func:`mma_flops`; TF32 ones doubled, i.e. flops at the BF16 rate),
    ``total`` of the counts."""

    counts: Mapping[str, float]
    flops: float

    @property
    def total(self) -> float:
        return float(sum(self.counts.values()))


def _flops(blocks: list[Block], indices) -> int:
    """Tensor-core flops at the BF16 rate: a TF32 instruction (half the BF16 rate) counts 2x."""
    return sum(
        mma_flops(ins.opcode) * (2 if ".TF32" in ins.opcode else 1)
        for i in indices
        for ins in blocks[i].instructions
    )


def dynamic_count(kernel: Kernel, loops: Sequence[LoopSpec]) -> DynamicCount:
    """Per-warp dynamic instruction counts: code outside loops once, each loop's always-executed
    blocks ``trips`` times per entry, its conditional blocks ``trips * conditional`` times.

    ``loops``: one :class:`LoopSpec` per top-level loop, nested as the loops are. Raises
    :class:`LoopStructureError` when the nest differs from the one found.
    """
    expected = "[" + " ".join(s.shape() for s in loops) + "]"
    found = "[" + " ".join(_shape(lp) for lp in kernel.loops) + "]"
    if expected != found:
        raise LoopStructureError(
            f"{kernel.name}: the compiled code's loop nest {found} ({kernel.structure()}) differs "
            f"from the spec's {expected}; ptxas may have peeled or unrolled a loop, or the "
            f"kernel changed: restate the trip counts\n{kernel.describe()}"
        )
    counts: Counter = Counter({c: 0.0 for c in CLASSES})
    counts.update(kernel.outside)
    in_loops = set().union(*(lp.blocks for lp in kernel.loops)) if kernel.loops else set()
    flops = float(
        _flops(kernel.blocks, [b.index for b in kernel.blocks if b.index not in in_loops])
    )

    def add(loop: Loop, spec: LoopSpec, runs: float) -> None:
        nonlocal flops
        iters = runs * spec.trips
        for cls, n in loop.always.items():
            counts[cls] += n * iters
        for cls, n in loop.conditional.items():
            counts[cls] += n * iters * spec.conditional
        flops += loop.always_flops * iters + loop.conditional_flops * iters * spec.conditional
        for child, child_spec in zip(loop.children, spec.children):
            add(child, child_spec, iters)

    for loop, spec in zip(kernel.loops, loops):
        add(loop, spec, 1.0)
    return DynamicCount(counts={c: float(counts[c]) for c in CLASSES}, flops=flops)


def _shape(loop: Loop) -> str:
    inner = " ".join(_shape(c) for c in loop.children)
    return "loop" + (f" [{inner}]" if inner else "")
