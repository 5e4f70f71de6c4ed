"""The CPU benchmark suite's summary and results file (benchmarks/cpu/report.py), no timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "cpu"))
import report  # noqa: E402


def rows():
    return [
        report.Row("machine limits", "copy", "torch", 10.0, derived={"copy_gbps": 20.0}),
        report.Row("machine limits", "fma", "statetap cpu", 5.0, derived={"fma_per_s": 8e10}),
        report.Row("machine limits", "exp", "statetap cpu", 5.0, derived={"exp_per_s": 4e9}),
        report.Row(
            "wkv6",
            "B4",
            "statetap cpu",
            8.0,
            5,
            updates=16_000_000,
            bytes=80_000_000,
            ops=48_000_000,
            exps=4_000_000,
        ),
        report.Row("wkv6", "B4", "fla naive_recurrent_rwkv6", 80.0, 1, updates=16_000_000),
        report.Row("wkv7", "B4", "statetap cpu", None, note="missing: no cpu backend yet"),
        report.Row("end to end", "d256", "transformers forward", 100.0, 3),
        report.Row("end to end", "d256", "tap.run nothing", 150.0, 3),
    ]


def test_derived_numbers_against_the_limits_and_the_baseline():
    summary = report.summarise(rows())
    ours, fla = summary[3].derived, summary[4].derived
    assert ours["updates/s"] == pytest.approx(16e6 / 8e-3)
    assert ours["GB/s"] == pytest.approx(80e6 / 8e-3 / 1e9)  # 10 GB/s
    assert ours["% copy bw"] == pytest.approx(50.0)  # of the measured 20 GB/s
    # 0.6 ms of FMAs and 1 ms of exps at the peak rates, in 8 ms
    assert ours["% compute bound"] == pytest.approx(100 * (48e6 / 8e10 + 4e6 / 4e9) / 8e-3)
    assert "% compute bound" not in fla  # no arithmetic counted for a peer's row
    assert ours["ratio"] == 1.0 and fla["ratio"] == pytest.approx(10.0)
    assert summary[7].derived["ratio"] == pytest.approx(1.5)  # over the plain forward
    assert summary[5].derived == {}


def test_table_shows_missing_rows_and_json_is_written_atomically(tmp_path):
    summary = report.summarise(rows())
    lines = report.table(summary).splitlines()
    missing = next(line for line in lines if line.startswith("wkv7"))
    assert "missing" in missing and "no cpu backend yet" in missing
    path = report.write_json(summary, {"threads": 2}, tmp_path)
    payload = json.loads(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert payload["limits"] == {"copy_gbps": 20.0, "fma_per_s": 8e10, "exp_per_s": 4e9}
    assert payload["environment"] == {"threads": 2} and len(payload["rows"]) == 8
    assert payload["rows"][5]["ms"] is None
