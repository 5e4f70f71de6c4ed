"""The CPU benchmark suite: statetap's ``cpu`` and ``torch`` backends beside the peers' own CPU
paths, every row measured in one pytest-benchmark run (``make bench-cpu``).

Every test module here records its rows through the :func:`record` fixture; at the end of the
session the summary table is printed and ``benchmarks/results/<date>-cpu-<host>-cpu-suite.json``
written (machine, threads, versions, rows).  ``STATETAP_BENCH_THREADS`` sets torch's thread
count (default 2: the project's machine); ``STATETAP_BENCH_NAME`` replaces ``cpu-suite`` in the
file name (a subset run then does not replace the whole suite's file).  An implementation that
is not there (a ``cpu`` backend not built yet, a peer that does not import) becomes a
``missing`` row with the reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import OURS, Row, summarise, table, write_json  # noqa: E402

THREADS = int(os.environ.get("STATETAP_BENCH_THREADS", "2"))
ROWS: list[Row] = []
_LOAD = {}


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(THREADS)
    _LOAD["start"] = os.getloadavg()


def mamba_ssm_function(module: str, name: str) -> Callable:
    """``name`` from mamba-ssm's pure-torch ``module`` on a CPU-only machine.

    mamba-ssm's package imports its CUDA extension; a stand-in is put in its place for the
    import only, and mamba-ssm is then dropped from ``sys.modules`` again: left there, it would
    make transformers' Mamba take mamba-ssm's CUDA path instead of its own CPU one."""
    if "selective_scan_cuda" in sys.modules:  # the real extension (a CUDA build)
        return getattr(importlib.import_module(module), name)
    sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    try:
        return getattr(importlib.import_module(module), name)
    finally:
        for loaded in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[loaded]
        del sys.modules["selective_scan_cuda"]


class Recorder:
    """Times one implementation per test with pytest-benchmark and keeps its :class:`Row`."""

    def __init__(self, benchmark) -> None:
        self.benchmark = benchmark

    def time(
        self,
        group: str,
        case: str,
        impl: str,
        make_call: Callable[[], Callable[[], object]],
        rounds: int,
        paired: Callable[[], Callable[[], object]] | None = None,
        **work: int,
    ) -> Row:
        """Median of ``rounds`` timed calls (after one warm-up call) of what ``make_call`` returns;
        a ``make_call`` or first call that raises makes a ``missing`` row naming the error.

        ``paired`` makes the call this one is compared with (the same kernel without emission):
        it runs, timed too, right before each round, and the row's ``paired_ratio`` is the median
        of the rounds' time ratios (two calls seconds apart see the same machine load)."""
        try:
            call = make_call()
            baseline = paired() if paired is not None else None
            with torch.no_grad():
                call()  # warm-up, and the check that it runs at all
                if baseline is not None:
                    baseline()
        except Exception as error:  # noqa: BLE001 - a missing implementation is a row, not a crash
            return self.missing(group, case, impl, f"{type(error).__name__}: {error}"[:120])
        self.benchmark.group = group
        self.benchmark.extra_info.update(case=case, impl=impl, **work)
        baseline_seconds = []

        def timed():
            with torch.no_grad():
                call()

        def time_baseline():
            with torch.no_grad():
                start = time.perf_counter()
                baseline()
                baseline_seconds.append(time.perf_counter() - start)

        self.benchmark.pedantic(
            timed,
            setup=time_baseline if baseline is not None else None,
            rounds=rounds,
            iterations=1,
            warmup_rounds=0,
        )
        stats = self.benchmark.stats.stats
        row = Row(group, case, impl, stats.median * 1e3, rounds, **work)
        if baseline is not None:
            row.paired_ratio = statistics.median(
                t / b for t, b in zip(stats.data, baseline_seconds, strict=True)
            )
            self.benchmark.extra_info["paired_ratio"] = row.paired_ratio
        ROWS.append(row)
        return row

    def missing(self, group: str, case: str, impl: str, note: str) -> Row:
        row = Row(group, case, impl, None, note=f"missing: {note}")
        ROWS.append(row)
        return row

    def limit(self, case: str, impl: str, seconds: float, rounds: int, **derived: float) -> Row:
        """A machine-limit row measured by ``impl`` (``copy_gbps``, ``fma_per_s`` or
        ``exp_per_s`` in ``derived``)."""
        row = Row("machine limits", case, impl, seconds * 1e3, rounds, derived=derived)
        ROWS.append(row)
        return row


@pytest.fixture
def record(benchmark) -> Recorder:
    return Recorder(benchmark)


def cpu_backend(public) -> Callable:
    """statetap's ``cpu`` implementation of a public op; RuntimeError saying why it is absent."""
    from statetap.kernels import _cpu

    if not _cpu.built():
        raise RuntimeError("statetap._C is not built")
    impl = public.implementations.get("cpu")
    if impl is None:
        raise RuntimeError(f"{public.__name__} has no cpu backend yet")
    return impl


def plain_of(impl: str, make_plain: Callable[[], Callable]) -> Callable | None:
    """For an ``emit 1%`` row, ``make_plain`` (the same kernel without emission, timed in pairs
    with it: :meth:`Recorder.time`'s ``paired``); None for every other row."""
    return make_plain if impl.endswith("emit 1%") else None


def emission(impl: str, length: int) -> dict:
    """``emit_at`` for the ``emit 1%`` variant: 1 % of the positions, evenly spread."""
    if not impl.endswith("emit 1%"):
        return {}
    count = max(1, length // 100)
    return dict(emit_at=torch.linspace(0, length - 1, count).long())


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Machine, threads and versions for the results file."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    isa = None
    try:
        from statetap.kernels import _cpu

        isa = _cpu.isa() if _cpu.built() else None
    except Exception:  # noqa: BLE001 - the ISA is informative only
        isa = None
    packages = ("torch", "triton", "transformers", "mamba-ssm", "fla-core", "rwkv", "statetap")
    return {
        "device": "cpu",
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "statetap_cpu_isa": isa,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in packages},
        "load_average_start": _LOAD.get("start"),
        "load_average_end": os.getloadavg(),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not ROWS:
        return
    rows = summarise(ROWS)
    terminalreporter.write_sep("=", f"statetap CPU suite ({torch.get_num_threads()} threads)")
    terminalreporter.write_line(table(rows))
    path = write_json(rows, environment(), name=os.environ.get("STATETAP_BENCH_NAME", "cpu-suite"))
    terminalreporter.write_line(f"wrote {path}")
    ours = sum(1 for r in rows if r.impl == OURS and r.ms is None)
    if ours:
        terminalreporter.write_line(f"{ours} statetap cpu rows missing (backend not built yet)")
