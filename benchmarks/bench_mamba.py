"""Benchmark the Mamba Triton kernels (selective scan, SSD, decode steps) against their peers.

One command on a CUDA machine::

    python benchmarks/bench_mamba.py            # B in {1, 8} x L in {2048, 8192}, decode B 1/64
    python benchmarks/bench_mamba.py --quick    # the goal shapes: B = 8, L = 2048; decode B 64

Shapes (bf16 inputs, fp32 state): selective scan D = 1536, N = 16; SSD H = 24, P = 64,
N = 128, chunk 256; decode steps at Mamba-2.8B (D = 5120, N = 16) and Mamba-2 2.7B
(H = 80, P = 64, N = 128). Rows, side by side in one run:

* statetap (``statetap.kernels.selective_scan`` / ``ssd``): un-instrumented, emitting at 1 % of
  positions, every 64th position (full grid only), injecting (add) at 1 %; emission and
  injection use a pre-validated ``Schedule`` and a reused states buffer, built outside the timing;
* peers: mamba-ssm's CUDA ``selective_scan_fn`` (a ``missing`` row with the reason where its
  extension is not built), ``mamba_chunk_scan_combined`` un-instrumented and **chained**: called
  once per segment between emission points, each call starting from the previous final state
  (what a user writes to get the same states without statetap), and ``selective_state_update``;
* decode steps timed eagerly, as a ``PreparedStep`` and as CUDA-graph replays (``timing``);
* the pure-torch per-token loop (full grid only, up to ``--torch-max-l``).

The peers' autotuning is bounded (``benchmarks/peers.py``: one config per kernel unless
``STATETAP_PEER_AUTOTUNE=full``). Each row is printed as it finishes and
``benchmarks/results/<date>-<device>-mamba.json`` is rewritten after every row; a failing row
is recorded with its error. Without CUDA it exits with a message (``STATETAP_SUITE_DRY_RUN=1``:
rehearsal rows, see common.py).
"""

# Each lambda below is timed at once, inside the loop iteration that defines it:
# ruff: noqa: B023

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from statetap.kernels import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

