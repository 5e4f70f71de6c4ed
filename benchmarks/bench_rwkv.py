"""Benchmark the RWKV WKV Triton kernels (v4, v5/v6, v7 and the decode steps) against baselines.

One command on a CUDA machine prints a table and writes
``benchmarks/results/<date>-<device>-rwkv.json``::

    python benchmarks/bench_rwkv.py                 # the full grid (7B and 1.5B shapes)
    python benchmarks/bench_rwkv.py --quick         # B = 1, L = 2048, 7B shapes only

Rows, per shape (RWKV-6/7 7B: H = 64, K = V = 64; 1.5B: H = 32, K = V = 64; B in {1, 8},
L in {2048, 8192}; bf16 inputs, fp32 state):

* ``wkv6`` statetap chunked and recurrent kernels, each un-instrumented, emitting at 1 % of
  positions, emitting every 64th position, and injecting (add) at 1 % of positions;
  flash-linear-attention's ``chunk_rwkv6`` and ``fused_recurrent_rwkv6`` (when ``fla`` is
  installed: carry the fla-core wheel); the pure-torch reference (``--reference``).
* ``wkv7`` statetap chunked and recurrent kernels (the same four variants each); fla's
  ``chunk_rwkv7``.
* ``wkv4`` statetap recurrent kernel (C = H * K channels).
* ``decode``: ``wkv6_step`` / ``wkv7_step`` / ``wkv4_step`` at batch 1 and 64.

Columns: ms (median, L2 flushed), GB/s of compulsory traffic (inputs, outputs, emitted and
final states; see benchmarks/README.md for the formulas), percent of the measured device-copy
bandwidth, and the ratio to the un-instrumented statetap kernel and to fla.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {"7b": (64, 64), "1.5b": (32, 64)}  # heads, head size
BATCHES = (1, 8)
LENGTHS = (2048, 8192)
DECODE_BATCHES = (1, 64)
VARIANTS = ("plain", "emit 1%", "emit /64", "inject 1%")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs a CUDA GPU; exits with a message otherwise. Writes "
        "benchmarks/results/<date>-<device>-rwkv.json.",
    )
    parser.add_argument("--quick", action="store_true", help="B=1, L=2048, 7B shapes only")
    parser.add_argument(
        "--ops",
        default="wkv6,wkv7,wkv4,decode",
        help="comma-separated subset of wkv6,wkv7,wkv4,decode (default: all)",
    )
    parser.add_argument(
        "--reference", action="store_true", help="also time the pure-torch reference (slow)"
    )
    parser.add_argument("--rep", type=int, default=100, help="timing repetitions (ms budget)")
    return parser.parse_args(argv)


def positions(length: int, variant: str, device) -> dict:
    """The instrumentation of one variant (shared by every row of the batch)."""
    if variant == "plain":
        return {}
    if variant == "emit /64":
        return dict(emit_at=torch.arange(63, length, 64, device=device))
    every = torch.linspace(0, length - 1, max(1, length // 100), device=device).long()
    if variant == "emit 1%":
        return dict(emit_at=every)
    return dict(inject_at=every)  # inject_value added by the caller (it needs the state shape)


def traffic(inputs: dict, instrumentation: dict, state_bytes: int) -> int:
    """Compulsory bytes: every input read once, y (like v) written, each emitted state written
    and each injected state read once per row."""
    batch = inputs["v"].shape[0]
    moved = common.tensor_bytes(*inputs.values()) + common.tensor_bytes(inputs["v"])
    for name in ("emit_at", "inject_at"):
        if name in instrumentation:
            moved += instrumentation[name].numel() * state_bytes * batch
    return moved


def rwkv_inputs(op: str, batch: int, length: int, heads: int, dim: int, device) -> dict:
    shape = (batch, length, heads, dim)
    f = dict(device=device, dtype=torch.bfloat16)
    x = dict(r=torch.randn(shape, **f), k=torch.randn(shape, **f), v=torch.randn(shape, **f))
    if op == "wkv6":
        w = F.logsigmoid(torch.randn(shape, device=device)).to(torch.bfloat16)
        return x | dict(w=w, u=torch.randn(heads, dim, **f))
    kappa = F.normalize(torch.randn(shape, device=device), dim=-1)
    w = (-0.6065306597126334 * torch.sigmoid(torch.randn(shape, device=device))).to(torch.bfloat16)
    return dict(
        r=x["r"],
        w=w,
        k=x["k"],
        v=x["v"],
        a=(-kappa).to(torch.bfloat16),
        b=(kappa * 0.5).to(torch.bfloat16),
    )


def fla_baselines(op: str):
    """``{name: fn(inputs) -> output}`` of flash-linear-attention, or {} without fla."""
    try:
        if op == "wkv6":
            from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

            return {
                "fla chunk_rwkv6": lambda x: chunk_rwkv6(**x, scale=1.0),
                "fla fused_recurrent_rwkv6": lambda x: fused_recurrent_rwkv6(**x, scale=1.0),
            }
        from fla.ops.rwkv7 import chunk_rwkv7

        return {"fla chunk_rwkv7": lambda x: chunk_rwkv7(**x, scale=1.0)}
    except ImportError:
        return {}


def bench_sequence(op, shape_name, batch, length, device, bandwidth, args) -> list[dict]:
    from statetap.kernels.wkv6.launch import wkv6_triton
    from statetap.kernels.wkv6.reference import wkv6_chunked
    from statetap.kernels.wkv7.launch import wkv7_triton
    from statetap.kernels.wkv7.reference import wkv7_chunked

    heads, dim = SHAPES[shape_name]
    x = rwkv_inputs(op, batch, length, heads, dim, device)
    state = heads * dim * dim * 4
    base = dict(op=op, model=shape_name, B=batch, L=length, H=heads, K=dim)
    fused = wkv6_triton if op == "wkv6" else wkv7_triton
    kernels = {
        f"statetap {form}": lambda form=form, **kw: fused(**x, scale=1.0, form=form, **kw)
        for form in ("chunked", "recurrent")
    }
    rows, plain_ms = [], {}
    for name, fn in kernels.items():
        for variant in VARIANTS:
            instr = positions(length, variant, device)
            if "inject_at" in instr:
                instr["inject_value"] = torch.randn(heads, dim, dim, device=device)
            ms = common.time_ms(lambda fn=fn, instr=instr: fn(**instr), rep=args.rep)
            moved = traffic(x, instr, state)
            plain_ms.setdefault(name, ms)
            rows.append(
                base
                | dict(
                    kernel=name,
                    variant=variant,
                    ms=ms,
                    gbps=moved / ms / 1e6,
                    pct_bw=100 * moved / ms / 1e6 / bandwidth,
                    vs_plain=ms / plain_ms[name],
                )
            )
    for name, fn in fla_baselines(op).items():
        ms = common.time_ms(lambda fn=fn: fn(x), rep=args.rep)
        moved = traffic(x, {}, state)
        rows.append(
            base
            | dict(
                kernel=name,
                variant="plain",
                ms=ms,
                gbps=moved / ms / 1e6,
                pct_bw=100 * moved / ms / 1e6 / bandwidth,
            )
        )
    if args.reference:
        ref = wkv6_chunked if op == "wkv6" else wkv7_chunked
        ms = common.time_ms(lambda: ref(**x, scale=1.0), warmup=1, rep=1)
        rows.append(base | dict(kernel="reference (torch)", variant="plain", ms=ms))
    fla = [r["ms"] for r in rows if r["kernel"].startswith("fla chunk")]
    for row in rows:
        if fla and row["kernel"].startswith("statetap"):
            row["vs_fla_chunk"] = row["ms"] / fla[0]
    return rows


def bench_wkv4(shape_name, batch, length, device, bandwidth, args) -> list[dict]:
    from statetap.kernels.wkv4.fused_recurrent import wkv4_triton

    heads, dim = SHAPES[shape_name]
    channels = heads * dim
    f = dict(device=device, dtype=torch.bfloat16)
    x = dict(
        w=-torch.rand(channels, device=device),
        u=torch.randn(channels, device=device),
        k=torch.randn(batch, length, channels, **f),
        v=torch.randn(batch, length, channels, **f),
    )
    rows, plain = [], None
    for variant in VARIANTS:
        instr = positions(length, variant, device)
        if "inject_at" in instr:
            instr["inject_value"] = torch.zeros(3, channels, device=device)
        ms = common.time_ms(lambda instr=instr: wkv4_triton(**x, **instr), rep=args.rep)
        plain = plain or ms
        moved = traffic(x, instr, 3 * channels * 4)
        rows.append(
            dict(
                op="wkv4",
                model=shape_name,
                B=batch,
                L=length,
                C=channels,
                kernel="statetap recurrent",
                variant=variant,
                ms=ms,
                gbps=moved / ms / 1e6,
                pct_bw=100 * moved / ms / 1e6 / bandwidth,
                vs_plain=ms / plain,
            )
        )
    return rows


def bench_decode(shape_name, batch, device, bandwidth, args) -> list[dict]:
    from statetap.kernels.wkv4.step import wkv4_step_triton
    from statetap.kernels.wkv6.step import wkv6_step_triton
    from statetap.kernels.wkv7.step import wkv7_step_triton

    heads, dim = SHAPES[shape_name]
    f = dict(device=device, dtype=torch.bfloat16)
    r, k, v, a, b = (torch.randn(batch, heads, dim, **f) for _ in range(5))
    w = -torch.rand(batch, heads, dim, device=device).to(torch.bfloat16)
    u = torch.randn(heads, dim, **f)
    state = torch.zeros(batch, heads, dim, dim, device=device)
    channels = heads * dim
    w4, u4 = -torch.rand(channels, device=device), torch.randn(channels, device=device)
    k4, v4 = k.flatten(1), v.flatten(1)
    triple = torch.zeros(batch, 3, channels, device=device)
    token = common.tensor_bytes(r)
    steps = {
        "wkv6_step": (
            lambda: wkv6_step_triton(r, k, v, w, u, state, 1.0),
            2 * common.tensor_bytes(state) + 5 * token,
        ),
        "wkv7_step": (
            lambda: wkv7_step_triton(r, w, k, v, a, b, state),
            2 * common.tensor_bytes(state) + 7 * token,
        ),
        "wkv4_step": (
            lambda: wkv4_step_triton(w4, u4, k4, v4, triple),
            2 * common.tensor_bytes(triple) + 3 * token,
        ),
    }
    rows = []
    for name, (fn, moved) in steps.items():
        ms = common.time_ms(fn, rep=args.rep)
        rows.append(
            dict(
                op="decode",
                model=shape_name,
                B=batch,
                kernel=name,
                variant="plain",
                ms=ms,
                gbps=moved / ms / 1e6,
                pct_bw=100 * moved / ms / 1e6 / bandwidth,
            )
        )
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.require_cuda("bench_rwkv.py")
    ops = set(args.ops.split(","))
    shapes = ["7b"] if args.quick else list(SHAPES)
    batches, lengths = ((1,), (2048,)) if args.quick else (BATCHES, LENGTHS)
    bandwidth = common.copy_bandwidth_gbps(device)
    rows = []
    for shape in shapes:
        for batch in batches:
            for length in lengths:
                for op in ("wkv6", "wkv7"):
                    if op in ops:
                        rows += bench_sequence(op, shape, batch, length, device, bandwidth, args)
                if "wkv4" in ops:
                    rows += bench_wkv4(shape, batch, length, device, bandwidth, args)
        if "decode" in ops:
            for batch in DECODE_BATCHES:
                rows += bench_decode(shape, batch, device, bandwidth, args)
    columns = [
        "op",
        "model",
        "B",
        "L",
        "kernel",
        "variant",
        "ms",
        "gbps",
        "pct_bw",
        "vs_plain",
        "vs_fla_chunk",
    ]
    print(f"device-copy bandwidth: {bandwidth:.0f} GB/s")
    print(common.format_table(rows, columns))
    env = common.environment(device)
    path = common.write_results("rwkv", env, rows, {"copy_bandwidth_gbps": bandwidth})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
