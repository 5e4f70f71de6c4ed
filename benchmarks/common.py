"""Shared plumbing of the GPU benchmarks: timing, bandwidth, environment, rows, JSON.

Every benchmark script measures statetap and its baselines side by side in one run on one
device. A :class:`Recorder` prints each row as it finishes, catches a failing row (recorded
with its error), and rewrites ``benchmarks/results/<date>-<device>-<name>.json`` atomically
after every row, so a part stopped by its time limit (SIGINT) keeps what it measured. Nothing
here times anything without CUDA: CPU timings of Triton kernels are meaningless.

Dry run (``STATETAP_SUITE_DRY_RUN=1``, for rehearsing ``gpu_suite.sh`` without a GPU): no
device work at all; every row is ``{"dry_run": true, "ms": null}``, the file is named
``<date>-dry-run-<name>.json``, carries ``"dry_run": true`` and goes to
``$STATETAP_RESULTS_DIR`` (never to ``benchmarks/results/``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: rehearsal without a GPU: see the module docstring
DRY_RUN = os.environ.get("STATETAP_SUITE_DRY_RUN", "0") == "1"


def results_dir() -> Path:
    """Where results go: ``$STATETAP_RESULTS_DIR`` if set, else ``benchmarks/results/``.

    ValueError in a dry run without ``$STATETAP_RESULTS_DIR`` or pointing at
    ``benchmarks/results/``: rehearsal rows must never sit beside measurements."""
    chosen = os.environ.get("STATETAP_RESULTS_DIR")
    path = Path(chosen).resolve() if chosen else RESULTS
    if DRY_RUN and (not chosen or path == RESULTS.resolve()):
        raise ValueError(
            "STATETAP_SUITE_DRY_RUN=1 needs STATETAP_RESULTS_DIR set to a folder other than "
            f"{RESULTS}: dry-run rows are not measurements"
        )
    return path


def require_cuda(script: str) -> torch.device:
    """The CUDA device, or exit with a clear message naming ``script`` (in a dry run: "cpu",
    on which nothing is launched)."""
    if DRY_RUN:
        return torch.device("cpu")
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

    if DRY_RUN:
        return {"device": "dry-run", "torch": torch.__version__, "triton": triton.__version__}

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
    """Write ``<results_dir()>/<date>-<device>-<name>.json`` atomically and return its path.

    In a dry run the file is ``<date>-dry-run-<name>.json`` and says ``"dry_run": true``."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    device = "dry-run" if DRY_RUN else re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")
    path = folder / f"{_dt.date.today().isoformat()}-{device}-{name}.json"
    payload = {"benchmark": name, "environment": env, **(extra or {}), "rows": list(rows)}
    if DRY_RUN:
        payload["dry_run"] = True
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2, allow_nan=False, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it 0600
    os.replace(handle.name, path)
    return path


#: the goals the GPU numbers are judged against (issue 27): un-instrumented speed-up over the
#: op's main peer (peer ms / ours ms), emission cost over the peer's plain call, decode bandwidth
GOAL_SPEEDUP = {"selective_scan": 1.0, "ssd": 1.5, "wkv6": 1.0, "wkv7": 1.2}
GOAL_EMIT_VARIANT, GOAL_EMIT_MAX = "emit 1%", 1.05
GOAL_DECODE_PCT_BW, GOAL_DECODE_BATCH = 80.0, 64
#: the columns every benchmark prints
COLUMNS = (
    "op",
    "shape",
    "variant",
    "impl",
    "timing",
    "ms",
    "GB/s",
    "%bw",
    "vs_plain",
    "vs_peer",
    "vs_chained",
    "goal",
    "goal_met",
)


def annotate(rows: Sequence[dict]) -> None:
    """Fill in each row's ratios and goal in place, from the other rows of its (op, shape).

    ``vs_plain``: ms over the same impl's plain row. For statetap rows (``role`` "ours"):
    ``vs_peer``: ms over the plain row of the op's main peer (``role`` "peer", ``main``);
    ``vs_chained``: ms over the chained-peer row (``role`` "chained") of the same variant;
    ``goal`` / ``goal_met``: the goal that applies (speed-up over the main peer for plain rows,
    emission at 1 % over the peer's plain call, decode bandwidth at batch 64)."""
    timed = [r for r in rows if r.get("status") == "ok"]
    for row in timed:
        same = [
            r
            for r in timed
            if (r["op"], r["shape"]) == (row["op"], row["shape"])
            and r.get("timing") == row.get("timing")
        ]
        plain = next(
            (r for r in same if r["impl"] == row["impl"] and r["variant"] == "plain"), None
        )
        if plain is not None and row is not plain:
            row["vs_plain"] = row["ms"] / plain["ms"]
        if row.get("role") != "ours":
            continue
        peer = next(
            (
                r
                for r in same
                if r.get("role") == "peer" and r.get("main") and r["variant"] == "plain"
            ),
            None,
        )
        chained = next(
            (r for r in same if r.get("role") == "chained" and r["variant"] == row["variant"]), None
        )
        if peer is not None:
            row["vs_peer"] = row["ms"] / peer["ms"]
        if chained is not None:
            row["vs_chained"] = row["ms"] / chained["ms"]
        goal = None
        if peer is not None and row["variant"] == "plain" and row["op"] in GOAL_SPEEDUP:
            want = GOAL_SPEEDUP[row["op"]]
            goal = (f">= {want}x {peer['impl']}", peer["ms"] / row["ms"] >= want)
        elif peer is not None and row["variant"] == GOAL_EMIT_VARIANT:
            goal = (f"<= {GOAL_EMIT_MAX}x {peer['impl']} plain", row["vs_peer"] <= GOAL_EMIT_MAX)
        elif row.get("decode") and row.get("B") == GOAL_DECODE_BATCH and "%bw" in row:
            goal = (f">= {GOAL_DECODE_PCT_BW:g}% bw", row["%bw"] >= GOAL_DECODE_PCT_BW)
        if goal is not None:
            row["goal"], row["goal_met"] = goal


