"""Every Mamba Triton kernel (selective scan, SSD, decode steps) compiles ahead of time for sm_80
and sm_90 with no register spills, in every specialisation it ships with; ``-s`` prints the
table of registers and shared memory.  Block sizes are the ones the wrappers pick on a GPU for
the model shapes of ``benchmarks/bench_mamba.py``."""

from __future__ import annotations

import inspect

import triton.language as tl

from statetap.kernels import _aot
from statetap.kernels.selective_scan import fused_recurrent, step
from statetap.kernels.ssd import chunk

FLOAT_INPUTS = ("u_ptr", "delta_ptr", "x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")
FLOAT_SCALARS = ("dt_low", "dt_high")
INT_POINTERS = ("emit_t_ptr", "emit_s_ptr", "inj_t_ptr", "inj_s_ptr", "reset_t_ptr")


def signature(kernel, dtype: str) -> dict[str, str]:
    """Triton types of ``kernel``'s runtime arguments: activations (``FLOAT_INPUTS``) in
    ``dtype``, schedules int32, other pointers fp32, integers i32."""
    raw = getattr(kernel, "fn", kernel)
    types = {}
    for name, param in inspect.signature(raw).parameters.items():
        if "constexpr" in str(param.annotation):
            continue
        if name in FLOAT_INPUTS:
            types[name] = f"*{dtype}"
        elif name in INT_POINTERS:
            types[name] = "*i32"
        elif name.endswith("_ptr"):
            types[name] = "*fp32"
        elif name in FLOAT_SCALARS:
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


PLAIN = dict(HAS_EMIT=False, HAS_INJECT=False, INJECT_SET=False, HAS_SCALE=False)
EMIT = dict(PLAIN, HAS_EMIT=True)
ADD = dict(HAS_EMIT=True, HAS_INJECT=True, INJECT_SET=False, HAS_SCALE=True)
SET = dict(HAS_EMIT=True, HAS_INJECT=True, INJECT_SET=True, HAS_SCALE=False)


def scan_specs() -> list[_aot.KernelSpec]:
    """Mamba-2.8B (D = 5120, N = 16, B and C per token, G = 1, bf16) and a grouped N = 64."""
    specs = []
    for n, one_group, label in ((16, True, "N16"), (64, False, "N64 grouped")):
        block_d, block_n, warps = fused_recurrent.block_sizes(5120, n, interpreter=False)
        model = dict(
            B_VARYING=True,
            C_VARYING=True,
            ONE_GROUP=one_group,
            HAS_D=True,
            HAS_Z=True,
            HAS_BIAS=True,
            SOFTPLUS=True,
            BLOCK_D=block_d,
            BLOCK_N=block_n,
        )
        for name, flags, state in (
            ("plain", PLAIN, dict(HAS_INITIAL=False, STORE_FINAL=False)),
            ("emit", EMIT, dict(HAS_INITIAL=False, STORE_FINAL=True)),
            ("inject add+scale", ADD, dict(HAS_INITIAL=True, STORE_FINAL=True)),
            ("inject set", SET, dict(HAS_INITIAL=True, STORE_FINAL=True)),
        ):
            specs.append(
                _aot.KernelSpec(
                    fused_recurrent._selective_scan_fwd_kernel,
                    signature(fused_recurrent._selective_scan_fwd_kernel, "bf16"),
                    {**model, **flags, **state},
                    num_warps=warps,
                    num_stages=fused_recurrent.NUM_STAGES,
                    label=f"{label} {name} BLOCK_D={block_d}",
                )
            )
    return specs


def step_specs() -> list[_aot.KernelSpec]:
    """Decode steps: Mamba-2.8B (one head of P = 5120 rows, N = 16) and Mamba-2 2.7B
    (P = 64, N = 128, dt_limit clamp)."""
    specs = []
    for p, n, label in ((5120, 16, "mamba1 N16"), (64, 128, "mamba2 N128")):
        block_p, block_n, warps = step.block_sizes(p, n, interpreter=False)
        model = dict(
            HAS_D=True,
            HAS_Z=True,
            HAS_BIAS=True,
            SOFTPLUS=True,
            HAS_LIMIT=n == 128,
            BLOCK_P=block_p,
            BLOCK_N=block_n,
        )
        for name, flags in (("plain", PLAIN), ("emit", EMIT), ("inject add", ADD), ("set", SET)):
            specs.append(
                _aot.KernelSpec(
                    step._state_update_kernel,
                    signature(step._state_update_kernel, "bf16"),
                    {**model, **flags},
                    num_warps=warps,
                    num_stages=1,
                    label=f"{label} {name} BLOCK_P={block_p}",
                )
            )
    return specs


def ssd_specs() -> list[_aot.KernelSpec]:
    """Mamba-2 2.7B (H = 80, P = 64, N = 128, chunk 256) and N = 64, bf16 on tensor cores."""
    plain_state = dict(HAS_INITIAL=False, STORE_FINAL=False, HAS_RESET=False)
    full_state = dict(HAS_INITIAL=True, STORE_FINAL=True, HAS_RESET=True)
    specs = []
    for n in (128, 64):
        block_t, block_p, block_n, warps = chunk.block_sizes(64, n, 256, interpreter=False)
        model = dict(
            HAS_D=True,
            HAS_Z=True,
            HAS_BIAS=True,
            SOFTPLUS=True,
            HAS_LIMIT=False,
            IEEE=False,
            DOT_DTYPE=tl.bfloat16,
            BLOCK_T=block_t,
            BLOCK_P=block_p,
            BLOCK_N=block_n,
        )
        for name, flags, state in (
            ("plain", PLAIN, plain_state),
            ("emit", EMIT, plain_state),
            ("inject add+scale, seq_idx", ADD, full_state),
            ("inject set, seq_idx", SET, full_state),
        ):
            specs.append(
                _aot.KernelSpec(
                    chunk._ssd_fwd_kernel,
                    signature(chunk._ssd_fwd_kernel, "bf16"),
                    {**model, **flags, **state},
                    num_warps=warps,
                    num_stages=1,
                    label=f"{name} T={block_t} P={block_p} N={block_n}",
                )
            )
    return specs


def test_mamba_kernels_compile_for_sm80_sm90_without_spills():
    specs = scan_specs() + step_specs() + ssd_specs()
    stats = _aot.compile_specs(specs, targets=(80, 90))
    print("\n" + _aot.format_table(stats))
    assert len(stats) == 2 * len(specs)
    for s in stats:
        assert 0 < s.registers <= 255, s
    _aot.assert_no_spills(stats)
    _aot.assert_shared_fits(stats)


def test_signature_covers_every_runtime_argument():
    types = signature(fused_recurrent._selective_scan_fwd_kernel, "fp16")
    assert types["u_ptr"] == "*fp16" and types["emit_t_ptr"] == "*i32" and types["L"] == "i32"
    assert "BLOCK_D" not in types and tl.constexpr is not None
