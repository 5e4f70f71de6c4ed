"""Every RWKV Triton kernel and specialisation compiles ahead of time for sm_80 and sm_90 with no
register spills.  One child compile for the whole module; ``-s`` prints the resource table."""

from __future__ import annotations

from statetap.kernels import _aot
from statetap.kernels.wkv4.fused_recurrent import BLOCK_C, wkv4_recurrent_kernel
from statetap.kernels.wkv4.reference import EMPTY_MAX
from statetap.kernels.wkv6.chunk import (
    CHUNK,
    PRECISION,
    STAGES,
    chunk_blocks,
    wkv6_chunk_kernel,
)
from statetap.kernels.wkv6.fused_recurrent import recurrent_blocks, wkv6_recurrent_kernel
from statetap.kernels.wkv7 import chunk as wkv7_chunk
from statetap.kernels.wkv7.fused_recurrent import wkv7_recurrent_kernel

INSTRUMENT_POINTERS = ("s0_ptr", "sT_ptr", "states_ptr", "inj_v_ptr", "inj_scale_ptr")
SCHEDULES = ("emit_t_ptr", "emit_s_ptr", "inj_t_ptr", "inj_s_ptr")
FLAGS = ("HAS_INITIAL", "STORE_FINAL", "HAS_EMIT", "HAS_INJECT", "INJECT_SET", "HAS_SCALE")
PLAIN = dict.fromkeys(FLAGS, False)
ADD = dict.fromkeys(FLAGS, True) | dict(INJECT_SET=False)
SET = dict(ADD, INJECT_SET=True, HAS_SCALE=False)


def signature(inputs, dtype, ints):
    """``*dtype`` input pointers, fp32 state pointers, int32 schedules, ``i32`` sizes."""
    sig = {name: f"*{dtype}" for name in inputs}
    sig |= dict.fromkeys(INSTRUMENT_POINTERS, "*fp32") | dict.fromkeys(SCHEDULES, "*i32")
    return sig | {"scale": "fp32"} | dict.fromkeys(ints, "i32")


VALUE_STRIDES = ("iv_sb", "iv_sq", "iv_sh", "iv_sk", "iv_sv")
WKV6_SIG = dict(
    inputs=("r_ptr", "k_ptr", "v_ptr", "w_ptr", "u_ptr", "y_ptr"),
    ints=("L", "H", "K", "V", "P", "Q", "w_sb", "w_st", *VALUE_STRIDES),
)


def wkv6_specs():
    """Recurrent at K = 64 and 128, chunked at K = 32 and 64: plain, add (+ scale, initial,
    final, emit) in fp32, set (+ emit) in bf16."""
    specs = []
    for flags, dtype in ((PLAIN, "fp32"), (ADD, "fp32"), (SET, "bf16")):
        sig = signature(dtype=dtype, **WKV6_SIG)
        for key_dim in (64, 128):
            bk, bv, warps = recurrent_blocks(key_dim, key_dim)
            constexprs = dict(flags, BK=bk, BV=bv)
            specs.append(_aot.KernelSpec(wkv6_recurrent_kernel, sig, constexprs, num_warps=warps))
        for key_dim in (32, 64):
            bk, bv, warps = chunk_blocks(key_dim, key_dim)
            constexprs = dict(flags, BK=bk, BV=bv, BT=CHUNK, PRECISION=PRECISION)
            specs.append(
                _aot.KernelSpec(
                    wkv6_chunk_kernel, sig, constexprs, num_warps=warps, num_stages=STAGES
                )
            )
    return specs


WKV7_SIG = dict(
    inputs=("r_ptr", "w_ptr", "k_ptr", "v_ptr", "a_ptr", "b_ptr", "y_ptr"),
    ints=("L", "H", "K", "V", "P", "Q", *VALUE_STRIDES),
)
WKV4_SIG = dict(
    inputs=("w_ptr", "u_ptr", "k_ptr", "v_ptr", "y_ptr"),
    ints=("L", "C", "P", "Q", "iv_sb", "iv_sq", "iv_sr", "iv_sc"),
)


def wkv7_wkv4_specs():
    """RWKV-7 recurrent at K = 64 and 128, chunked at K = 16, 32 and 64; RWKV-4: plain, add (fp32),
    set (bf16)."""
    specs = []
    for flags, dtype in ((PLAIN, "fp32"), (ADD, "fp32"), (SET, "bf16")):
        sig = signature(dtype=dtype, **WKV7_SIG)
        for key_dim in (64, 128):
            bk, bv, warps = recurrent_blocks(key_dim, key_dim)
            constexprs = dict(flags, BK=bk, BV=bv)
            specs.append(_aot.KernelSpec(wkv7_recurrent_kernel, sig, constexprs, num_warps=warps))
        for key_dim in (16, 32, 64):
            bk, bv, warps = wkv7_chunk.chunk_blocks(key_dim, key_dim)
            constexprs = dict(flags, BK=bk, BV=bv, BT=CHUNK, PRECISION=wkv7_chunk.PRECISION)
            specs.append(
                _aot.KernelSpec(
                    wkv7_chunk.wkv7_chunk_kernel,
                    sig,
                    constexprs,
                    num_warps=warps,
                    num_stages=STAGES,
                )
            )
        sig = signature(dtype=dtype, **WKV4_SIG)
        sig.pop("scale")
        constexprs = dict(flags, BC=BLOCK_C, EMPTY=EMPTY_MAX)
        specs.append(_aot.KernelSpec(wkv4_recurrent_kernel, sig, constexprs, num_warps=4))
    return specs


def test_rwkv_kernels_compile_without_spills():
    specs = wkv6_specs() + wkv7_wkv4_specs()
    stats = _aot.compile_specs(specs, targets=(80, 90))
    print("\n" + _aot.format_table(stats))
    assert len(stats) == 2 * len(specs)
    _aot.assert_no_spills(stats)
    _aot.assert_shared_fits(stats)
