"""benchmarks/gpu_suite.sh rehearsed without a GPU (STATETAP_SUITE_DRY_RUN=1): every part
runs under its limit, each part's JSON reaches $OUT as the part ends, a part stopped by its
limit still leaves its rows, and nothing of a dry run lands in benchmarks/results/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
RESULTS = ROOT / "benchmarks" / "results"


def dry_env(out: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "STATETAP_RESULTS_DIR"}
    env.update(OUT=str(out), STATETAP_SUITE_DRY_RUN="1", PYTHON=sys.executable)
    env.update(extra)
    return env


def test_dry_run_copies_each_parts_json_to_out_as_the_part_ends(tmp_path):
    before = set(RESULTS.glob("*.json")) if RESULTS.exists() else set()
    result = subprocess.run(
        ["bash", str(SUITE)], env=dry_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    log = result.stdout
    # each part's copy is logged right after that part ends, before the next part starts
    order = ["bench_mamba finished", "-dry-run-mamba.json to $OUT", "bench_rwkv6 (limit",
             "bench_rwkv6 finished", "-dry-run-rwkv6.json to $OUT", "bench_rwkv7 (limit",
             "-dry-run-rwkv7.json to $OUT", "tests (limit", "gpu-suite-tests.xml to $OUT",
             "-dry-run-gpu-suite.json to $OUT"]  # fmt: skip
    at = [log.find(marker) for marker in order]
    assert -1 not in at and at == sorted(at), log
    files = sorted(tmp_path.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    names = [p.name.split("-dry-run-")[1] for p in files]
    assert names == ["mamba.json", "rwkv6.json", "rwkv7.json", "gpu-suite.json"]
    for path in files:
        payload = json.loads(path.read_text())
        assert payload["dry_run"] is True and payload["environment"]["device"] == "dry-run"
        assert all(r["status"] == "dry run" and r["ms"] is None for r in payload["rows"])
    mamba = json.loads(files[0].read_text())["rows"]
    assert {"B8 L2048 D1536 N16", "B8 L2048 H24 P64 N128"} <= {r["shape"] for r in mamba}
    assert {r["impl"] for r in mamba} >= {
        "mamba_ssm selective_scan_fn (CUDA)",
        "mamba_ssm mamba_chunk_scan_combined chained",
        "mamba_ssm selective_state_update",
    }
    assert {r["timing"] for r in mamba if r["op"] == "ssd_step"} == {"eager", "prepared", "graph"}
    report = json.loads(files[-1].read_text())
    assert [p["name"] for p in report["parts"]] == [
        "install", "check", "bench_mamba", "bench_rwkv6", "bench_rwkv7", "tests"
    ]  # fmt: skip
    assert (tmp_path / "gpu-suite-tests.xml").exists()
    assert (set(RESULTS.glob("*.json")) if RESULTS.exists() else set()) == before


def test_a_benchmark_stopped_by_its_limit_keeps_its_rows(tmp_path):
    """SIGINT (what the suite's `timeout --signal=INT` sends) mid-way: the rows so far are in
    the JSON, which says it was interrupted."""
    env = dry_env(tmp_path, STATETAP_RESULTS_DIR=str(tmp_path), STATETAP_DRY_RUN_ROW_S="0.3")
    script = ROOT / "benchmarks" / "bench_mamba.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--quick"], env=env, stdout=subprocess.PIPE, text=True
    )
    path = None
    deadline = time.monotonic() + 60
    while path is None and time.monotonic() < deadline:  # the first row has been saved
        path = next(iter(tmp_path.glob("*-dry-run-mamba.json")), None)
        time.sleep(0.05)
    assert path is not None, "no row was saved"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    payload = json.loads(path.read_text())
    assert payload["interrupted"] is True
    assert 0 < len(payload["rows"]) < 21, out
    assert f"interrupted after {len(payload['rows'])} rows" not in out  # that goes to stderr


def test_dry_run_refuses_to_write_beside_the_measurements(tmp_path):
    env = dry_env(tmp_path, STATETAP_RESULTS_DIR=str(RESULTS))
    script = ROOT / "benchmarks" / "bench_rwkv.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "dry-run rows are not measurements" in result.stderr


@pytest.mark.parametrize("dry_run", ["0", "1"])
def test_the_report_refuses_dry_run_rows_unless_it_is_a_dry_run(tmp_path, dry_run):
    rows = tmp_path / "2026-01-01-dry-run-mamba.json"
    rows.write_text(json.dumps({"benchmark": "mamba", "dry_run": True, "rows": []}))
    env = dry_env(tmp_path, STATETAP_RESULTS_DIR=str(tmp_path), STATETAP_SUITE_DRY_RUN=dry_run)
    report = ROOT / "benchmarks" / "gpu_suite_report.py"
    result = subprocess.run(
        [sys.executable, str(report), "--part", "bench_mamba:0:3", "--bench-json", str(rows)],
        env=env,
        capture_output=True,
        text=True,
    )
    if dry_run == "1":
        assert result.returncode == 0, result.stderr
        assert "DRY RUN: no measurements" in result.stdout
    else:
        assert result.returncode == 1
        assert "holds dry-run rows (no measurements): refusing" in result.stderr


def test_the_benchmark_rows_run_end_to_end_at_tiny_shapes(tmp_path, monkeypatch):
    """Every row's setup and call, on the CPU at tiny shapes (timing replaced by one call, CUDA
    graphs by the eager call, the peers reported missing): statetap's rows come back timed, and
    nothing a row raises escapes the Recorder."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_mamba
    import bench_rwkv
    import common
    import peers
    import torch

    def unavailable():
        raise peers.PeerUnavailable("not in this test")

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "time_ms", lambda fn, rep=100: (fn(), 1.0)[1])
    monkeypatch.setattr(common, "graph_replay", lambda fn: fn)
    monkeypatch.setattr(peers, "mamba_triton", unavailable)
    monkeypatch.setattr(peers, "fla", unavailable)
    for table, small in (
        (bench_mamba.SCAN, dict(dim=8, n=4)),
        (bench_mamba.STEP_SCAN, dict(dim=8, n=4)),
        (bench_mamba.SSD, dict(heads=2, head_dim=4, n=8)),
        (bench_mamba.STEP_SSD, dict(heads=2, head_dim=4, n=8)),
    ):
        for key, value in small.items():
            monkeypatch.setitem(table, key, value)
    monkeypatch.setattr(bench_mamba, "CHUNK", 16)
    monkeypatch.setitem(bench_rwkv.SHAPES, "7b", (2, 8))
    cpu = torch.device("cpu")
    with common.Recorder("rows", {"device": "cpu"}, 100.0) as run, torch.inference_mode():
        quick = bench_mamba.parse_args(["--quick"])
        bench_mamba.bench_selective_scan(run, [(2, 300)], cpu, quick)
        bench_mamba.bench_ssd(run, [(2, 300)], cpu, quick)
        bench_mamba.bench_steps(run, (2,), cpu)
        quick = bench_rwkv.parse_args(["--quick"])
        bench_rwkv.bench_wkv4(run, "7b", 2, 300, cpu, quick)
        bench_rwkv.bench_decode(run, "7b", 2, cpu, quick)
    rows = json.loads(run.path.read_text())["rows"]
    assert len(rows) == 4 + 5 + 16 + 3 + 18
    ours = [r for r in rows if r["impl"].startswith("statetap")]
    ok = {(r["op"], r["variant"]) for r in ours if r["status"] == "ok"}
    for op in ("ssd", "selective_scan_step", "ssd_step", "wkv4", "wkv6_step", "wkv7_step"):
        assert (op, "plain") in ok, op
    assert ("ssd", "emit 1%") in ok and ("wkv7_step", "emit") in ok
    peer_rows = [r for r in rows if r.get("role") in ("peer", "chained")]
    assert peer_rows and all(r["status"] == "missing" for r in peer_rows)
