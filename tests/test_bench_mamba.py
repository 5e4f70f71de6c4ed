"""benchmarks/bench_mamba.py documents its run and refuses to time anything without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_mamba.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_help_documents_the_run():
    result = run("--help")
    assert result.returncode == 0
    assert "--quick" in result.stdout and "mamba.json" in result.stdout


def test_unknown_ops_are_refused():
    result = run("--ops", "ssd,scan")
    assert result.returncode == 2 and "unknown ['scan']" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device would run the benchmark")
def test_exits_with_a_clear_message_without_cuda():
    result = run("--quick")
    assert result.returncode != 0
    assert "needs a CUDA GPU" in result.stderr