def step_call(step: Callable, arguments: dict, prepared: bool) -> Callable[[], object]:
    """A call of the decode ``step`` (a public ``statetap.kernels`` step) on ``arguments`` by
    keyword: the function itself, or (``prepared``) a ``PreparedStep`` bound to every argument
    but the token's inputs, built here (its first call, which checks and launches, too), so
    only the per-token relaunch is timed."""
    if not prepared:
        return lambda: step(**arguments)
    from statetap.kernels import PreparedStep
    from statetap.kernels.examples import TOKEN_INPUTS

    names = TOKEN_INPUTS[step.__name__]
    token = {k: v for k, v in arguments.items() if k in names}
    bound = {k: v for k, v in arguments.items() if k not in token}
    call = PreparedStep(step, **bound)
    call(**token)
    return lambda: call(**token)


def graph_replay(fn: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """``fn`` captured as a CUDA graph (after ``warmup`` calls on a side stream); returns the
    graph's replay. ``fn`` must only touch static tensors; capture errors propagate."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay


class Recorder:
    """The rows of one benchmark run: each timed, printed and saved as it finishes.

    ``measure(base, setup)`` calls ``setup() -> (fn, bytes)`` and times ``fn`` (the setup's
    own work, compiles included, stays out of the timing). A failing setup or timing becomes a
    ``"failed"`` row with the error; :class:`peers.PeerUnavailable` a ``"missing"`` row with the
    reason. After every row the JSON file is rewritten atomically; used as a context manager,
    an interrupt (SIGINT from ``timeout``) saves the rows so far with ``"interrupted": true``.
    In a dry run nothing is set up or timed: each row is printed and saved as ``"dry run"``
    (``$STATETAP_DRY_RUN_ROW_S`` seconds apart, to rehearse a part stopped mid-way)."""

    def __init__(self, name: str, env: dict, bandwidth: float | None, extra: dict | None = None):
        self.name, self.env, self.bandwidth = name, env, bandwidth
        self.extra = {"copy_bandwidth_gbps": bandwidth, **(extra or {})}
        self.rows: list[dict] = []
        self.path: Path | None = None
        self.delay = float(os.environ.get("STATETAP_DRY_RUN_ROW_S", "0")) if DRY_RUN else 0.0
        print("  ".join(COLUMNS), flush=True)

    def measure(
        self, base: dict, setup: Callable[[], tuple[Callable[[], object], int]], rep: int = 100
    ) -> float | None:
        """Time one row; returns its ms, or None when it was not timed."""
        from peers import PeerUnavailable

        row = dict(base)
        if DRY_RUN:
            time.sleep(self.delay)
            row.update(status="dry run", ms=None, dry_run=True)
        else:
            try:
                fn, nbytes = setup()
                ms = time_ms(fn, rep=rep)
            except PeerUnavailable as error:
                row.update(status="missing", reason=str(error))
            except Exception as error:  # noqa: BLE001 - one failing row must not lose the rest
                row.update(status="failed", error=f"{type(error).__name__}: {error}")
                traceback.print_exc(limit=-3)
            else:
                row.update(status="ok", ms=ms, bytes=nbytes)
                if nbytes:
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    row["GB/s"] = gbps
                    if self.bandwidth:
                        row["%bw"] = 100 * gbps / self.bandwidth
        self.add(row)
        return row.get("ms")

    def missing(self, base: dict, reason: str) -> None:
        """Record a row that cannot be measured here, with the reason."""
        self.add(dict(base, status="missing", reason=reason))

    def add(self, row: dict) -> None:
        """Append ``row``, print it (with its status) and save the file."""
        self.rows.append(row)
        annotate(self.rows)
        line = format_table([row], COLUMNS).splitlines()[-1]
        status = row.get("status", "ok")
        detail = row.get("error") or row.get("reason") or ""
        print(line if status == "ok" else f"{line}  [{status}] {detail}".rstrip(), flush=True)
        self.save()

    def save(self) -> Path:
        """Rewrite the results file (atomically) with every row so far."""
        self.path = write_results(self.name, self.env, self.rows, self.extra)
        return self.path

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.extra["interrupted"] = True
            print(f"interrupted after {len(self.rows)} rows", file=sys.stderr, flush=True)
        self.save()
        print(f"\n{format_table(self.rows, COLUMNS)}\nwrote {self.path}", flush=True)
        return False
