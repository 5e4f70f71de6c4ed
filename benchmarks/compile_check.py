"""Every Triton launch statetap makes, compiled ahead of time as a GPU would run it, checked
against the register budget: at most ``MAX_REGISTERS`` per thread, no spills, shared memory
that fits, and at least ``MIN_CTAS_PER_SM`` resident CTAs per SM on an H100 (a prediction
from the compiled kernel; no GPU is needed).

The launches are captured (``gpu_model_capture``) from the public Triton entry point of each op
and decode step, at the model shapes of the benchmarks, for every instrumentation variant
(plain; emission; ``add`` injection with per-row scales, an initial and a final state and, for
SSD, ``seq_idx`` resets; ``set`` injection) and every form of the RWKV ops, so each kernel is
compiled with Triton's run-time specialisation (ints equal to 1 constant, multiples of 16
divisible), not a hand-written signature. ``--full`` adds float32 inputs (exact IEEE dots) and
odd lengths. Each distinct specialisation is compiled once per target.

Usage (any triton: run it with the GPU image's too, e.g. ``/tmp/ov36/bin/python``)::

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/compile_check.py [--targets 80,90] [--full]
        [--ops ssd,wkv7] [--json PATH]

Exit status 1 when any launch breaks the budget; the table lists every compiled launch.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before any kernel module is imported
    os.environ["TRITON_INTERPRET"] = "0"  # real @triton.jit kernels: compiled, never run

import argparse
import functools
import itertools
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

#: registers per thread a launch may use (two CTAs of 8 warps per SM)
MAX_REGISTERS = 128
MIN_CTAS_PER_SM = 2
BATCH = 2  # rows: not 1, which Triton would specialise as a constant
LENGTH = 2048
#: model sizes per op (``kernels.examples.CASES`` size keywords)
SIZES = {
    "selective_scan": dict(D=1536, N=16, G=1),
    "ssd": dict(H=24, P=64, G=1, N=128),
    "wkv4": dict(C=4096),
    "wkv5": dict(H=32, K=64, V=64),
    "wkv6": dict(H=32, K=64, V=64),
    "wkv7": dict(H=32, K=64, V=64),
    "delta_rule": dict(HK=16, HV=32, K=128, V=128),  # Qwen3-Next's linear attention
}
STEP_BATCH = 64
#: ops with a `form` argument: each form is compiled
FORMS = {op: ("chunked", "recurrent") for op in ("wkv5", "wkv6", "wkv7", "delta_rule")}


@dataclass
class Result:
    """One compiled launch: the ``op``, instrumentation ``variant`` (plain, emit, add, set;
    instrumented for the steps) and ``setting`` (form, dtype, length) that launched it, the
    kernel, its specialisation and target, registers, spills, shared memory, warps and CTAs per
    SM."""

    op: str
    variant: str
    setting: str
    kernel: str
    specialisation: str
    target: str
    registers: int
    spills: int
    shared: int
    warps: int
    ctas_per_sm: int

    @property
    def problems(self) -> list[str]:
        found = []
        if self.registers > MAX_REGISTERS:
            found.append(f"{self.registers} registers > {MAX_REGISTERS}")
        if self.spills:
            found.append(f"{self.spills} B spilled")
        if self.ctas_per_sm < MIN_CTAS_PER_SM:
            found.append(f"{self.ctas_per_sm} CTAs/SM < {MIN_CTAS_PER_SM}")
        return found


def _instrumentation(case, inputs: dict, variant: str, length: int) -> dict:
    """The instrumentation keywords of ``variant`` for ``inputs`` of ``BATCH`` rows."""
    if variant == "plain":
        return {}
    state_shape = case.state_shape(inputs)
    emit = torch.stack([torch.linspace(0, length - 1, 20).long()] * BATCH)
    emit[1, :3] = -1  # per-row positions, unused slots
    kw = dict(emit_at=emit)
    if variant == "emit":
        return kw
    f32 = dict(dtype=torch.float32)
    inject = torch.tensor([[0, length // 2, length - 1], [5, length // 3, -1]])
    kw |= dict(
        inject_at=inject,
        inject_value=torch.randn(BATCH, 3, *state_shape, **f32),
        initial_state=torch.randn(BATCH, *state_shape, **f32),
        output_final_state=True,
    )
    if variant == "add":
        kw |= dict(inject_mode="add", inject_scale=torch.rand(BATCH, 3, **f32))
        if case.name == "ssd":
            kw["seq_idx"] = (torch.arange(length) >= length // 4).int().expand(BATCH, -1)
    else:
        kw |= dict(inject_mode="set")
    return kw


def _op_calls(ops: list[str], full: bool):
    """``(op, variant, setting, call)`` for every op, form, dtype, length and variant."""
    from statetap.kernels.examples import CASES

    dtypes = (torch.bfloat16, torch.float32) if full else (torch.bfloat16,)
    lengths = (LENGTH, LENGTH - 5) if full else (LENGTH,)
    for op in ops:
        case = CASES[op]
        fused = case.public.implementations["triton"]
        for dtype in dtypes:
            for length in lengths:
                inputs = case.make(BATCH, length, dtype, **SIZES[op])
                for form in FORMS.get(op, (None,)):
                    extra = {} if form is None else dict(form=form)
                    for variant in ("plain", "emit", "add", "set"):
                        kw = _instrumentation(case, inputs, variant, length)
                        setting = " ".join(x for x in (form, str(dtype)[6:], f"L{length}") if x)
                        yield (
                            op,
                            variant,
                            setting,
                            functools.partial(fused, **inputs, **extra, **kw),
                        )


def _step_calls(steps: list[str]):
    from statetap import kernels
    from statetap.kernels.examples import CASES, step_example

    for step in steps:
        fused = getattr(kernels, step).implementations["triton"]
        sizes = SIZES[step.removesuffix("_step")]
        if step == "ssd_step":
            sizes = dict(sizes, H=80)
        for variant, instrumented in (("plain", False), ("instrumented", True)):
            kw = step_example(step, STEP_BATCH, "cpu", instrumented, **sizes)
            time_varying = CASES[step.removesuffix("_step")].time_axes
            kw = {k: (v.bfloat16() if k in time_varying else v) for k, v in kw.items()}
            yield step, variant, f"B{STEP_BATCH}", functools.partial(fused, **kw)


def capture_specs(ops: list[str], full: bool = False) -> list[tuple[str, str, str, object]]:
    """``(op, variant, setting, KernelSpec)`` of every distinct specialisation launched."""
    from gpu_model_capture import capture

    seen, specs = set(), []
    calls = itertools.chain(
        _op_calls([o for o in ops if not o.endswith("_step")], full),
        _step_calls([o for o in ops if o.endswith("_step")]),
    )
    for op, variant, setting, call in calls:
        with capture() as cap:
            call()
        for launch in cap.launches:
            for alt in launch.alternatives:
                spec = alt.spec
                key = (
                    launch.kernel,
                    tuple(sorted(spec.signature.items())),
                    tuple(sorted((k, str(v)) for k, v in spec.constexprs.items())),
                    spec.num_warps,
                    spec.num_stages,
                    tuple(sorted(spec.aligned)),
                )
                if key not in seen:
                    seen.add(key)
                    specs.append((op, variant, setting, spec))
    return specs


def check(ops: list[str], targets: list[int], full: bool = False) -> list[Result]:
    """Compile every captured specialisation for every target; one :class:`Result` each."""
    from gpu_model import ctas_per_sm

    from statetap.kernels import _aot

    captured = capture_specs(ops, full)
    stats = _aot.compile_specs([spec for *_, spec in captured], targets=targets)
    results = []
    for i, (op, variant, setting, _spec) in enumerate(captured):
        for s in stats[i * len(targets) : (i + 1) * len(targets)]:
            results.append(
                Result(
                    op=op,
                    variant=variant,
                    setting=setting,
                    kernel=s.kernel,
                    specialisation=s.specialisation,
                    target=s.target,
                    registers=s.registers,
                    spills=s.spill_stores + s.spill_loads,
                    shared=s.shared,
                    warps=s.num_warps,
                    ctas_per_sm=ctas_per_sm(s.registers, s.num_warps, s.shared),
                )
            )
    return results


def table(results: list[Result]) -> str:
    """One line per compiled launch, problems last."""
    lines = [
        f"{'op':20} {'variant':12} {'setting':24} {'kernel':34} {'sm':7} regs spill smem   "
        "warps CTA/SM"
    ]
    for r in results:
        lines.append(
            f"{r.op:20} {r.variant:12} {r.setting:24} {r.kernel[:34]:34} {r.target:7} "
            f"{r.registers:4} {r.spills:5} {r.shared:6} {r.warps:5} {r.ctas_per_sm:6}  "
            + "; ".join(r.problems)
        )
    return "\n".join(lines)


def _write_json(results: list[Result], path: Path) -> None:
    import triton

    payload = dict(
        triton=triton.__version__,
        max_registers=MAX_REGISTERS,
        min_ctas_per_sm=MIN_CTAS_PER_SM,
        results=[asdict(r) | dict(problems=r.problems) for r in results],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=1)
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> int:
    from statetap.kernels import OPS, STEPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="80,90", help="compute capabilities (default 80,90)")
    parser.add_argument("--ops", default="", help=f"comma-separated, of {OPS + STEPS}")
    parser.add_argument("--full", action="store_true", help="also float32 inputs and odd lengths")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    known = OPS + STEPS
    ops = [o.strip() for o in args.ops.split(",") if o.strip()] or list(known)
    unknown = sorted(set(ops) - set(known))
    if unknown:
        parser.error(f"unknown ops {unknown}; known: {list(known)}")
    try:
        targets = [int(t) for t in args.targets.split(",")]
    except ValueError:
        parser.error(f"--targets must be comma-separated ints, got {args.targets!r}")
    results = check(ops, targets, args.full)
    print(table(results))
    if args.json:
        _write_json(results, args.json)
    bad = [r for r in results if r.problems]
    print(f"\n{len(results)} compiled launches, {len(bad)} over budget")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
