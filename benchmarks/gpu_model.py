"""A compiled performance model of statetap's Triton kernels and the peers' at the goal shapes,
for an H100, computed on a machine without a GPU (``make gpu-model``). A prediction, not a
measurement: see benchmarks/README.md, "Compiled performance model".

For every row of ``gpu_model_ops.all_cases()`` it runs the public entry point with the launches
captured (``gpu_model_capture``: Triton's own runtime specialisation for sm_90, every autotune
config the autotuner would try), compiles each launch ahead of time for sm_90 (``_aot``, with the
SASS), finds the loops in the SASS (``_sass``), multiplies by the trip counts of
``gpu_model_ops.TRIPS`` and prints, per kernel and per op:

* programs, warps, registers, CTAs per SM, shared memory;
* SASS per iteration of the main loop by class;
* the dynamic warp-instruction total and its issue floor
  ``max(total / 528, per_warp * ceil(warps_total / 528)) / 1.755 GHz`` (132 SMs x 4 schedulers);
* the MUFU floor (16 lanes/clk/SM) and tensor-core floor (989 TFLOP/s BF16 dense);
* compulsory bytes and their HBM floor (3.35 TB/s);
* the predicted floor (the largest), and the ratio statetap / peer per op.

Usage::

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/gpu_model.py [--max-configs 4] [--ops ssd,wkv6]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # before any kernel module is imported (tests import this file)
    os.environ["TRITON_INTERPRET"] = "0"  # real @triton.jit kernels: compiled, never run
    # mamba-ssm 2.3.2 imports its CUDA extension at import; the model never calls it
    sys.modules.setdefault("selective_scan_cuda", type(sys)("selective_scan_cuda"))
sys.path.insert(0, str(Path(__file__).parent))

HERE = Path(__file__).parent
RESULTS = HERE / "results"

#: H100 SXM figures the floors use
SMS = 132
SCHEDULERS = 4  # per SM, one warp-instruction per clock each
CLOCK_HZ = 1.755e9  # sustained
MUFU_LANES = 16  # per SM per clock
TENSOR_FLOPS = 989e12  # dense BF16/FP16
HBM_BYTES_S = 3.35e12
REGS_PER_SM = 65536
REG_ALLOC = 256  # registers, per warp
SMEM_PER_SM = 233472  # 228 KB
SMEM_PER_BLOCK = 232448  # 227 KB
SMEM_RESERVED = 1024  # per block
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32


def ctas_per_sm(registers: int, warps: int, shared: int) -> int:
    """Resident CTAs per SM on an H100 from registers (64 K per SM, allocated per warp in units
    of 256), shared memory (228 KB per SM, 227 KB per block, 1 KB reserved per block), warps
    (64 per SM) and blocks (32 per SM). 0 when one CTA does not fit."""
    for name, value in (("registers", registers), ("warps", warps), ("shared", shared)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if warps == 0:
        raise ValueError("warps must be >= 1")
    if registers > 255 or shared > SMEM_PER_BLOCK:
        return 0
    per_warp = max(1, math.ceil(registers * 32 / REG_ALLOC)) * REG_ALLOC
    by_regs = (REGS_PER_SM // per_warp) // warps
    by_smem = SMEM_PER_SM // (shared + SMEM_RESERVED)
    return min(by_regs, by_smem, WARPS_PER_SM // warps, BLOCKS_PER_SM)


@dataclass
class KernelRow:
    """The model of one kernel launch (the chosen autotune config)."""

    kernel: str
    config: str
    configs_compiled: int
    configs_total: int
    programs: int
    warps: int
    registers: int
    spills: int
    shared: int
    ctas_per_sm: int
    loops: str
    per_iteration: dict[str, int]
    warp_instr: float
    counts: dict[str, float]
    bytes: int
    issue_us: float
    mufu_us: float
    tensor_us: float
    hbm_us: float
    floor_us: float
    bound: str
    note: str = ""


@dataclass
class OpRow:
    op: str
    shape: str
    impl: str
    variant: str
    kernels: list[KernelRow] = field(default_factory=list)
    floor_us: float = 0.0
    warp_instr: float = 0.0
    bytes: int = 0
    vs_peer: float | None = None
    vs_plain: float | None = None
    error: str = ""


def floors(per_warp: float, warps_total: int, counts: dict, flops_total: float, moved: int):
    """(issue, mufu, tensor, hbm) floors in microseconds."""
    total = per_warp * warps_total
    slots = SMS * SCHEDULERS
    issue = max(total / slots, per_warp * math.ceil(warps_total / slots)) / CLOCK_HZ
    mufu = counts.get("mufu", 0.0) * warps_total * 32 / (SMS * MUFU_LANES) / CLOCK_HZ
    tensor = flops_total / TENSOR_FLOPS
    hbm = moved / HBM_BYTES_S
    return issue * 1e6, mufu * 1e6, tensor * 1e6, hbm * 1e6


# --------------------------------------------------------------------------------------------
# compilation, cached on disk


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "statetap" / "gpu-model"


def _cache_key(spec) -> str:
    import triton

    from statetap.kernels import _aot

    fn = _aot._unwrap(spec.fn)
    text = repr(
        (
            fn.cache_key,
            sorted(spec.signature.items()),
            sorted((k, repr(v)) for k, v in spec.constexprs.items()),
            sorted(spec.aligned or []),
            spec.num_warps,
            spec.num_stages,
            sorted((k, repr(v)) for k, v in spec.options.items()),
            triton.__version__,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_JOBS: list = []  # specs to compile, inherited by the forked workers


def _compile(index: int) -> dict:
    from statetap.kernels import _aot

    spec = _JOBS[index]
    path = _cache_dir() / f"{_cache_key(spec)}.json"
    if path.exists():
        return json.loads(path.read_text())
    try:
        stats = _aot.compile_specs([spec], [90], sass=True, subprocess_mode=False)[0]
        out = dict(asdict(stats), error="")
    except Exception as e:  # reported in the row, not fatal for the table
        return dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return out


def _spread(items: list, count: int) -> list:
    """At most ``count`` items, evenly spaced over the list (first and last included)."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


