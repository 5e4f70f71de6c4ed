"""mamba-ssm against statetap, each case file in its own process (importing mamba-ssm on a CPU
machine changes what transformers' Mamba binds to): ``tests/mamba_ssm_cases.py``, its
``MambaLMHeadModel`` under statetap; ``tests/mamba_ssm_kernel_cases.py``, the cpu kernels
against its references ``selective_scan_ref``, ``selective_state_update_ref`` and
``ssd_minimal_discrete``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(
    importlib.util.find_spec("mamba_ssm") is None,
    reason="mamba-ssm is not installed (scripts/bootstrap.sh installs it on CPU machines)",
)
@pytest.mark.parametrize("cases", ["mamba_ssm_cases.py", "mamba_ssm_kernel_cases.py"])
def test_mamba_ssm_cases_pass_in_a_separate_process(cases):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cases],
        capture_output=True,
        text=True,
        cwd=HERE,
        env=os.environ | {"PYTHONSAFEPATH": "1"},
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-3000:]
