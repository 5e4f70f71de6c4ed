"""The CPU suite's rows, summary table and results file.

Each benchmark records one :class:`Row` (an op at a shape, one implementation, its median time
and the work it must do).  At the end of the session :func:`summarise` derives state updates/s,
GB/s and the distance to the machine's own limits (measured by ``test_limits.py`` in the same
run: a copy's bandwidth, and the float FMAs and vector exps per second the kernels' own vector
code reaches), and each row's ratio to statetap's ``cpu`` row of the same work.  :func:`write_json`
writes ``benchmarks/results/<date>-cpu-<host>-cpu-suite.json`` atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
LIMIT_GROUP = "machine limits"
OURS = "statetap cpu"
# What each group's ``ratio`` divides by: statetap cpu, except end to end (the plain forward).
BASELINE = {"end to end": "transformers forward"}


@dataclass
class Row:
    """One measurement.

    Attributes:
        group: the op (``"selective_scan"``) or ``"end to end"`` / ``"machine limits"``.
        case: the shape or setting, e.g. ``"B8 D256 N16 L512"``.
        impl: who ran it (``"statetap cpu"``, ``"mamba-ssm selective_scan_ref"``, ...).
        ms: median wall time, or None when the implementation is missing.
        rounds: how many timed rounds the median is over.
        updates: state elements updated (one per state value per token), 0 if not a recurrence.
        bytes: compulsory memory traffic (inputs read once, outputs written once).
        ops: float arithmetic operations (mul, add, FMA, compare, select: one per lane) the C++
            kernel's loops execute besides the exps, counted from ``csrc/<op>.cpp``.
        exps: exponentials the recurrence must evaluate.
        note: why a row is missing, or anything the reader must know.
        paired_ratio: for a row timed in pairs with another call (emission against the same
            kernel without it), the median of the per-round time ratios; it is the row's
            ``ratio``.
    """

    group: str
    case: str
    impl: str
    ms: float | None
    rounds: int = 0
    updates: int = 0
    bytes: int = 0
    ops: int = 0
    exps: int = 0
    note: str = ""
    derived: dict = field(default_factory=dict)
    paired_ratio: float | None = None


LIMITS = {"copy_gbps": "GB/s", "fma_per_s": "FMA/s", "exp_per_s": "exp/s"}


def limits_of(rows: list[Row]) -> dict:
    """``{"copy_gbps", "fma_per_s", "exp_per_s"}`` from the machine-limit rows (absent keys if
    not run)."""
    found = {}
    for row in rows:
        if row.group == LIMIT_GROUP and row.ms is not None:
            found.update({k: v for k, v in row.derived.items() if k in LIMITS})
    return found


def compute_bound(row: Row, limits: dict) -> float | None:
    """Seconds the row's arithmetic takes at the measured peak rates: ``ops`` at the FMA rate
    plus ``exps`` at the vector-exp rate (None without both limits or any arithmetic)."""
    if not (row.ops or row.exps) or not {"fma_per_s", "exp_per_s"} <= limits.keys():
        return None
    return row.ops / limits["fma_per_s"] + row.exps / limits["exp_per_s"]


def summarise(rows: list[Row]) -> list[Row]:
    """Fill each row's ``derived``: updates/s, GB/s, % of copy bandwidth, % of the compute bound
    (:func:`compute_bound` over the row's time: 100 is the machine's arithmetic limit), and
    ``ratio``
    (this row's time over the time of the group's baseline on the same case: statetap cpu,
    or :data:`BASELINE`)."""
    limits = limits_of(rows)
    ours = {(r.group, r.case): r.ms for r in rows if r.ms and r.impl == BASELINE.get(r.group, OURS)}
    for row in rows:
        if row.group == LIMIT_GROUP or row.ms is None:
            continue
        seconds = row.ms / 1e3
        derived = {}
        if row.updates:
            derived["updates/s"] = row.updates / seconds
        if row.bytes:
            derived["GB/s"] = row.bytes / seconds / 1e9
            if "copy_gbps" in limits:
                derived["% copy bw"] = 100 * derived["GB/s"] / limits["copy_gbps"]
        bound = compute_bound(row, limits)
        if bound is not None:
            derived["% compute bound"] = 100 * bound / seconds
        if row.paired_ratio is not None:
            derived["ratio"] = row.paired_ratio
        elif (row.group, row.case) in ours:
            derived["ratio"] = row.ms / ours[(row.group, row.case)]
        row.derived = derived
    return rows


COLUMNS = (
    "group",
    "case",
    "impl",
    "ms",
    "updates/s",
    "GB/s",
    "% copy bw",
    "% compute bound",
    "ratio",
)


def _cell(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def table(rows: list[Row]) -> str:
    """The summary table: one line per row, missing implementations shown as such."""
    lines = [list(COLUMNS)]
    for row in rows:
        values = asdict(row) | row.derived
        line = [_cell(values.get(c)) if c in values else "" for c in COLUMNS]
        if row.group == LIMIT_GROUP:  # the limit itself, in the last column
            limit = [f"{v:.3g} {LIMITS[k]}" for k, v in row.derived.items() if k in LIMITS]
            line[COLUMNS.index("ratio")] = ", ".join(limit)
        if row.ms is None:
            line[COLUMNS.index("ratio")] = row.note
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def write_json(
    rows: list[Row], environment: dict, directory: Path = RESULTS, name: str = "cpu-suite"
) -> Path:
    """Write the rows and the environment to ``<date>-cpu-<host>-<name>.json`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^a-z0-9]+", "-", platform.node().lower()).strip("-") or "host"
    path = directory / f"{_dt.date.today().isoformat()}-cpu-{host}-{name}.json"
    payload = {
        "benchmark": name,
        "environment": environment,
        "limits": limits_of(rows),
        "table": table(rows).splitlines(),
        "rows": [asdict(r) for r in rows],
    }
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
    return path
