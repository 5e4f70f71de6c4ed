"""``statetap extract`` under ``torchrun``: two CPU ranks (gloo) share the windows, one
manifest lists every shard, and read back the rows come in input order equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from _extract_models import build, random_texts, save

from statetap.cli import main
from statetap.extract import open_extraction

TEXTS = random_texts([12, 3, 25, 7, 18, 1, 30, 9, 14, 5, 21], seed=5)


def test_two_gloo_ranks_equal_one_process(tmp_path):
    save(build("mamba", layers=2), tmp_path / "model")
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(TEXTS)))
    flags = ["--model", str(tmp_path / "model"), "--dataset", str(data), "--positions", "0:64"]
    flags += ["--batch-size", "2", "--shard-rows", "3", "--no-progress", "--device", "cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    command += ["-m", "statetap.cli", "extract", *flags, "--out", str(tmp_path / "two")]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONSAFEPATH="1")
    run = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("holds 11 rows") == 1  # rank 0 reports

    torch.set_num_threads(1)  # as each rank ran
    try:
        assert main(["extract", *flags, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    two, one = open_extraction(tmp_path / "two"), open_extraction(tmp_path / "one")
    windows = [shard["window"] for shard in two.manifest["shards"]]
    assert windows == [0, 1, 2, 3] and two.manifest["complete"]
    assert [shard["rank"] for shard in two.manifest["shards"]] == [0, 1, 0, 1]
    assert len(two) == len(one) == len(TEXTS)
    for row in range(len(TEXTS)):
        got, expected = two[row], one[row]
        assert int(got["row"]) == row
        assert set(got) == set(expected)
        for name in expected:
            assert torch.equal(got[name], expected[name]), (row, name)
