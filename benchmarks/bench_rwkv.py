"""Benchmark the RWKV WKV Triton kernels (v4, v5/v6, v7 and the decode steps) against their peers.

One command on a CUDA machine::

    python benchmarks/bench_rwkv.py                 # the full grid (7B and 1.5B heads)
    python benchmarks/bench_rwkv.py --quick         # the goal shapes: B = 8, L = 2048, 7B heads
    python benchmarks/bench_rwkv.py --quick --ops wkv6 --name rwkv6   # one op, its own file

Shapes: RWKV-6/7 7B (H = 64, K = V = 64) and 1.5B (H = 32); B in {1, 8}, L in {2048, 8192}
(``--quick``: B = 8, L = 2048, 7B); bf16 inputs, fp32 state; decode at B 64 (and 1).
Rows, side by side in one run:

* ``wkv6`` / ``wkv7``: statetap's chunked and recurrent forms (``statetap.kernels.wkv6/7``,
  ``form=``), un-instrumented, emitting at 1 % of positions, every 64th (full grid only),
  injecting (add) at 1 %; emission and injection use a pre-validated ``Schedule`` and a reused
  states buffer, built outside the timing. Peers: fla's ``chunk_rwkv6`` (and
  ``fused_recurrent_rwkv6``) and ``chunk_rwkv7`` (with the ``lower_bound`` fla's RWKV-7 layer
  passes), un-instrumented and **chained**: called once per segment between emission points,
  each call starting from the previous final state.
* ``wkv4``: statetap's recurrent kernel (C = H * K channels), no peer.
* decode: ``wkv6_step`` / ``wkv7_step`` / ``wkv4_step``, plain and emitting, timed eagerly,
  as a ``PreparedStep`` and as CUDA-graph replays (``timing`` column).

Columns: ms (median, L2 flushed), GB/s of compulsory traffic (benchmarks/README.md gives the
formulas), percent of the measured copy bandwidth, ``vs_plain`` (over the same kernel
un-instrumented), ``vs_peer`` (over fla's chunked kernel), ``vs_chained`` (over the chained
peer with the same emission points), and the goal each row is judged by. The peers' autotuning
is bounded (``benchmarks/peers.py``). Rows are printed as they finish and the JSON
(``benchmarks/results/<date>-<device>-<name>.json``) is rewritten after every row.
"""

# Each lambda below is timed at once, inside the loop iteration that defines it:
# ruff: noqa: B023

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from statetap.kernels import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

SHAPES = {"7b": (64, 64), "1.5b": (32, 64)}  # heads, head size
OPS = ("wkv6", "wkv7", "wkv4", "decode")
FORMS = ("chunked", "recurrent")
MAIN_PEER = {"wkv6": "fla chunk_rwkv6", "wkv7": "fla chunk_rwkv7"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs a CUDA GPU; exits with a message otherwise. Writes "
        "benchmarks/results/<date>-<device>-<name>.json.",
    )
    parser.add_argument("--quick", action="store_true", help="B = 8, L = 2048, 7B heads only")
    parser.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)}")
    parser.add_argument("--name", default="rwkv", help="results file name (default rwkv)")
    parser.add_argument("--rep", type=int, default=100, help="timing repetitions (ms budget)")
    args = parser.parse_args(argv)
    unknown = set(args.ops.split(",")) - set(OPS)
    if unknown:
        parser.error(f"--ops: unknown {sorted(unknown)}; expected a subset of {','.join(OPS)}")
    return args


def variant_names(quick: bool) -> list[str]:
    return (
        ["plain", "emit 1%", "inject 1%"]
        if quick
        else ["plain", "emit 1%", "emit /64", "inject 1%"]
    )


