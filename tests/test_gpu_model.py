"""The compiled performance model's plumbing (``benchmarks/gpu_model*.py``): occupancy
arithmetic, byte counts, the runtime specialisation a captured launch gets, the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu_model  # noqa: E402
from gpu_model_capture import extent_bytes  # noqa: E402


@pytest.mark.parametrize(
    "registers, warps, shared, expected",
    [
        (56, 4, 64, 9),  # 56 regs -> 7 x 256 per warp; 65536 // 1792 = 36 warps -> 9 CTAs
        (160, 8, 13824, 1),  # 5120 per warp -> 12 warps -> 1 CTA of 8
        (32, 4, 0, 16),  # 16 warps' worth of CTAs, capped by 64 warps per SM
        (16, 1, 0, 32),  # the 32-blocks-per-SM cap
        (40, 4, 100 * 1024, 2),  # shared: 233472 // (102400 + 1024)
        (255, 8, 0, 1),
        (64, 4, 232449, 0),  # over 227 KB per block: does not launch
    ],
)
def test_ctas_per_sm(registers, warps, shared, expected):
    assert gpu_model.ctas_per_sm(registers, warps, shared) == expected


def test_ctas_per_sm_rejects_bad_input():
    with pytest.raises(ValueError, match="warps"):
        gpu_model.ctas_per_sm(32, 0, 0)
    with pytest.raises(ValueError, match="registers"):
        gpu_model.ctas_per_sm(-1, 4, 0)


def test_floors():
    # 528 warps of 1000 instructions: one per scheduler, 1000 clocks
    issue, mufu, tensor, hbm = gpu_model.floors(1000, 528, {"mufu": 10}, 0.0, 3_350_000)
    assert issue == pytest.approx(1000 / 1.755e9 * 1e6)
    assert mufu == pytest.approx(10 * 528 * 32 / (132 * 16) / 1.755e9 * 1e6)
    assert hbm == pytest.approx(1.0)
    # a single warp cannot issue faster than one instruction per clock
    lone, *_ = gpu_model.floors(1000, 1, {}, 0.0, 0)
    assert lone == pytest.approx(issue)


def test_extent_bytes_counts_storage_once():
    base = torch.zeros(4, 8)
    assert extent_bytes([base]) == 128
    assert extent_bytes([base, base[1:3]]) == 128  # overlap merged
    assert extent_bytes([torch.zeros(8).expand(1000, 8)]) == 32  # broadcast: storage only
    assert extent_bytes([base[:, :2]]) == (1 + 3 * 8 + 1) * 4  # strided span


def test_spread_keeps_first_and_last():
    assert gpu_model._spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert gpu_model._spread([1, 2], 4) == [1, 2]


def test_json_is_written_atomically(tmp_path):
    row = gpu_model.OpRow("ssd", "B1", "statetap", "plain", floor_us=1.5)
    path = gpu_model.write_json([row], {"target": "sm_90"}, tmp_path / "m.json")
    assert json.loads(path.read_text())["rows"][0]["floor_us"] == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


_CAPTURE = """
import json, os, sys
os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, {bench!r})
import torch, triton, triton.language as tl
from gpu_model_capture import capture

@triton.jit
def toy(x_ptr, one, thirty_two, seventeen, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), one + thirty_two + seventeen)

@triton.autotune(configs=[triton.Config({{"BLOCK": b}}, num_warps=w) for b, w in
                          ((16, 1), (32, 2), (64, 4))], key=["n"])
@triton.jit
def tuned(x_ptr, n, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), n)

x = torch.empty(256)
with capture() as cap:
    toy[(3,)](x, 1, 32, 17, BLOCK=16)
    toy[(3,)](x[1:], 1, 32, 17, BLOCK=16)
    tuned[lambda meta: (256 // meta["BLOCK"],)](x, 100)
out = []
for launch in cap.launches:
    for alt in launch.alternatives:
        s = alt.spec
        out.append(dict(kernel=launch.kernel, signature=s.signature,
                        constexprs={{k: v for k, v in s.constexprs.items()}},
                        aligned=sorted(s.aligned), grid=alt.grid, warps=s.num_warps,
                        bytes=launch.bytes))
print(json.dumps(out))
"""


def test_capture_gives_the_runtime_specialisation(tmp_path):
    script = tmp_path / "capture_toy.py"
    script.write_text(textwrap.dedent(_CAPTURE.format(bench=str(BENCH))))
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONSAFEPATH="1")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    aligned, misaligned, *tuned = json.loads(proc.stdout.strip().splitlines()[-1])
    # 1 -> constexpr 1; 32 -> i32 marked divisible; 17 -> plain i32; aligned pointer divisible
    assert aligned["constexprs"] == {"one": 1, "BLOCK": 16}
    assert aligned["signature"] == {"x_ptr": "*fp32", "thirty_two": "i32", "seventeen": "i32"}
    assert aligned["aligned"] == ["thirty_two", "x_ptr"]
    assert misaligned["aligned"] == ["thirty_two"]  # x[1:] is 4 bytes off 16
    assert aligned["grid"] == [3, 1, 1] and aligned["bytes"] == 1024
    # every autotune config is an alternative of one launch, with its own grid and warps
    assert [(t["constexprs"]["BLOCK"], t["warps"], t["grid"][0]) for t in tuned] == [
        (16, 1, 16),
        (32, 2, 8),
        (64, 4, 4),
    ]
