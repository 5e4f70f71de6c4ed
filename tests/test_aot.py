"""The ahead-of-time compile harness (statetap.kernels._aot), proved on a small kernel of its own.

The kernel is a first-order linear recurrence over a block of channels,
``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1}`` = ``h0`` (``HAS_INITIAL``) or zeros. It runs under
the Triton interpreter against a torch loop, and is compiled for sm_80 and sm_90 with no GPU.
Run with ``-s`` to see the resource table.
"""

import os

import pytest
import torch
import triton
import triton.language as tl

from statetap.kernels import _aot

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"


@triton.jit
def _linear_recurrence_kernel(
    a_ptr,  # [B, L, C]
    b_ptr,  # [B, L, C]
    h0_ptr,  # [B, C]
    out_ptr,  # [B, L, C]
    ht_ptr,  # [B, C]
    L,
    C,
    HAS_INITIAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs = pid_c * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C
    seq = pid_b.to(tl.int64) * L * C
    if HAS_INITIAL:
        h = tl.load(h0_ptr + pid_b * C + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(0, L):
        a = tl.load(a_ptr + seq + t * C + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + seq + t * C + offs, mask=mask, other=0.0).to(tl.float32)
        h = a * h + b
        tl.store(out_ptr + seq + t * C + offs, h, mask=mask)
    tl.store(ht_ptr + pid_b * C + offs, h, mask=mask)


SIGNATURE = {
    "a_ptr": "*fp32",
    "b_ptr": "*fp32",
    "h0_ptr": "*fp32",
    "out_ptr": "*fp32",
    "ht_ptr": "*fp32",
    "L": "i32",
    "C": "i32",
}


def linear_recurrence(a, b, h0=None, block=64):
    """a, b: [B, L, C] float32; h0: [B, C] or None -> (out [B, L, C], final state [B, C])."""
    B, L, C = a.shape
    out = torch.full_like(a, float("nan"))
    ht = torch.full((B, C), float("nan"), dtype=a.dtype, device=a.device)
    grid = (triton.cdiv(C, block), B)
    _linear_recurrence_kernel[grid](
        a, b, out if h0 is None else h0, out, ht, L, C, HAS_INITIAL=h0 is not None, BLOCK=block
    )
    return out, ht


def linear_recurrence_ref(a, b, h0=None):
    a, b = a.double(), b.double()
    h = torch.zeros_like(a[:, 0]) if h0 is None else h0.double()
    out = torch.empty_like(a)
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out, h


@pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("has_initial", [False, True], ids=["zeros", "h0"])
def test_kernel_matches_torch_loop(has_initial):
    seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator().manual_seed(seed)
    B, L, C = 3, 37, 67  # odd sizes: the second channel block is partly masked
    a = torch.rand(B, L, C, generator=g) * 0.5 + 0.5
    b = torch.randn(B, L, C, generator=g)
    h0 = torch.randn(B, C, generator=g) if has_initial else None

    out, ht = linear_recurrence(a.to(DEVICE), b.to(DEVICE), None if h0 is None else h0.to(DEVICE))
    out, ht = out.cpu(), ht.cpu()
    ref_out, ref_ht = linear_recurrence_ref(a, b, h0)

    assert not out.isnan().any() and not ht.isnan().any(), f"unwritten outputs (seed {seed})"
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")
    torch.testing.assert_close(ht.double(), ref_ht, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


def test_compiles_for_sm80_sm90_without_spills():
    specs = [
        _aot.KernelSpec(
            _linear_recurrence_kernel,
            SIGNATURE,
            {"HAS_INITIAL": has_initial, "BLOCK": 256},
            num_warps=4,
            num_stages=2,
        )
        for has_initial in (False, True)
    ]
    stats = _aot.compile_specs(specs, targets=(80, 90))
    print("\n" + _aot.format_table(stats))

    assert [(s.specialisation.split(" ")[0], s.cc) for s in stats] == [
        ("HAS_INITIAL=False", 80),
        ("HAS_INITIAL=False", 90),
        ("HAS_INITIAL=True", 80),
        ("HAS_INITIAL=True", 90),
    ]
    assert {s.kernel for s in stats} == {"_linear_recurrence_kernel"}
    assert [s.target for s in stats[:2]] == ["sm_80", "sm_90a"]
    for s in stats:
        assert 0 < s.registers <= 255, s
        assert s.shared >= 0 and s.num_warps == 4
    _aot.assert_no_spills(stats)
    _aot.assert_shared_fits(stats)


def test_spilling_specialisation_is_reported():
    # 1024 channels on one warp = 32 live fp32 values per thread, capped at 32 registers.
    stats = _aot.compile_kernel(
        _linear_recurrence_kernel,
        SIGNATURE,
        {"HAS_INITIAL": True, "BLOCK": 1024},
        num_warps=1,
        num_stages=1,
        options={"maxnreg": 32},
        targets=(80,),
    )
    print("\n" + _aot.format_table(stats))
    (s,) = stats
    assert s.spills and s.spill_stores > 0 and s.spill_loads > 0
    assert s.registers <= 32
    assert "maxnreg=32" in s.specialisation
    with pytest.raises(AssertionError, match="register spills"):
        _aot.assert_no_spills(stats)


PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for helper
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'big_kernel' for 'sm_80'
ptxas info    : Function properties for big_kernel
    464 bytes stack frame, 604 bytes spill stores, 612 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 464 bytes cumulative stack size, \
408 bytes cmem[0], 1024 bytes smem
ptxas info    : Compile time = 36.571 ms
ptxas info    : Compiling entry function 'small_kernel' for 'sm_90a'
ptxas info    : Function properties for small_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 23 registers, used 0 barriers
ptxas warning : Registers are spilled to local memory in function 'other', \
16 bytes spill stores, 12 bytes spill loads
"""


def test_parse_ptxas_output():
    info = _aot.parse_ptxas_output(PTXAS_LOG)
    assert info["big_kernel"] == _aot.PtxasInfo(
        registers=32, spill_stores=604, spill_loads=612, stack=464, shared=1024
    )
    assert info["small_kernel"] == _aot.PtxasInfo(registers=23)
    assert info["helper"] == _aot.PtxasInfo(spill_stores=4, spill_loads=4, stack=8)
    assert info["other"] == _aot.PtxasInfo(spill_stores=16, spill_loads=12)


def test_table_and_checks_on_given_stats():
    ok = _aot.KernelStats("k", "BLOCK=64 | warps=4 stages=2", 90, "sm_90a", 40, 0, 0, 0, 0, 4, "x")
    spill = _aot.KernelStats("k", "BLOCK=8192 | warps=1", 80, "sm_80", 255, 8, 4, 8, 0, 1, "x")
    big = _aot.KernelStats("k", "BLOCK=64", 80, "sm_80", 40, 0, 0, 0, 300_000, 4, "x")
    table = _aot.format_table([ok, spill])
    assert table.splitlines()[0].split()[:4] == ["kernel", "specialisation", "sm", "regs"]
    assert "8/4" in table and "sm_90a" in table
    _aot.assert_no_spills([ok, big])
    with pytest.raises(AssertionError, match="BLOCK=8192"):
        _aot.assert_no_spills([ok, spill])
    with pytest.raises(AssertionError, match="shared memory"):
        _aot.assert_shared_fits([ok, big])


def test_signature_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="signature lacks arguments"):
        _aot.compile_kernel(_linear_recurrence_kernel, {"a_ptr": "*fp32"}, {"BLOCK": 64})
    with pytest.raises(ValueError, match="without a value"):
        _aot.compile_kernel(
            _linear_recurrence_kernel, {**SIGNATURE, "BLOCK": "constexpr"}, {"HAS_INITIAL": True}
        )
    with pytest.raises(ValueError, match="unknown arguments"):
        _aot.compile_kernel(
            _linear_recurrence_kernel, {**SIGNATURE, "nope": "i32"}, {"HAS_INITIAL": 1, "BLOCK": 64}
        )