SCAN = dict(dim=1536, n=16)
SSD = dict(heads=24, head_dim=64, n=128)
CHUNK = 256
STEP_SCAN = dict(dim=5120, n=16)
STEP_SSD = dict(heads=80, head_dim=64, n=128)
SSD_PEER = "mamba_ssm mamba_chunk_scan_combined"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs a CUDA GPU; writes benchmarks/results/<date>-<device>-mamba.json.",
    )
    parser.add_argument("--quick", action="store_true", help="the goal shapes: B = 8, L = 2048")
    parser.add_argument(
        "--ops",
        default="selective_scan,ssd,step",
        help="comma-separated subset of: selective_scan, ssd, step (default: all)",
    )
    parser.add_argument(
        "--torch-max-l",
        type=int,
        default=2048,
        help="longest L timed for the pure-torch per-token loop (full grid only; default 2048)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.ops.split(",")) - {"selective_scan", "ssd", "step"}
    if unknown:
        parser.error(f"--ops: unknown {sorted(unknown)}; expected selective_scan, ssd, step")
    return args


def mamba1_inputs(batch, length, device, dim, n):
    bf16 = dict(device=device, dtype=torch.bfloat16)
    f32 = dict(device=device, dtype=torch.float32)
    return dict(
        u=torch.randn(batch, dim, length, **bf16),
        delta=torch.randn(batch, dim, length, **bf16) - 4.0,
        A=-torch.exp(torch.randn(dim, n, **f32)),
        B=torch.randn(batch, 1, n, length, **bf16),
        C=torch.randn(batch, 1, n, length, **bf16),
        D=torch.randn(dim, **f32),
        z=torch.randn(batch, dim, length, **bf16),
        delta_bias=torch.randn(dim, **f32) * 0.1,
        delta_softplus=True,
    )


def mamba2_inputs(batch, length, device, heads, head_dim, n):
    bf16 = dict(device=device, dtype=torch.bfloat16)
    f32 = dict(device=device, dtype=torch.float32)
    return dict(
        x=torch.randn(batch, length, heads, head_dim, **bf16),
        dt=torch.randn(batch, length, heads, **bf16) - 4.0,
        A=-torch.exp(torch.randn(heads, **f32)),
        B=torch.randn(batch, length, 1, n, **bf16),
        C=torch.randn(batch, length, 1, n, **bf16),
        D=torch.randn(heads, **f32),
        z=torch.randn(batch, length, heads, head_dim, **bf16),
        dt_bias=torch.randn(heads, **f32) * 0.1,
        dt_softplus=True,
    )


def emission_points(length: int, variant: str) -> list[int]:
    """The positions (shared by every row of the batch) of an instrumented variant."""
    if variant == "emit every 64":
        return list(range(63, length, 64))
    count = max(1, length // 100)  # 1 %, evenly spread, the last at L - 1
    return torch.linspace(0, length - 1, count).long().tolist()


def variant_names(quick: bool) -> list[str]:
    names = ["plain", "emit 1%", "inject add 1%"]
    return names if quick else names[:2] + ["emit every 64"] + names[2:]


def instrumentation(variant, batch, length, state_shape, device) -> tuple[dict, int]:
    """Keyword arguments of one variant (schedule and buffers built here, outside the timing)
    and the bytes its emitted or injected states add."""
    if variant == "plain":
        return {}, 0
    points = emission_points(length, variant)
    at = torch.tensor(points, dtype=torch.long)  # on the host: validated there, once
    state_bytes = 4 * math.prod(state_shape)
    extra = batch * len(points) * state_bytes
    if variant.startswith("emit"):
        sched = Schedule.build(at, batch=batch, length=length, device=device, name="emit_at")
        states = torch.zeros(batch, len(points), *state_shape, device=device)
        return dict(emit_at=sched, states_out=states), extra
    sched = Schedule.build(at, batch=batch, length=length, device=device, name="inject_at")
    value = torch.randn(*state_shape, device=device) * 0.01
    return dict(inject_at=sched, inject_value=value), extra


def peer(name: str, run: common.Recorder):
    """A mamba-ssm function (:func:`peers.mamba_triton` / ``mamba_cuda_scan``), its autotuning
    bounded and the bound recorded."""
    if name == "selective_scan_fn":
        peers.mamba_triton()  # the stub, where needed, before anything imports mamba_ssm
        fn = peers.mamba_cuda_scan()
    else:
        found = peers.mamba_triton()
        run.extra["mamba_ssm"] = found["note"]
        fn = found[name]
    run.extra["peer_autotune"] = peers.bound_autotuning()
    return fn


def bench_selective_scan(run: common.Recorder, grid, device, args):
    dim, n = SCAN["dim"], SCAN["n"]
    for batch, length in grid:
        shape = f"B{batch} L{length} D{dim} N{n}"
        base = dict(op="selective_scan", shape=shape, B=batch, L=length, timing="eager")
        inputs = {}

        def io():  # the compulsory traffic: u, delta, z, B, C read, y written
            if not inputs:
                inputs.update(mamba1_inputs(batch, length, device, dim, n))
            moved = common.tensor_bytes(*(inputs[k] for k in ("u", "delta", "z", "B", "C")))
            return moved + batch * dim * length * 2

        for variant in variant_names(args.quick):

            def ours(variant=variant):
                from statetap.kernels import selective_scan

                nbytes = io()
                kwargs, extra = instrumentation(variant, batch, length, (dim, n), device)
                return lambda: selective_scan(**inputs, **kwargs), nbytes + extra

            run.measure(base | dict(variant=variant, impl="statetap", role="ours"), ours)

        def cuda_peer():
            fn = peer("selective_scan_fn", run)
            nbytes = io()
            args_ = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
            return lambda: fn(*args_, delta_softplus=True), nbytes

        impl = "mamba_ssm selective_scan_fn (CUDA)"
        run.measure(base | dict(variant="plain", impl=impl, role="peer", main=True), cuda_peer)
        if not args.quick and length <= args.torch_max_l:

            def torch_loop():
                from statetap.kernels.selective_scan.reference import selective_scan as per_token

                return (lambda: per_token(**inputs)), io()

            row = base | dict(variant="plain", impl="torch per-token loop", role="other")
            run.measure(row, torch_loop, rep=1)
        inputs.clear()


def bench_ssd(run: common.Recorder, grid, device, args):
    heads, head_dim, n = SSD["heads"], SSD["head_dim"], SSD["n"]
    for batch, length in grid:
        shape = f"B{batch} L{length} H{heads} P{head_dim} N{n}"
        base = dict(op="ssd", shape=shape, B=batch, L=length, timing="eager")
        inputs = {}

        def io():  # x, dt, z, B, C read, y written
            if not inputs:
                inputs.update(mamba2_inputs(batch, length, device, heads, head_dim, n))
            moved = common.tensor_bytes(*(inputs[k] for k in ("x", "dt", "z", "B", "C")))
            return moved + inputs["x"].numel() * 2

        state_shape = (heads, head_dim, n)
        for variant in variant_names(args.quick):

            def ours(variant=variant):
                from statetap.kernels import ssd

                nbytes = io()
                kwargs, extra = instrumentation(variant, batch, length, state_shape, device)
                return lambda: ssd(**inputs, chunk_size=CHUNK, **kwargs), nbytes + extra

            run.measure(base | dict(variant=variant, impl="statetap", role="ours"), ours)

        def plain_peer():
            fn = peer("mamba_chunk_scan_combined", run)
            nbytes = io()
            return lambda: fn(**inputs, chunk_size=CHUNK), nbytes

        run.measure(base | dict(variant="plain", impl=SSD_PEER, role="peer", main=True), plain_peer)
        for variant in variant_names(args.quick):
            if not variant.startswith("emit"):
                continue

            def chained(variant=variant):
                fn = peer("mamba_chunk_scan_combined", run)
                nbytes = io()
                points = emission_points(length, variant)
                ends = peers.segment_ends(points, length)
                sequences = {k: inputs[k] for k in ("x", "dt", "B", "C", "z")}
                constants = {k: inputs[k] for k in ("A", "D", "dt_bias", "dt_softplus")}

                def call(piece, state):
                    return fn(
                        **piece, chunk_size=CHUNK, initial_states=state, return_final_states=True
                    )

                extra = batch * len(points) * 4 * math.prod(state_shape)
                return lambda: peers.chain_segments(
                    call, sequences, constants, ends
                ), nbytes + extra

            impl = f"{SSD_PEER} chained"
            run.measure(base | dict(variant=variant, impl=impl, role="chained"), chained)
        inputs.clear()


def first_token(inputs: dict, along_time: tuple[str, ...], axis: int) -> dict:
    """One-token inputs ``L = 1`` squeezed to the decode-step layout."""
    return {k: v.select(axis, 0) if k in along_time else v for k, v in inputs.items()}


def step_cases(batch, device):
    """``(op, state shape, setup)``: ``setup() -> (ours(emit) -> fn, peer() -> fn)``."""

    def scan():
        from statetap.kernels import selective_scan_step

        dim, n = STEP_SCAN["dim"], STEP_SCAN["n"]
        m1 = mamba1_inputs(batch, 1, device, dim, n)
        m1 = first_token(m1, ("u", "delta", "z", "B", "C"), -1)
        state = torch.randn(batch, dim, n, device=device)

        def ours(emit, prepared=False):
            arguments = dict(m1, state=state, emit=emit)
            return common.step_call(selective_scan_step, arguments, prepared)

        def peer_fn(fn):
            args = [state, m1["u"], m1["delta"], m1["A"], m1["B"], m1["C"], m1["D"], m1["z"]]
            return lambda: fn(*args, dt_bias=m1["delta_bias"], dt_softplus=True)

        return state, ours, peer_fn

    def mamba2():
        from statetap.kernels import ssd_step

        heads, head_dim, n = STEP_SSD["heads"], STEP_SSD["head_dim"], STEP_SSD["n"]
        m2 = mamba2_inputs(batch, 1, device, heads, head_dim, n)
        m2 = first_token(m2, ("x", "dt", "z", "B", "C"), 1)
        state = torch.randn(batch, heads, head_dim, n, device=device)

        def ours(emit, prepared=False):
            return common.step_call(ssd_step, dict(m2, state=state, emit=emit), prepared)

        def peer_fn(fn):  # selective_state_update's per-channel layout, broadcast views
            A = m2["A"][:, None, None].expand(heads, head_dim, n)
            dt = m2["dt"][..., None].expand(-1, -1, head_dim)
            bias = m2["dt_bias"][:, None].expand(heads, head_dim)
            D = m2["D"][:, None].expand(heads, head_dim)
            return lambda: fn(state, m2["x"], dt, A, m2["B"], m2["C"], D, m2["z"], bias, True)

        return state, ours, peer_fn

    return (
        ("selective_scan_step", (STEP_SCAN["dim"], STEP_SCAN["n"]), scan),
        ("ssd_step", (STEP_SSD["heads"], STEP_SSD["head_dim"], STEP_SSD["n"]), mamba2),
    )


def bench_steps(run: common.Recorder, batches, device):
    for batch in batches:
        for op, state_shape, setup in step_cases(batch, device):
            shape = f"B{batch} state{list(state_shape)}"
            base = dict(op=op, shape=shape, B=batch, decode=True)
            io = 2 * batch * math.prod(state_shape) * 4  # the fp32 state read and written
            built = {}

            def case():
                if not built:
                    built["state"], built["ours"], built["peer"] = setup()
                return built

            for timing in ("eager", "prepared", "graph"):

                def wrap(fn, timing=timing):
                    return common.graph_replay(fn) if timing == "graph" else fn

                def plain(wrap=wrap, prepared=timing == "prepared"):
                    return wrap(case()["ours"](False, prepared)), io

                def emitting(wrap=wrap, prepared=timing == "prepared"):
                    buffer = torch.empty_like(case()["state"])
                    return wrap(case()["ours"](buffer, prepared)), io + buffer.numel() * 4

                def peer_step(wrap=wrap):
                    fn = peer("selective_state_update", run)
                    return wrap(case()["peer"](fn)), io

                row = base | dict(timing=timing, impl="statetap", role="ours")
                run.measure(row | dict(variant="plain"), plain)
                run.measure(row | dict(variant="emit"), emitting)
                if timing == "prepared":  # the peer has no prepared form
                    continue
                impl = "mamba_ssm selective_state_update"
                run.measure(
                    base | dict(timing=timing, variant="plain", impl=impl, role="peer", main=True),
                    peer_step,
                )
            built.clear()


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.require_cuda("benchmarks/bench_mamba.py")
    ops = set(args.ops.split(","))
    grid = [(8, 2048)] if args.quick else [(b, n) for b in (1, 8) for n in (2048, 8192)]
    env = common.environment(device)
    bandwidth = None if common.DRY_RUN else common.copy_bandwidth_gbps(device)
    if bandwidth:
        print(f"{env['device']}: measured copy bandwidth {bandwidth:.0f} GB/s")
    with common.Recorder("mamba", env, bandwidth, {"quick": args.quick}) as run:
        with torch.inference_mode():
            if "selective_scan" in ops:
                bench_selective_scan(run, grid, device, args)
            if "ssd" in ops:
                bench_ssd(run, grid, device, args)
            if "step" in ops:
                bench_steps(run, (64,) if args.quick else (1, 64), device)


if __name__ == "__main__":
    main()
