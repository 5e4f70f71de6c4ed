"""Benchmark the Mamba Triton kernels (selective scan, SSD, decode steps) against their baselines.

One command on a CUDA machine::

    .venv/bin/python benchmarks/bench_mamba.py            # full grid (a few minutes on an H100)
    .venv/bin/python benchmarks/bench_mamba.py --quick    # B = 1, L = 2048 only

It times, side by side in one run, on Mamba-2.8B shapes (D = 5120, N = 16) and Mamba-2 2.7B
shapes (H = 80, P = 64, N = 128, chunk 256), bf16 inputs:

* statetap's Triton kernels un-instrumented, emitting at 1 % of positions, emitting every 64th
  position, and injecting (add, at 1 % of positions);
* the decode steps at batch 1 and 64 (plain and emitting);
* baselines: the pure-torch per-token loop (statetap's reference, the same recurrence as the
  slow path transformers falls back to; skipped where it would take minutes, see --torch-max-l),
  and mamba-ssm's ``selective_scan_fn`` / ``mamba_chunk_scan_combined`` /
  ``selective_state_update`` when ``mamba_ssm`` imports.

It prints a table (ms, GB/s of the compulsory traffic, percent of the measured copy bandwidth,
cost over the un-instrumented kernel, speed-up over each baseline) and writes
``benchmarks/results/<date>-<device>-mamba.json``.  Without CUDA it exits with a message.
"""