# --------------------------------------------------------------------------------------------
# the model of one launch


def _model_kernel(launch, alt, compiled, case, twin_kernel) -> KernelRow:
    import gpu_model_ops as ops

    from statetap.kernels import _sass

    kernel = _sass.analyse(compiled["sass"])
    specs = ops.TRIPS[launch.kernel](alt.values, case.emit)
    count = _sass.dynamic_count(kernel, specs)
    per_warp_counts = dict(count.counts)
    note = ""
    if case.emit and twin_kernel is not None:
        # emission code: the conditional instructions the emitting specialisation adds to a
        # loop over its plain twin's, run once per emission event, not every iteration
        iters = _iterations(specs)
        twin = {i: loop for i, (_, loop) in enumerate(twin_kernel.walk())}
        for i, (_, loop) in enumerate(kernel.walk()):
            if i not in twin or i >= len(iters):
                continue
            p = min(1.0, case.events / iters[i]) if iters[i] else 0.0
            for cls, n in loop.conditional.items():
                extra = max(0, n - twin[i].conditional.get(cls, 0))
                per_warp_counts[cls] -= extra * iters[i] * (1.0 - p)
        note = "emission blocks at their event frequency"
    per_warp = sum(per_warp_counts.values())
    programs = math.prod(alt.grid)
    warps_total = programs * alt.spec.num_warps
    flops = count.flops * warps_total
    bounds = _bounds(per_warp, warps_total, per_warp_counts, flops, launch.bytes)
    main = max((lp for _, lp in kernel.walk()), key=lambda lp: lp.per_iteration, default=None)
    return KernelRow(
        kernel=launch.kernel,
        config=alt.config,
        configs_compiled=0,
        configs_total=len(launch.alternatives),
        programs=programs,
        warps=alt.spec.num_warps,
        registers=compiled["registers"],
        spills=compiled["spill_stores"] + compiled["spill_loads"],
        shared=compiled["shared"],
        ctas_per_sm=ctas_per_sm(compiled["registers"], alt.spec.num_warps, compiled["shared"]),
        loops=kernel.structure(),
        per_iteration={c: int(main.always[c]) for c in _sass.CLASSES} if main else {},
        warp_instr=per_warp * warps_total,
        counts={c: v * warps_total for c, v in per_warp_counts.items()},
        bytes=launch.bytes,
        note=note,
        **bounds,
    )


