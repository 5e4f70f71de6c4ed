"""The GPU suite's report (benchmarks/gpu_suite_report.py), checked on a real pytest report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import common  # noqa: E402
import gpu_suite_report  # noqa: E402

SAMPLE = """
import pytest

def test_passes():
    assert True

def test_fails():
    assert 1 == 2, "one is not two"

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_errors(broken):
    pass
"""


@pytest.fixture
def junit(tmp_path) -> Path:
    """A report written by pytest itself on a module with a pass, a failure, a skip, an error."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
        + ["-p", "no:randomly", f"--junitxml={report}", "test_sample.py"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    return report


def test_counts_and_failures_from_a_pytest_report(junit):
    outcomes = gpu_suite_report.junit_outcomes(junit)
    assert {k: outcomes[k] for k in ("passed", "failed", "errors", "skipped")} == {
        "passed": 1,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
    }
    failures = {f["test"].split("::")[-1]: f["message"] for f in outcomes["failures"]}
    assert set(failures) == {"test_fails", "test_errors"}
    assert "one is not two" in failures["test_fails"]


def test_missing_report_is_not_zero_failures(tmp_path):
    outcomes = gpu_suite_report.junit_outcomes(tmp_path / "absent.xml")
    assert outcomes["report"].startswith("unreadable: FileNotFoundError")


def test_main_lists_failures_writes_json_and_fails(junit, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    parts = ["--part", "check:0:31", "--part", "bench_rwkv:124:120", "--part", "tests:1:88"]
    status = gpu_suite_report.main(["--junit", str(junit), *parts])
    printed = capsys.readouterr().out
    assert status == 1
    assert "bench_rwkv   timed out" in printed and "FAILED test_sample::test_fails" in printed
    (written,) = (tmp_path / "results").iterdir()
    payload = json.loads(written.read_text())
    assert [(p["name"], p["outcome"]) for p in payload["parts"]] == [
        ("check", "ok"),
        ("bench_rwkv", "timed out"),
        ("tests", "failed (exit 1)"),
    ]
    assert payload["tests"]["failed"] == 1 and len(payload["tests"]["failures"]) == 2
    assert gpu_suite_report.main(["--part", "check:0:3"]) == 0


def test_bad_part_names_the_expected_form():
    with pytest.raises(ValueError, match="expected name:exit-status:seconds"):
        gpu_suite_report.Part.parse("check:ok")
