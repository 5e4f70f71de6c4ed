"""The benchmark plumbing that can be checked without a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import common  # noqa: E402
import peers  # noqa: E402


def test_results_are_written_atomically_under_a_dated_device_name(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = [{"op": "wkv6", "ms": 1.25}, {"op": "ssd", "ms": 0.5}]
    path = common.write_results("rwkv", {"device": "NVIDIA H100 80GB HBM3"}, rows, {"note": "x"})
    assert path.name.endswith("-nvidia-h100-80gb-hbm3-rwkv.json")
    payload = json.loads(path.read_text())
    assert payload["rows"] == rows and payload["note"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_table_and_bytes():
    table = common.format_table([{"op": "a", "ms": 1 / 3}, {"op": "bb"}], ["op", "ms"])
    assert table.splitlines() == ["op  ms", "a   0.333", "bb"]
    assert common.tensor_bytes(torch.zeros(3, 4), None, torch.zeros(2, dtype=torch.float16)) == 52


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_require_cuda_exits_with_a_clear_message():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        common.require_cuda("bench_x.py")


def test_recorder_saves_every_row_and_catches_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "time_ms", lambda fn, rep=100: fn())
    base = dict(op="ssd", shape="B8", timing="eager")

    def ours(ms):
        return lambda: ((lambda: ms), 10**9)

    def broken():
        raise RuntimeError("kernel exploded")

    def absent():
        raise peers.PeerUnavailable("not carried")

    with common.Recorder("unit", {"device": "Test GPU"}, bandwidth=1000.0) as run:
        assert run.measure(base | dict(variant="plain", impl="statetap", role="ours"), ours(2.0))
        saved = json.loads(run.path.read_text())["rows"]
        assert [r["ms"] for r in saved] == [2.0]  # saved before the next row starts
        run.measure(base | dict(variant="emit 1%", impl="statetap", role="ours"), ours(2.2))
        run.measure(base | dict(variant="inject", impl="statetap", role="ours"), broken)
        peer = base | dict(variant="plain", impl="peer", role="peer", main=True)
        run.measure(peer, ours(4.0))
        run.measure(base | dict(variant="emit 1%", impl="peer chained", role="chained"), ours(5.5))
        run.measure(base | dict(variant="plain", impl="other peer", role="peer"), absent)
    rows = {(r["variant"], r["impl"]): r for r in json.loads(run.path.read_text())["rows"]}
    plain, emit = rows["plain", "statetap"], rows["emit 1%", "statetap"]
    assert plain["GB/s"] == pytest.approx(500.0) and plain["%bw"] == pytest.approx(50.0)
    assert plain["vs_peer"] == 0.5 and plain["goal"] == ">= 1.5x peer" and plain["goal_met"]
    assert emit["vs_plain"] == pytest.approx(1.1) and emit["vs_chained"] == pytest.approx(0.4)
    assert emit["vs_peer"] == pytest.approx(0.55) and emit["goal_met"]
    assert rows["inject", "statetap"]["status"] == "failed"
    assert rows["inject", "statetap"]["error"] == "RuntimeError: kernel exploded"
    assert rows["plain", "other peer"] == base | dict(
        variant="plain", impl="other peer", role="peer", status="missing", reason="not carried"
    )
    out = capsys.readouterr().out
    assert "[failed] RuntimeError: kernel exploded" in out and "[missing] not carried" in out


def test_recorder_saves_on_interrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "time_ms", lambda fn, rep=100: fn())
    with pytest.raises(KeyboardInterrupt), common.Recorder("unit", {"device": "x"}, None) as run:
        run.measure(dict(op="a", shape="s", variant="plain", impl="i"), lambda: (lambda: 1.0, 0))
        raise KeyboardInterrupt
    payload = json.loads(run.path.read_text())
    assert payload["interrupted"] is True and len(payload["rows"]) == 1


def test_decode_goal_is_bandwidth_at_batch_64():
    rows = [
        dict(op="wkv7_step", shape="B64", variant="plain", impl="statetap", role="ours",
             status="ok", ms=1.0, decode=True, B=64, **{"%bw": 79.0}),
        dict(op="wkv7_step", shape="B1", variant="plain", impl="statetap", role="ours",
             status="ok", ms=1.0, decode=True, B=1, **{"%bw": 90.0}),
    ]  # fmt: skip
    common.annotate(rows)
    assert rows[0]["goal"] == ">= 80% bw" and rows[0]["goal_met"] is False
    assert "goal" not in rows[1]


def test_dry_run_results_never_go_to_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "DRY_RUN", True)
    monkeypatch.delenv("STATETAP_RESULTS_DIR", raising=False)
    with pytest.raises(ValueError, match="not measurements"):
        common.results_dir()
    monkeypatch.setenv("STATETAP_RESULTS_DIR", str(tmp_path))
    path = common.write_results("unit", {"device": "Test GPU"}, [])
    assert path.parent == tmp_path and "-dry-run-unit.json" in path.name
    assert json.loads(path.read_text())["dry_run"] is True