def _iterations(specs, runs: float = 1.0) -> list[float]:
    """Total iterations per program of every loop of a spec tree, in pre-order."""
    out: list[float] = []
    for s in specs:
        out.append(runs * s.trips)
        out.extend(_iterations(s.children, runs * s.trips))
    return out


def _bounds(per_warp, warps_total, per_warp_counts, flops, nbytes) -> dict:
    """A kernel's floors (µs) by :func:`floors`, the largest as ``floor_us`` and its name as
    ``bound``: the :class:`KernelRow` fields."""
    issue, mufu, tensor, hbm = floors(per_warp, warps_total, per_warp_counts, flops, nbytes)
    named = {"issue": issue, "MUFU": mufu, "tensor": tensor, "HBM": hbm}
    bound = max(named, key=named.get)
    return dict(
        issue_us=issue,
        mufu_us=mufu,
        tensor_us=tensor,
        hbm_us=hbm,
        floor_us=named[bound],
        bound=bound,
    )


def _analytic_row(a) -> KernelRow:
    warps_total = a.programs * a.warps
    bounds = _bounds(
        a.warp_instr / warps_total, warps_total, {"mufu": a.mufu / warps_total}, 0.0, a.bytes
    )
    return KernelRow(
        kernel=a.kernel,
        config="-",
        configs_compiled=0,
        configs_total=0,
        programs=a.programs,
        warps=a.warps,
        registers=0,
        spills=0,
        shared=0,
        ctas_per_sm=0,
        loops="-",
        per_iteration={},
        warp_instr=a.warp_instr,
        counts={"mufu": a.mufu},
        bytes=a.bytes,
        note=a.note,
        **bounds,
    )


# --------------------------------------------------------------------------------------------
# driver


def run_model(cases, max_configs: int, jobs: int, log=print) -> list[OpRow]:
    from gpu_model_capture import capture

    from statetap.kernels import _sass

    captured = []
    for case in cases:
        if case.call is None:
            captured.append((case, []))
            continue
        try:
            with capture() as cap:
                case.call()
            captured.append((case, cap.launches))
        except Exception as e:
            captured.append((case, e))
    # the alternatives to compile: up to max_configs per launch
    index: dict[int, int] = {}
    for _, launches in captured:
        if isinstance(launches, Exception):
            continue
        for launch in launches:
            for alt in _spread(launch.alternatives, max_configs):
                if id(alt) not in index:
                    index[id(alt)] = len(_JOBS)
                    _JOBS.append(alt.spec)
    log(f"compiling {len(_JOBS)} kernel specialisations for sm_90 ({jobs} processes) ...")
    started = time.time()
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        compiled = list(pool.map(_compile, range(len(_JOBS))))
    log(f"compiled in {time.time() - started:.0f} s")

    rows: list[OpRow] = []
    plain_kernels: dict[tuple, object] = {}
    for case, launches in captured:
        row = OpRow(case.op, case.shape, case.impl, case.variant)
        rows.append(row)
        if isinstance(launches, Exception):
            row.error = f"{type(launches).__name__}: {launches}"
            continue
        if case.analytic is not None:
            row.kernels.append(_analytic_row(case.analytic))
        for n, launch in enumerate(launches):
            best, errors = None, []
            alts = _spread(launch.alternatives, max_configs)
            for alt in alts:
                result = compiled[index[id(alt)]]
                if result.get("error"):
                    errors.append(result["error"])
                    continue
                twin = plain_kernels.get((case.op, case.shape, case.impl, n))
                try:
                    k = _model_kernel(launch, alt, result, case, twin)
                except _sass.LoopStructureError as e:
                    errors.append(str(e).splitlines()[0])
                    continue
                if case.variant == "plain" and (best is None or k.floor_us < best.floor_us):
                    plain_kernels[(case.op, case.shape, case.impl, n)] = _sass.analyse(
                        result["sass"]
                    )
                if best is None or k.floor_us < best.floor_us:
                    best = k
            if best is None:
                row.error = f"{launch.kernel}: " + "; ".join(errors[:2])
                break
            best.configs_compiled = len(alts) - len(errors)
            if errors:
                best.note = (
                    best.note + "; " if best.note else ""
                ) + f"{len(errors)} configs failed"
            row.kernels.append(best)
        if not row.error:
            row.floor_us = sum(k.floor_us for k in row.kernels)
            row.warp_instr = sum(k.warp_instr for k in row.kernels)
            row.bytes = sum(k.bytes for k in row.kernels)
    _ratios(rows)
    return rows