# Each lambda below is timed at once, inside the loop iteration that defines it:
# ruff: noqa: B023

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLUMNS = ("op", "shape", "variant", "impl", "ms", "GB/s", "%bw", "overhead", "speedup")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs a CUDA GPU; writes benchmarks/results/<date>-<device>-mamba.json.",
    )
    parser.add_argument("--quick", action="store_true", help="B = 1, L = 2048 only")
    parser.add_argument(
        "--ops",
        default="selective_scan,ssd,step",
        help="comma-separated subset of: selective_scan, ssd, step (default: all)",
    )
    parser.add_argument(
        "--torch-max-l",
        type=int,
        default=2048,
        help="longest L timed for the pure-torch per-token loop (default 2048)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    return parser.parse_args(argv)


def positions(batch: int, length: int, count: int, device, every: int | None = None):
    """``[B, count]`` distinct positions per row: random, or every ``every``-th token."""
    if every is not None:
        return torch.arange(every - 1, length, every, device=device).expand(batch, -1).contiguous()
    return torch.stack([torch.randperm(length, device=device)[:count] for _ in range(batch)])


def mamba1_inputs(batch, length, device, dim=5120, n=16):
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


def mamba2_inputs(batch, length, device, heads=80, head_dim=64, n=128):
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


def variants(batch, length, state_shape, device):
    """Instrumentation variants: name -> (keyword arguments, bytes of emitted state)."""
    state_bytes = 4 * math.prod(state_shape)
    one_pct = max(1, length // 100)
    out = {"plain": ({}, 0)}
    emit = positions(batch, length, one_pct, device)
    out["emit 1%"] = (dict(emit_at=emit), batch * one_pct * state_bytes)
    every = positions(batch, length, 0, device, every=64)
    out["emit every 64"] = (dict(emit_at=every), batch * every.shape[1] * state_bytes)
    value = torch.randn(*state_shape, device=device) * 0.01
    inject = dict(inject_at=positions(batch, length, one_pct, device), inject_value=value)
    out["inject add 1%"] = (inject, 0)
    return out


def mamba_ssm():
    """mamba-ssm's functions, or None where it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as error:  # noqa: BLE001 - any import failure means "no baseline"
        print(f"mamba_ssm baselines skipped: {type(error).__name__}: {error}")
        return None
    return dict(
        selective_scan_fn=selective_scan_fn,
        mamba_chunk_scan_combined=mamba_chunk_scan_combined,
        selective_state_update=selective_state_update,
    )


class Runner:
    def __init__(self, bandwidth: float, torch_max_l: int):
        self.rows: list[dict] = []
        self.bandwidth = bandwidth
        self.torch_max_l = torch_max_l

    def time(self, op, shape, variant, impl, fn, nbytes, plain_ms=None, ours_ms=None):
        try:
            ms = common.time_ms(fn)
        except Exception as error:  # noqa: BLE001 - a failing baseline is reported, not fatal
            print(f"{op} {shape} {impl}: failed: {type(error).__name__}: {error}")
            return None
        gbps = nbytes / (ms * 1e-3) / 1e9
        row = dict(op=op, shape=shape, variant=variant, impl=impl, ms=ms, bytes=nbytes)
        row.update({"GB/s": gbps, "%bw": 100 * gbps / self.bandwidth})
        if plain_ms is not None:
            row["overhead"] = f"{100 * (ms / plain_ms - 1):+.1f}%"
        if ours_ms is not None:
            row["speedup"] = f"{ms / ours_ms:.2f}x"  # baseline time / ours
        self.rows.append(row)
        print(common.format_table([row], COLUMNS).splitlines()[-1], flush=True)
        return ms


def bench_selective_scan(run: Runner, grid, device, baselines):
    from statetap.kernels.selective_scan.fused_recurrent import selective_scan_triton
    from statetap.kernels.selective_scan.reference import selective_scan

    for batch, length in grid:
        inputs = mamba1_inputs(batch, length, device)
        dim, n = inputs["A"].shape
        shape = f"B{batch} L{length} D{dim} N{n}"
        io = common.tensor_bytes(*(inputs[k] for k in ("u", "delta", "z", "B", "C")))
        io += batch * dim * length * 2  # y
        plain = None
        for variant, (kwargs, extra) in variants(batch, length, (dim, n), device).items():
            ms = run.time(
                "selective_scan",
                shape,
                variant,
                "statetap triton",
                lambda kw=kwargs: selective_scan_triton(**inputs, **kw),
                io + extra,
                plain_ms=plain,
            )
            plain = plain if plain is not None else ms
        if baselines:
            fn = baselines["selective_scan_fn"]
            args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
            run.time(
                "selective_scan",
                shape,
                "plain",
                "mamba_ssm selective_scan_fn",
                lambda: fn(*args, delta_softplus=True),
                io,
                ours_ms=plain,
            )
        if length <= run.torch_max_l:
            run.time(
                "selective_scan",
                shape,
                "plain",
                "torch per-token loop",
                lambda: selective_scan(**inputs),
                io,
                ours_ms=plain,
            )


def bench_ssd(run: Runner, grid, device, baselines):
    from statetap.kernels.ssd.chunk import ssd_triton
    from statetap.kernels.ssd.reference import ssd_sequential

    for batch, length in grid:
        inputs = mamba2_inputs(batch, length, device)
        _, _, heads, head_dim = inputs["x"].shape
        n = inputs["B"].shape[-1]
        shape = f"B{batch} L{length} H{heads} P{head_dim} N{n}"
        io = common.tensor_bytes(*(inputs[k] for k in ("x", "dt", "z", "B", "C")))
        io += inputs["x"].numel() * 2  # y
        plain = None
        state_shape = (heads, head_dim, n)
        for variant, (kwargs, extra) in variants(batch, length, state_shape, device).items():
            ms = run.time(
                "ssd",
                shape,
                variant,
                "statetap triton",
                lambda kw=kwargs: ssd_triton(**inputs, chunk_size=256, **kw),
                io + extra,
                plain_ms=plain,
            )
            plain = plain if plain is not None else ms
        if baselines:
            fn = baselines["mamba_chunk_scan_combined"]
            run.time(
                "ssd",
                shape,
                "plain",
                "mamba_ssm mamba_chunk_scan_combined",
                lambda: fn(**inputs, chunk_size=256),
                io,
                ours_ms=plain,
            )
        if length <= run.torch_max_l:
            run.time(
                "ssd",
                shape,
                "plain",
                "torch per-token loop",
                lambda: ssd_sequential(**inputs),
                io,
                ours_ms=plain,
            )


def first_token(inputs: dict, along_time: tuple[str, ...], axis: int) -> dict:
    """One-token inputs ``L = 1`` squeezed to the decode-step layout."""
    return {k: v.select(axis, 0) if k in along_time else v for k, v in inputs.items()}


def bench_steps(run: Runner, device, baselines):
    from statetap.kernels.selective_scan.step import selective_scan_step_triton
    from statetap.kernels.ssd.step import ssd_step_triton

    for batch in (1, 64):
        m1 = first_token(mamba1_inputs(batch, 1, device), ("u", "delta", "z", "B", "C"), -1)
        state1 = torch.zeros(batch, 5120, 16, device=device)
        m2 = first_token(mamba2_inputs(batch, 1, device), ("x", "dt", "z", "B", "C"), 1)
        state2 = torch.zeros(batch, 80, 64, 128, device=device)
        for op, fn, inputs, state in (
            ("selective_scan_step", selective_scan_step_triton, m1, state1),
            ("ssd_step", ssd_step_triton, m2, state2),
        ):
            shape = f"B{batch} state{list(state.shape[1:])}"
            io = 2 * state.numel() * 4  # read + write the fp32 state
            plain = run.time(op, shape, "plain", "statetap triton", lambda: fn(state, **inputs), io)
            buffer = torch.empty_like(state)
            run.time(
                op,
                shape,
                "emit",
                "statetap triton",
                lambda: fn(state, **inputs, emit=buffer),
                io + state.numel() * 4,
                plain_ms=plain,
            )
            if baselines and op == "selective_scan_step":
                ssu = baselines["selective_state_update"]
                args = [state, m1["u"], m1["delta"], m1["A"], m1["B"], m1["C"], m1["D"], m1["z"]]
                run.time(
                    op,
                    shape,
                    "plain",
                    "mamba_ssm selective_state_update",
                    lambda: ssu(*args, dt_bias=m1["delta_bias"], dt_softplus=True),
                    io,
                    ours_ms=plain,
                )
            elif baselines:
                ssu = baselines["selective_state_update"]
                heads, head_dim, n = state.shape[1:]
                A = m2["A"][:, None, None].expand(heads, head_dim, n)
                dt = m2["dt"][..., None].expand(-1, -1, head_dim)
                bias = m2["dt_bias"][:, None].expand(heads, head_dim)
                D = m2["D"][:, None].expand(heads, head_dim)
                run.time(
                    op,
                    shape,
                    "plain",
                    "mamba_ssm selective_state_update",
                    lambda: ssu(state, m2["x"], dt, A, m2["B"], m2["C"], D, m2["z"], bias, True),
                    io,
                    ours_ms=plain,
                )


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.require_cuda("benchmarks/bench_mamba.py")
    ops = set(args.ops.split(","))
    grid = [(1, 2048)] if args.quick else [(b, n) for b in (1, 8) for n in (2048, 8192)]
    env = common.environment(device)
    bandwidth = common.copy_bandwidth_gbps(device)
    print(f"{env['device']}: measured copy bandwidth {bandwidth:.0f} GB/s")
    print("  ".join(COLUMNS))
    run = Runner(bandwidth, args.torch_max_l)
    baselines = mamba_ssm()
    with torch.inference_mode():
        if "selective_scan" in ops:
            bench_selective_scan(run, grid, device, baselines)
        if "ssd" in ops:
            bench_ssd(run, grid, device, baselines)
        if "step" in ops:
            bench_steps(run, device, baselines)
    print()
    print(common.format_table(run.rows, COLUMNS))
    if not args.no_write:
        extra = {"bandwidth_gbps": bandwidth, "quick": args.quick}
        path = common.write_results("mamba", env, run.rows, extra)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
