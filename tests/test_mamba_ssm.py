"""mamba-ssm's ``MambaLMHeadModel`` under statetap: ``tests/mamba_ssm_cases.py`` in its own
process (importing mamba-ssm on a CPU machine changes what transformers' Mamba binds to)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mamba_ssm_cases.py")


@pytest.mark.skipif(
    importlib.util.find_spec("mamba_ssm") is None,
    reason="mamba-ssm is not installed (scripts/bootstrap.sh installs it on CPU machines)",
)
def test_mamba_ssm_cases_pass_in_a_separate_process():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", CASES],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(CASES),
        env=os.environ | {"PYTHONSAFEPATH": "1"},
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-3000:]