def _ratios(rows: list[OpRow]) -> None:
    peers = {(r.op, r.shape): r for r in rows if not r.impl.startswith("statetap") and not r.error}
    plains = {(r.op, r.shape, r.impl): r for r in rows if r.variant == "plain" and not r.error}
    for r in rows:
        if r.error or not r.impl.startswith("statetap"):
            continue
        peer = peers.get((r.op, r.shape))
        if peer and peer.floor_us:
            r.vs_peer = r.floor_us / peer.floor_us
        plain = plains.get((r.op, r.shape, r.impl))
        if plain and plain is not r and plain.floor_us:
            r.vs_plain = r.floor_us / plain.floor_us


# --------------------------------------------------------------------------------------------
# output


_SHORT = {
    "fp32": "F",
    "mufu": "M",
    "shfl": "S",
    "bar": "B",
    "gmem": "G",
    "smem": "s",
    "mma": "H",
    "gmma": "W",
    "other": "o",
}


def format_table(rows: list[OpRow]) -> str:
    head = (
        "op / shape / impl / variant",
        "kernel",
        "prog",
        "w",
        "reg",
        "cta",
        "smemK",
        "SASS/iter (main loop)",
        "Mwi",
        "issue",
        "MUFU",
        "TC",
        "MB",
        "HBM",
        "floor us",
        "bound",
        "vs peer",
        "vs plain",
    )
    out: list[tuple] = []
    for r in rows:
        label = f"{r.op} {r.shape} | {r.impl} | {r.variant}"
        if r.error:
            out.append((label, "ERROR: " + r.error[:150], *[""] * (len(head) - 2)))
            continue
        ratio = f"{r.vs_peer:.2f}" if r.vs_peer is not None else ""
        plain = f"{r.vs_plain:.3f}" if r.vs_plain is not None else ""
        if len(r.kernels) > 1:
            out.append(
                (
                    label,
                    f"{len(r.kernels)} kernels",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"{r.warp_instr / 1e6:.1f}",
                    "",
                    "",
                    "",
                    f"{r.bytes / 1e6:.0f}",
                    "",
                    f"{r.floor_us:.1f}",
                    "",
                    ratio,
                    plain,
                )
            )
        for k in r.kernels:
            it = k.per_iteration
            per_iter = (
                f"{sum(it.values())}: " + " ".join(f"{_SHORT[c]}{n}" for c, n in it.items() if n)
                if it
                else "-"
            )
            single = len(r.kernels) == 1
            out.append(
                (
                    label if single else "  ",
                    k.kernel[:40],
                    str(k.programs),
                    str(k.warps),
                    str(k.registers),
                    str(k.ctas_per_sm),
                    f"{k.shared / 1024:.0f}",
                    per_iter[:44],
                    f"{k.warp_instr / 1e6:.1f}",
                    f"{k.issue_us:.1f}",
                    f"{k.mufu_us:.1f}",
                    f"{k.tensor_us:.1f}",
                    f"{k.bytes / 1e6:.0f}",
                    f"{k.hbm_us:.1f}",
                    f"{k.floor_us:.1f}",
                    k.bound,
                    ratio if single else "",
                    plain if single else "",
                )
            )
    widths = [max(len(str(row[i])) for row in [head, *out]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in out]
    return "\n".join(lines)


def format_summary(rows: list[OpRow]) -> str:
    """One line per op row: predicted floor, what bounds it, the floor over the time its bytes
    take at HBM bandwidth (``/HBM``), ratios to the peer and to the plain kernel."""
    head = ("op", "shape", "impl", "variant", "floor us", "bound", "/HBM", "vs peer", "vs plain")
    out = []
    for r in rows:
        bounds = "+".join(sorted({k.bound for k in r.kernels})) if r.kernels else ""
        out.append((
            r.op, r.shape, r.impl, r.variant,
            "ERROR" if r.error else f"{r.floor_us:.1f}", bounds,
            f"{r.floor_us / (r.bytes / HBM_BYTES_S * 1e6):.2f}" if r.bytes else "",
            f"{r.vs_peer:.2f}" if r.vs_peer is not None else "",
            f"{r.vs_plain:.3f}" if r.vs_plain is not None else "",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *out]) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *out]]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(rows: list[OpRow], meta: dict, path: Path | None = None) -> Path:
    """Write ``results/<date>-sm90-gpu-model.json`` atomically; return its path."""
    path = path or RESULTS / f"{datetime.date.today().isoformat()}-sm90-gpu-model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(meta, rows=[asdict(r) for r in rows])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpu-model-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)
    return path


