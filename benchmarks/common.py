"""Shared plumbing of the GPU benchmarks: timing, bandwidth, environment, tables, JSON.

Every benchmark script measures statetap and its baselines side by side in one run on one
device, prints a table and writes ``benchmarks/results/<date>-<device>-<name>.json``
atomically.  Nothing here runs without CUDA: CPU timings of Triton kernels are meaningless.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def require_cuda(script: str) -> torch.device:
    """The CUDA device, or exit with a clear message naming ``script``."""
    if not torch.cuda.is_available():
        sys.exit(
            f"{script} needs a CUDA GPU: it times Triton kernels against their baselines, and "
            "timings on the CPU (Triton's interpreter) mean nothing. No CUDA device was found."
        )
    return torch.device("cuda")


def time_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median wall time of ``fn`` in milliseconds (``triton.testing.do_bench``, L2 flushed)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def copy_bandwidth_gbps(device: torch.device, gib: float = 1.0) -> float:
    """Measured device-memory bandwidth in GB/s: read + write of a ``gib`` GiB copy."""
    source = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    ms = time_ms(lambda: target.copy_(source))
    return 2 * source.numel() * 4 / (ms * 1e-3) / 1e9


def environment(device: torch.device) -> dict:
    """Device and software versions, for the results file."""
    import triton

    props = torch.cuda.get_device_properties(device)
    return {
        "device": props.name,
        "capability": f"sm_{props.major}{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes occupied by the given tensors (None counts zero)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Plain-text table of ``rows`` (dicts) restricted to ``columns``; floats to 3 digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value)

    lines = [list(columns)] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def write_results(name: str, env: dict, rows: Sequence[dict], extra: dict | None = None) -> Path:
    """Write ``results/<date>-<device>-<name>.json`` atomically and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")
    path = RESULTS / f"{_dt.date.today().isoformat()}-{device}-{name}.json"
    payload = {"benchmark": name, "environment": env, **(extra or {}), "rows": list(rows)}
    with tempfile.NamedTemporaryFile("w", dir=RESULTS, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
    return path
