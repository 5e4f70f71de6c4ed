"""The GPU suite's own results file: which parts ran, how long each took, which tests failed.

``gpu_suite.sh`` runs its parts (check, tests, benchmarks) without stopping at a failure and
then calls this script, which prints the failures, sums up each benchmark's results file (rows
timed, failed, missing; the goals met and missed) and writes
``benchmarks/results/<date>-<device>-gpu-suite.json`` atomically::

    python benchmarks/gpu_suite_report.py --junit /tmp/gpu-tests.xml \\
        --part install:0:41 --part check:0:95 --part tests:1:160 --part bench_mamba:0:70 \\
        --bench-json benchmarks/results/2026-12-01-nvidia-h100-80gb-hbm3-mamba.json

Each ``--part`` is ``name:exit status:seconds`` (124 is a part stopped by its time limit).
The script exits 1 when any part failed, and when a results file of a dry run
(``"dry_run": true``) is handed to a report that is not itself a dry run: rehearsal rows are
never reported as measurements.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


@dataclass(frozen=True)
class Part:
    """One part of the suite: its name, exit status and wall time in seconds."""

    name: str
    status: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Part:
        """``Part`` from ``name:status:seconds``; ValueError naming the expected form."""
        pieces = text.rsplit(":", 2)
        try:
            name, status, seconds = pieces
            return cls(name, int(status), float(seconds))
        except ValueError:
            raise ValueError(f"--part {text!r}: expected name:exit-status:seconds") from None

    @property
    def outcome(self) -> str:
        if self.status == 0:
            return "ok"
        return "timed out" if self.status in (124, 137) else f"failed (exit {self.status})"


def junit_outcomes(path: Path) -> dict:
    """Counts and the failing test ids of a pytest ``--junitxml`` report.

    Returns ``{"passed", "failed", "errors", "skipped": int, "failures": [{"test", "message"}]}``;
    a missing or unreadable report (pytest killed before writing it) is reported as such in
    ``"report"`` rather than as zero failures."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        return counts | {"report": f"unreadable: {type(error).__name__}: {error}"}
    for case in root.iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            key = "failed" if "failure" in kinds else "errors"
            counts[key] += 1
            child = case.find("failure") if "failure" in kinds else case.find("error")
            message = (child.get("message") or "").splitlines()
            counts["failures"].append({"test": test, "message": message[0] if message else ""})
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts | {"report": str(path)}


def bench_summary(path: Path) -> dict:
    """What one benchmark results file holds: its rows counted by status, the goal rows met
    and missed, whether it was interrupted or a dry run. ValueError for a dry-run file in a
    report that is not a dry run."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"file": str(path), "error": f"unreadable: {type(error).__name__}: {error}"}
    if payload.get("dry_run") and not common.DRY_RUN:
        raise ValueError(
            f"{path} holds dry-run rows (no measurements): refusing to report it as results"
        )
    rows = payload.get("rows", [])
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("status", "ok")] = counts.get(row.get("status", "ok"), 0) + 1
    goals = [r for r in rows if "goal_met" in r]
    return {
        "file": str(path),
        "benchmark": payload.get("benchmark"),
        "rows": counts,
        "interrupted": bool(payload.get("interrupted")),
        "dry_run": bool(payload.get("dry_run")),
        "goals_met": sum(bool(r["goal_met"]) for r in goals),
        "goals_missed": [
            f"{r['op']} {r['shape']} {r['variant']} {r['impl']} {r.get('timing', '')}: {r['goal']}"
            for r in goals
            if not r["goal_met"]
        ],
        "not_timed": [
            f"{r['op']} {r['shape']} {r['variant']} {r['impl']}: "
            f"{r['status']}: {r.get('error') or r.get('reason')}"
            for r in rows
            if r.get("status") in ("failed", "missing")
        ],
    }


def device_environment() -> dict:
    """The CUDA environment (common.environment), or the host's name where CUDA is missing."""
    import torch

    if common.DRY_RUN:
        return common.environment(torch.device("cpu"))
    if torch.cuda.is_available():
        return common.environment(torch.device("cuda"))
    return {"device": f"no-cuda-{platform.node() or 'host'}", "torch": torch.__version__}


def summary_lines(parts: list[Part], tests: dict | None, benches: list[dict] = ()) -> list[str]:
    """The lines printed at the end of the suite: one per part, each failing test, then each
    results file with its rows, and every row not timed and every goal missed."""
    lines = [f"{p.name:<12} {p.outcome:<18} {p.seconds:6.0f} s" for p in parts]
    if tests is not None:
        counts = ", ".join(f"{tests[k]} {k}" for k in ("passed", "failed", "errors", "skipped"))
        lines.append(f"tests: {counts} ({tests['report']})")
        lines += [f"  FAILED {f['test']}: {f['message']}" for f in tests["failures"]]
    for bench in benches:
        if "error" in bench:
            lines.append(f"{bench['file']}: {bench['error']}")
            continue
        counts = ", ".join(f"{n} {status}" for status, n in sorted(bench["rows"].items()))
        flags = (
            " (interrupted)" * bench["interrupted"]
            + " (DRY RUN: no measurements)" * bench["dry_run"]
        )
        lines.append(
            f"{bench['benchmark']}: {counts or 'no rows'}{flags}; {bench['goals_met']} "
            f"goals met, {len(bench['goals_missed'])} missed ({bench['file']})"
        )
        lines += [f"  not timed: {line}" for line in bench["not_timed"]]
        lines += [f"  goal missed: {line}" for line in bench["goals_missed"]]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="append", default=[], type=Part.parse)
    parser.add_argument("--junit", type=Path, help="pytest --junitxml report of the tests part")
    parser.add_argument(
        "--bench-json", action="append", default=[], type=Path, help="a benchmark's results file"
    )
    args = parser.parse_args(argv)
    tests = junit_outcomes(args.junit) if args.junit else None
    try:
        benches = [bench_summary(path) for path in args.bench_json]
    except ValueError as error:
        print(f"gpu_suite_report: {error}", file=sys.stderr)
        return 1
    print("\n".join(["gpu suite:"] + summary_lines(args.part, tests, benches)))
    extra = {
        "parts": [asdict(p) | {"outcome": p.outcome} for p in args.part],
        "tests": tests,
        "benchmarks": benches,
    }
    path = common.write_results("gpu-suite", device_environment(), [], extra)
    print(f"wrote {path}")
    return int(any(p.status != 0 for p in args.part))


if __name__ == "__main__":
    sys.exit(main())
