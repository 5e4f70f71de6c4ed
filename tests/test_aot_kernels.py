"""Every Triton launch statetap makes compiles ahead of time for sm_80 and sm_90, at Triton's
run-time specialisation, against the register budget: at most 128 registers per thread at the
launched warp count, no spills, shared memory that fits, two or more CTAs per SM
(``benchmarks/compile_check.py``; ``-s`` prints the table); the launches that miss it today are
listed, and the list only shrinks. The launches are captured from the
public entry points of every op and decode step under every instrumentation variant, so a
kernel added or changed is checked without editing this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statetap.kernels import OPS, STEPS

CHECK = Path(__file__).parents[1] / "benchmarks" / "compile_check.py"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "check.json"
    env = dict(os.environ, PYTHONSAFEPATH="1", TRITON_INTERPRET="0")
    run = subprocess.run(
        [sys.executable, str(CHECK), "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout[-20000:])
    assert out.exists(), f"compile_check.py wrote no results:\n{run.stderr[-5000:]}"
    return dict(payload=json.loads(out.read_text()), returncode=run.returncode, stderr=run.stderr)


def test_every_op_and_step_is_compiled_for_sm80_and_sm90(compiled):
    results = compiled["payload"]["results"]
    for op in OPS + STEPS:
        targets = {r["target"] for r in results if r["op"] == op}
        # RWKV-6 launches the RWKV-5 kernels' specialisations: listed once, under wkv5
        if op != "wkv6":
            assert targets == {"sm_80", "sm_90a"}, (op, targets)
    assert {r["variant"] for r in results} == {"plain", "emit", "add", "set", "instrumented"}


#: Launches over the budget today, on the locked triton (issue 27, item 4, missed; the closing
#: note gives each kernel's registers and why): ``op | variant | setting | kernel | target``. A
#: ratchet: a launch over the budget that is not listed fails, and so does a listed launch that
#: is back within it (take it off the list).
KNOWN_OVER_BUDGET = """
    selective_scan | emit | bfloat16 L2048 | _selective_scan_fwd_kernel | sm_80
    selective_scan | add | bfloat16 L2048 | _selective_scan_fwd_kernel | sm_80
    selective_scan | add | bfloat16 L2048 | _selective_scan_fwd_kernel | sm_90a
    selective_scan | set | bfloat16 L2048 | _selective_scan_fwd_kernel | sm_80
    selective_scan | set | bfloat16 L2048 | _selective_scan_fwd_kernel | sm_90a
    ssd | plain | bfloat16 L2048 | ssd_chunk_output_kernel | sm_80
    ssd | emit | bfloat16 L2048 | ssd_chunk_output_kernel | sm_80
    ssd | emit | bfloat16 L2048 | ssd_chunk_output_kernel | sm_90a
    ssd | add | bfloat16 L2048 | ssd_chunk_output_kernel | sm_80
    ssd | add | bfloat16 L2048 | ssd_chunk_output_kernel | sm_90a
    ssd | set | bfloat16 L2048 | ssd_chunk_output_kernel | sm_80
    ssd | set | bfloat16 L2048 | ssd_chunk_output_kernel | sm_90a
    wkv5 | emit | chunked bfloat16 L2048 | wkv6_chunk_states_kernel | sm_80
    wkv5 | add | chunked bfloat16 L2048 | wkv6_chunk_states_kernel | sm_80
    wkv5 | add | chunked bfloat16 L2048 | wkv6_chunk_states_kernel | sm_90a
    wkv5 | add | chunked bfloat16 L2048 | wkv6_chunk_output_kernel | sm_80
    wkv5 | add | chunked bfloat16 L2048 | wkv6_chunk_output_kernel | sm_90a
    wkv5 | set | chunked bfloat16 L2048 | wkv6_chunk_states_kernel | sm_80
    wkv5 | set | chunked bfloat16 L2048 | wkv6_chunk_states_kernel | sm_90a
    wkv5 | set | chunked bfloat16 L2048 | wkv6_chunk_output_kernel | sm_80
    wkv5 | set | chunked bfloat16 L2048 | wkv6_chunk_output_kernel | sm_90a
    wkv7 | plain | chunked bfloat16 L2048 | wkv7_chunk_pairs_kernel | sm_80
    wkv7 | plain | chunked bfloat16 L2048 | wkv7_chunk_pairs_kernel | sm_90a
    wkv7 | plain | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_80
    wkv7 | plain | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_90a
    wkv7 | plain | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    wkv7 | emit | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_80
    wkv7 | emit | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_90a
    wkv7 | emit | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    wkv7 | add | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    wkv7 | add | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_90a
    wkv7 | set | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    wkv7 | set | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_90a
    delta_rule | plain | chunked bfloat16 L2048 | wkv7_chunk_pairs_kernel | sm_80
    delta_rule | plain | chunked bfloat16 L2048 | wkv7_chunk_pairs_kernel | sm_90a
    delta_rule | plain | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_80
    delta_rule | plain | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_90a
    delta_rule | plain | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    delta_rule | plain | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_90a
    delta_rule | emit | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_80
    delta_rule | emit | chunked bfloat16 L2048 | wkv7_chunk_factors_kernel | sm_90a
    delta_rule | emit | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    delta_rule | emit | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_90a
    delta_rule | add | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    delta_rule | add | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_90a
    delta_rule | set | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_80
    delta_rule | set | chunked bfloat16 L2048 | wkv7_chunk_state_kernel | sm_90a
    wkv7 | set | recurrent bfloat16 L2048 | wkv7_recurrent_kernel | sm_80
"""
LOCKED_TRITON = "3.8.0"


def _key(result: dict) -> str:
    return " | ".join(result[k] for k in ("op", "variant", "setting", "kernel", "target"))


def test_no_launch_newly_over_budget_and_none_listed_that_fits(compiled):
    import triton

    if triton.__version__ != LOCKED_TRITON:
        pytest.skip(f"the known list is for triton {LOCKED_TRITON}; this is {triton.__version__}")
    results = compiled["payload"]["results"]
    over = {_key(r): "; ".join(r["problems"]) for r in results if r["problems"]}
    known = {line.strip() for line in KNOWN_OVER_BUDGET.strip().splitlines()}
    new = sorted(set(over) - known)
    assert not new, "launches over the register budget:\n" + "\n".join(
        f"{k}: {over[k]}" for k in new
    )
    fixed = sorted(known - set(over))
    assert not fixed, "within the budget now, take off KNOWN_OVER_BUDGET:\n" + "\n".join(fixed)
    assert compiled["returncode"] == (1 if over else 0), compiled["stderr"][-5000:]