def emission_points(length: int, variant: str) -> list[int]:
    """Positions (shared by every row) of an instrumented variant."""
    if variant == "emit /64":
        return list(range(63, length, 64))
    return torch.linspace(0, length - 1, max(1, length // 100)).long().tolist()


def instrumentation(variant, batch, length, state_shape, device) -> tuple[dict, int]:
    """Keyword arguments of one variant (schedule and buffers built here, outside the timing)
    and the number of states it emits or injects per row."""
    if variant == "plain":
        return {}, 0
    at = torch.tensor(emission_points(length, variant), dtype=torch.long)  # validated on the host
    if variant.startswith("emit"):
        sched = Schedule.build(at, batch=batch, length=length, device=device, name="emit_at")
        states = torch.zeros(batch, len(at), *state_shape, device=device)
        return dict(emit_at=sched, states_out=states), len(at)
    sched = Schedule.build(at, batch=batch, length=length, device=device, name="inject_at")
    value = torch.randn(*state_shape, device=device) * 0.01
    return dict(inject_at=sched, inject_value=value), len(at)


def traffic(inputs: dict, states: int, state_bytes: int) -> int:
    """Compulsory bytes: every input read once, y (like v) written, and ``states`` emitted
    states written (or injected ones read) per row."""
    moved = common.tensor_bytes(*inputs.values()) + common.tensor_bytes(inputs["v"])
    return moved + inputs["v"].shape[0] * states * state_bytes


def rwkv_inputs(op: str, batch: int, length: int, heads: int, dim: int, device) -> dict:
    shape = (batch, length, heads, dim)
    f = dict(device=device, dtype=torch.bfloat16)
    x = dict(r=torch.randn(shape, **f), k=torch.randn(shape, **f), v=torch.randn(shape, **f))
    if op == "wkv6":
        w = F.logsigmoid(torch.randn(shape, device=device)).to(torch.bfloat16)
        return x | dict(w=w, u=torch.randn(heads, dim, **f))
    kappa = F.normalize(torch.randn(shape, device=device), dim=-1)
    # RWKV-7's decay as fla's layer computes it: w in [RWKV7_LOWER_BOUND, 0)
    w = peers.RWKV7_LOWER_BOUND * torch.sigmoid(torch.randn(shape, device=device))
    return dict(
        r=x["r"],
        w=w.to(torch.bfloat16),
        k=x["k"],
        v=x["v"],
        a=(-kappa).to(torch.bfloat16),
        b=(kappa * 0.5).to(torch.bfloat16),
    )


def fla_call(impl: str, run: common.Recorder, final: bool):
    """fla's kernel ``impl`` as ``fn(inputs, initial_state) -> (y, final_state)`` (the final
    state only when ``final``), its autotuning bounded and the bound recorded;
    :class:`peers.PeerUnavailable` without fla."""
    found = peers.fla()
    run.extra["peer_autotune"] = peers.bound_autotuning()
    fn = found[impl.removeprefix("fla ")]
    options = dict(scale=1.0, output_final_state=final)
    if impl == "fla chunk_rwkv7":
        options["lower_bound"] = peers.RWKV7_LOWER_BOUND  # as fla's RWKV7 layer passes it
    return lambda x, state: fn(**x, initial_state=state, **options)


def bench_sequence(run, op, model, batch, length, device, args):
    heads, dim = SHAPES[model]
    shape = f"B{batch} L{length} H{heads} K{dim}"
    base = dict(op=op, model=model, shape=shape, B=batch, L=length, H=heads, K=dim, timing="eager")
    state_bytes = heads * dim * dim * 4
    inputs = {}

    def x():
        if not inputs:
            inputs.update(rwkv_inputs(op, batch, length, heads, dim, device))
        return inputs

    for form in FORMS:
        for variant in variant_names(args.quick):

            def ours(form=form, variant=variant):
                import statetap.kernels

                fused = getattr(statetap.kernels, op)
                kw, count = instrumentation(variant, batch, length, (heads, dim, dim), device)
                moved = traffic(x(), count, state_bytes)
                return lambda: fused(**x(), scale=1.0, form=form, **kw), moved

            row = base | dict(variant=variant, impl=f"statetap {form}", role="ours")
            run.measure(row, ours, rep=args.rep)
    names = (
        ["fla chunk_rwkv6", "fla fused_recurrent_rwkv6"] if op == "wkv6" else ["fla chunk_rwkv7"]
    )
    for name in names:

        def plain_peer(name=name):
            call = fla_call(name, run, final=False)
            return lambda: call(x(), None), traffic(x(), 0, state_bytes)

        row = base | dict(variant="plain", impl=name, role="peer", main=name == MAIN_PEER[op])
        run.measure(row, plain_peer, rep=args.rep)
    for variant in variant_names(args.quick):
        if not variant.startswith("emit"):
            continue

        def chained(variant=variant):
            call = fla_call(MAIN_PEER[op], run, final=True)
            points = emission_points(length, variant)
            ends = peers.segment_ends(points, length)
            sequences = {k: v for k, v in x().items() if v.dim() == 4}  # [B, L, H, K]
            constants = {k: v for k, v in x().items() if v.dim() != 4}  # u [H, K]
            moved = traffic(x(), len(points), state_bytes)
            return lambda: peers.chain_segments(call, sequences, constants, ends), moved

        row = base | dict(variant=variant, impl=f"{MAIN_PEER[op]} chained", role="chained")
        run.measure(row, chained, rep=args.rep)
    inputs.clear()


def bench_wkv4(run, model, batch, length, device, args):
    heads, dim = SHAPES[model]
    channels = heads * dim
    shape = f"B{batch} L{length} C{channels}"
    base = dict(op="wkv4", model=model, shape=shape, B=batch, L=length, C=channels, timing="eager")
    inputs = {}

    def x():
        if not inputs:
            f = dict(device=device, dtype=torch.bfloat16)
            inputs.update(
                w=-torch.rand(channels, device=device),
                u=torch.randn(channels, device=device),
                k=torch.randn(batch, length, channels, **f),
                v=torch.randn(batch, length, channels, **f),
            )
        return inputs

    for variant in variant_names(args.quick):

        def ours(variant=variant):
            from statetap.kernels import wkv4

            kw, count = instrumentation(variant, batch, length, (3, channels), device)
            if "inject_value" in kw:  # zero added to (num, den, max): the stable triple stays valid
                kw["inject_value"] = torch.zeros(3, channels, device=device)
            return lambda: wkv4(**x(), **kw), traffic(x(), count, 3 * channels * 4)

        run.measure(
            base | dict(variant=variant, impl="statetap recurrent", role="ours"), ours, rep=args.rep
        )
    inputs.clear()


def decode_steps(model, batch, device) -> dict:
    """``{op: (step, keyword arguments, state, bytes moved)}`` for one batch."""
    from statetap.kernels import wkv4_step, wkv6_step, wkv7_step

    heads, dim = SHAPES[model]
    f = dict(device=device, dtype=torch.bfloat16)
    r, k, v, a, b = (torch.randn(batch, heads, dim, **f) for _ in range(5))
    w = -torch.rand(batch, heads, dim, device=device).to(torch.bfloat16)
    u = torch.randn(heads, dim, **f)
    state6 = torch.randn(batch, heads, dim, dim, device=device)
    state7 = torch.randn(batch, heads, dim, dim, device=device)
    channels = heads * dim
    w4, u4 = -torch.rand(channels, device=device), torch.randn(channels, device=device)
    k4, v4 = k.flatten(1), v.flatten(1)
    triple = torch.zeros(batch, 3, channels, device=device)
    token = common.tensor_bytes(r)
    return {
        "wkv6_step": (
            wkv6_step,
            dict(r=r, k=k, v=v, w=w, u=u, state=state6, scale=1.0),
            state6,
            2 * common.tensor_bytes(state6) + 5 * token,
        ),
        "wkv7_step": (
            wkv7_step,
            dict(r=r, w=w, k=k, v=v, a=a, b=b, state=state7),
            state7,
            2 * common.tensor_bytes(state7) + 7 * token,
        ),
        "wkv4_step": (
            wkv4_step,
            dict(w=w4, u=u4, k=k4, v=v4, state=triple),
            triple,
            2 * common.tensor_bytes(triple) + 3 * token,
        ),
    }


def bench_decode(run, model, batch, device, args):
    heads, dim = SHAPES[model]
    steps = {}

    def step(op):
        if not steps:
            steps.update(decode_steps(model, batch, device))
        return steps[op]

    for op in ("wkv6_step", "wkv7_step", "wkv4_step"):
        base = dict(op=op, model=model, shape=f"B{batch} H{heads} K{dim}", B=batch, decode=True)
        for timing in ("eager", "prepared", "graph"):
            for variant in ("plain", "emit"):

                def case(op=op, timing=timing, variant=variant):
                    function, arguments, state, moved = step(op)
                    kw = {}
                    if variant == "emit":
                        at = torch.zeros(1, dtype=torch.long)
                        sched = Schedule.build(
                            at, batch=batch, length=1, device=device, name="emit_at"
                        )
                        buffer = torch.zeros(batch, 1, *state.shape[1:], device=device)
                        kw = dict(emit_at=sched, states_out=buffer)
                        moved += common.tensor_bytes(buffer)
                    fn = common.step_call(function, arguments | kw, timing == "prepared")
                    return (common.graph_replay(fn) if timing == "graph" else fn), moved

                row = base | dict(timing=timing, variant=variant, impl="statetap", role="ours")
                run.measure(row, case, rep=args.rep)
    steps.clear()


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.require_cuda("bench_rwkv.py")
    ops = set(args.ops.split(","))
    models = ["7b"] if args.quick else list(SHAPES)
    grid = [(8, 2048)] if args.quick else [(b, n) for b in (1, 8) for n in (2048, 8192)]
    env = common.environment(device)
    bandwidth = None if common.DRY_RUN else common.copy_bandwidth_gbps(device)
    extra = {"quick": args.quick, "rwkv7_lower_bound": peers.RWKV7_LOWER_BOUND}
    with common.Recorder(args.name, env, bandwidth, extra) as run:
        with torch.inference_mode():
            for model in models:
                for batch, length in grid:
                    for op in ("wkv6", "wkv7"):
                        if op in ops:
                            bench_sequence(run, op, model, batch, length, device, args)
                    if "wkv4" in ops:
                        bench_wkv4(run, model, batch, length, device, args)
                if "decode" in ops:
                    for batch in (64,) if args.quick else (1, 64):
                        bench_decode(run, model, batch, device, args)


if __name__ == "__main__":
    main()
