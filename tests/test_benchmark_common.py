"""The benchmark plumbing that can be checked without a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import common  # noqa: E402


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
