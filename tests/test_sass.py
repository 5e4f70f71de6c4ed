"""SASS analysis (``statetap.kernels._sass``): parsing, loops, classes, dynamic counts; and one
real kernel compiled for sm_90 with its SASS (no GPU needed)."""

from __future__ import annotations

import pytest
import triton
import triton.language as tl

from statetap.kernels import _aot, _sass

# A loop (header .L_x_0) whose body holds a conditional block (.L_x_1 skipped when P1), a
# predicated EXIT, and the unreachable trailing self-branch nvdisasm always prints.
SASS = """
.text.toy:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   MUFU.EX2 R2, R3 ;
.L_x_0:
        /*0020*/                   FFMA R4, R5, R6, R4 ;
        /*0030*/                   SHFL.BFLY PT, R7, R4, 0x1, 0x1f ;
        /*0040*/              @P1 BRA `(.L_x_1) ;
        /*0050*/                   MUFU.EX2 R8, R4 ;
        /*0060*/                   STG.E [R2.64], R8 ;
.L_x_1:
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0090*/                   ISETP.GE.AND P0, PT, R9, c[0x0][0x1a0], PT ;
        /*00a0*/              @!P0 BRA `(.L_x_0) ;
        /*00b0*/                   EXIT ;
.L_x_2:
        /*00c0*/                   BRA `(.L_x_2);
"""


def test_blocks_loops_and_the_conditional_block():
    kernel = _sass.analyse(SASS)
    assert kernel.name == "toy"
    assert kernel.structure() == "[loop@0x0020]"
    (loop,) = kernel.loops
    assert loop.always == {"fp32": 1, "shfl": 1, "other": 3, "bar": 1, "mma": 1}
    assert loop.conditional == {"mufu": 1, "gmem": 1}
    assert kernel.outside == {"other": 2, "mufu": 1}  # MOV, EXIT, MUFU; not the dead BRA
    assert loop.always_flops == 4096


def test_dynamic_count_multiplies_by_trips_and_the_conditional_fraction():
    kernel = _sass.analyse(SASS)
    count = _sass.dynamic_count(kernel, [_sass.LoopSpec(trips=10, conditional=0.5)])
    assert count.counts["fp32"] == 10
    assert count.counts["mufu"] == 1 + 10 * 0.5
    assert count.counts["gmem"] == 5
    assert count.total == 2 + 1 + 10 * 7 + 10 * 0.5 * 2
    assert count.flops == 10 * 4096


def test_a_loop_nest_that_differs_from_the_spec_raises():
    kernel = _sass.analyse(SASS)
    with pytest.raises(_sass.LoopStructureError, match=r"loop nest \[loop\].*\[loop loop\]"):
        _sass.dynamic_count(kernel, [_sass.LoopSpec(2), _sass.LoopSpec(3)])
    with pytest.raises(_sass.LoopStructureError):
        _sass.dynamic_count(kernel, [_sass.LoopSpec(2, children=(_sass.LoopSpec(4),))])


def test_classes_and_flops():
    assert _sass.classify("FFMA.FTZ") == "fp32"
    assert _sass.classify("LDGSTS.E.BYPASS.128") == "gmem"
    assert _sass.classify("HGMMA.64x64x16.F32.BF16") == "gmma"
    assert _sass.classify("IMAD.WIDE") == "other"
    assert _sass.mma_flops("HMMA.1688.F32.TF32") == 2 * 16 * 8 * 8
    assert _sass.mma_flops("HGMMA.64x128x16.F32.BF16") == 2 * 64 * 128 * 16 // 4
    assert _sass.mma_flops("FFMA") == 0
    with pytest.raises(TypeError):
        _sass.classify("")


def test_bad_input():
    with pytest.raises(ValueError, match="expected one function"):
        _sass.analyse("nothing here")
    with pytest.raises(ValueError, match="trips"):
        _sass.LoopSpec(trips=-1)
    with pytest.raises(ValueError, match="conditional"):
        _sass.LoopSpec(trips=1, conditional=2.0)
    with pytest.raises(TypeError):
        _sass.disassemble(b"")


@triton.jit
def _exp2_loop(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(n):
        acc += tl.exp2(tl.load(x_ptr + i * BLOCK + offs))
    tl.store(y_ptr + offs, acc)


def test_a_compiled_loop_is_found_with_one_mufu_per_exp2_element():
    spec = _aot.KernelSpec(
        fn=_exp2_loop,
        signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"},
        constexprs={"BLOCK": 128},
        num_warps=4,
        num_stages=1,
    )
    (stats,) = _aot.compile_specs([spec], [90], sass=True)
    kernel = _sass.analyse(stats.sass)
    loops = [loop for _, loop in kernel.walk()]
    assert loops, kernel.describe()
    # 128 elements over 4 warps x 32 lanes: one element per thread and iteration, so one
    # MUFU.EX2 and one FADD per source iteration, however often ptxas unrolled the loop (it
    # unrolls this one 4x and keeps a remainder loop)
    for loop in loops:
        assert loop.always["mufu"] >= 1 and loop.always["mufu"] == loop.always["fp32"]
        assert loop.always["gmem"] == loop.always["mufu"]
    unroll = loops[0].always["mufu"]
    specs = [_sass.LoopSpec(trips=1000 // unroll)] + [_sass.LoopSpec(trips=0)] * (len(loops) - 1)
    per_warp = _sass.dynamic_count(kernel, specs)
    assert 1000 <= per_warp.counts["mufu"] <= 1000 + kernel.outside["mufu"]
    if len(loops) > 1:  # the unrolled structure is seen, and a spec for one loop is refused
        with pytest.raises(_sass.LoopStructureError):
            _sass.dynamic_count(kernel, [_sass.LoopSpec(trips=1000)])