def _meta(args) -> dict:
    import torch
    import triton

    from statetap.kernels import _aot

    versions = {"torch": torch.__version__, "triton": triton.__version__}
    for mod in ("fla", "mamba_ssm"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    return dict(
        kind="prediction (compiled performance model, no GPU)",
        target="sm_90",
        gpu_figures=dict(
            sms=SMS,
            schedulers_per_sm=SCHEDULERS,
            clock_hz=CLOCK_HZ,
            mufu_lanes_per_sm=MUFU_LANES,
            tensor_flops=TENSOR_FLOPS,
            hbm_bytes_per_s=HBM_BYTES_S,
        ),
        max_configs=args.max_configs,
        ptxas=_aot._ptxas_version(_aot.find_ptxas(90)),
        versions=versions,
        legend=dict(
            SASS="F fp32, M mufu, S shfl, B bar, G gmem, s smem, H mma, W gmma, o other",
            Mwi="dynamic warp-instructions, millions",
            floors="microseconds",
        ),
    )


def main(argv=None) -> int:
    import gpu_model_ops as ops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-configs",
        type=int,
        default=4,
        help="autotune configs compiled per peer kernel (evenly spaced; default 4)",
    )
    parser.add_argument(
        "--ops", default="", help="comma-separated ops to keep (default: all), e.g. ssd,wkv6"
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.max_configs < 1:
        parser.error("--max-configs must be >= 1")
    cases = ops.all_cases()
    if args.ops:
        keep = {s.strip() for s in args.ops.split(",") if s.strip()}
        unknown = keep - {c.op for c in cases}
        if unknown:
            parser.error(f"unknown ops {sorted(unknown)}; known: {sorted({c.op for c in cases})}")
        cases = [c for c in cases if c.op in keep]
    rows = run_model(cases, args.max_configs, args.jobs)
    print()
    print("Predicted floors on an H100 (sm_90), from compiled SASS -- a model, not a measurement")
    print(format_table(rows))
    print(
        "SASS/iter classes: F fp32, M mufu, S shfl, B bar, G gmem, s smem, H mma, W gmma, "
        "o other; Mwi: dynamic warp-instructions (millions); floors in microseconds"
    )
    print()
    print(format_summary(rows))
    path = write_json(rows, _meta(args), args.out)
    print(f"wrote {path}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
