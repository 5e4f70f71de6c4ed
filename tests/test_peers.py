"""benchmarks/peers.py: the GPU benchmarks' peers import here, their autotuning is bounded as
stated, and the segment-chained baseline computes what the unsegmented peer and statetap's
emission compute (checked with the peers' own pure-torch recurrences on the CPU)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import peers  # noqa: E402


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.fixture(scope="module")
def mamba():
    return peers.mamba_triton()


@pytest.fixture(scope="module")
def fla():
    return peers.fla()


def test_mamba_triton_baselines_import_without_the_cuda_extension(mamba):
    if peers.cuda_extension_state() == "real":
        pytest.skip("mamba-ssm's CUDA extension is built here: nothing is stubbed")
    assert "stubbed" in mamba["note"]
    signature = inspect.signature(mamba["mamba_chunk_scan_combined"]).parameters
    assert {"initial_states", "return_final_states", "chunk_size"} <= set(signature)
    assert callable(mamba["selective_state_update"])
    with pytest.raises(peers.PeerUnavailable, match="selective_scan_cuda.fwd"):
        sys.modules["selective_scan_cuda"].fwd()
    with pytest.raises(peers.PeerUnavailable, match="compiled extension selective_scan_cuda"):
        peers.mamba_cuda_scan()


def test_fla_kernels_import_with_the_arguments_the_benchmark_passes(fla):
    for name in ("chunk_rwkv6", "fused_recurrent_rwkv6", "chunk_rwkv7"):
        params = set(inspect.signature(fla[name]).parameters)
        assert {"initial_state", "output_final_state", "scale"} <= params, name
    assert "lower_bound" in inspect.signature(fla["chunk_rwkv7"]).parameters
    from fla.ops.generalized_delta_rule.dplr.chunk import gate_bound_is_safe

    # the bound buys fla's 64-token tensor-core chunks (16-token chunks without it)
    assert gate_bound_is_safe(peers.RWKV7_LOWER_BOUND, 64)
    assert peers.RWKV7_LOWER_BOUND == pytest.approx(-torch.exp(torch.tensor(-0.5)).item())


def test_autotuning_is_bounded_to_each_kernels_first_config(mamba, fla):
    try:
        kept = peers.bound_autotuning("first")
        tuners = peers.autotuned_kernels()
        for module, kernels in peers.FORWARD_KERNELS.items():
            for kernel in kernels:
                name = f"{module}.{kernel}"
                assert name in kept, name
                tuner = tuners[name]
                assert tuner.configs == tuner._statetap_configs[:1]
                assert kept[name] == str(tuner._statetap_configs[0])
        assert all(len(t.configs) == 1 for t in tuners.values())
        assert any(len(t._statetap_configs) > 1 for t in tuners.values())
    finally:
        assert peers.bound_autotuning("full") == {}
    assert all(t.configs == t._statetap_configs for t in peers.autotuned_kernels().values())


def test_a_named_kernel_that_is_gone_is_an_error(monkeypatch):
    peers.mamba_triton()  # imported here: another test in this process may have dropped it
    monkeypatch.setitem(
        peers.FORWARD_KERNELS, "mamba_ssm.ops.triton.ssd_bmm", ("_renamed_fwd_kernel",)
    )
    with pytest.raises(peers.PeerUnavailable, match="_renamed_fwd_kernel is gone"):
        peers.bound_autotuning("first")
    with pytest.raises(ValueError, match="expected 'first' or 'full'"):
        peers.bound_autotuning("some")


def test_segment_ends():
    assert peers.segment_ends([0, 5, 9], 10) == [1, 6, 10]
    assert peers.segment_ends([3], 10) == [4, 10]
    assert peers.segment_ends([], 4) == [4]
    for bad in ([5, 3], [2, 2], [10], [-1]):
        with pytest.raises(ValueError, match="emission positions"):
            peers.segment_ends(bad, 10)


POINTS = [0, 6, 7, 15, 22]  # t = 0, neighbours, mid-sequence; L = 29 leaves a tail segment
LENGTH = 29


def _check_chain(ys, states, y_full, emitted, axis, tol=1e-5):
    """The chained outputs are the unsegmented output; the states at the emission points are
    statetap's emitted states (``emitted`` [B, P, ...])."""
    assert rel(torch.cat(ys, dim=axis), y_full) < tol
    for slot in range(len(POINTS)):
        assert rel(states[slot], emitted[:, slot]) < tol, slot


def test_chained_fla_rwkv6_recurrence_matches_unsegmented_and_statetap_emission():
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    from statetap.kernels.wkv6.reference import wkv6_sequential

    B, H, K = 2, 3, 8
    r, k, v = (torch.randn(B, LENGTH, H, K, dtype=torch.float64) for _ in range(3))
    w = F.logsigmoid(torch.randn(B, LENGTH, H, K, dtype=torch.float64))
    u = torch.randn(H, K, dtype=torch.float64)
    head_first = {n: t.transpose(1, 2) for n, t in dict(q=r, k=k, v=v, w=w).items()}

    def run(x, state):
        return naive_recurrent_rwkv6(**x, scale=1.0, initial_state=state, output_final_state=True)

    ends = peers.segment_ends(POINTS, LENGTH)
    ys, states = peers.chain_segments(run, head_first, {"u": u}, ends, axis=2)
    y_full, _ = run(head_first | {"u": u}, None)
    ours = wkv6_sequential(r, k, v, w, u, 1.0, emit_at=torch.tensor(POINTS))
    _check_chain(ys, states, y_full, ours.states, axis=2)
    assert rel(y_full.transpose(1, 2), ours.y) < 1e-5


def test_chained_fla_dplr_recurrence_matches_unsegmented_and_statetap_emission():
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

    from statetap.kernels.wkv7.reference import wkv7_sequential

    B, H, K = 2, 2, 8
    shape = (B, LENGTH, H, K)
    r, k, v = (torch.randn(shape, dtype=torch.float32) for _ in range(3))
    w = peers.RWKV7_LOWER_BOUND * torch.sigmoid(torch.randn(shape, dtype=torch.float32))
    kappa = F.normalize(torch.randn(shape, dtype=torch.float32), dim=-1)
    a, b = -kappa, kappa * 0.5
    # dplr_recurrence computes in float32 (it casts q, k, v, beta, gk but not alpha: all
    # float32 here); it scales q by K^-0.5 itself; chunk_rwkv7(scale=1) = q unscaled
    inputs = dict(q=r * K**0.5, k=k, v=v, alpha=a, beta=b, gk=w)
    head_first = {n: t.transpose(1, 2) for n, t in inputs.items()}

    def run(x, state):
        return dplr_recurrence(**x, initial_state=state, output_final_state=True)

    ends = peers.segment_ends(POINTS, LENGTH)
    ys, states = peers.chain_segments(run, head_first, {}, ends, axis=2)
    y_full, _ = run(head_first, None)
    ours = wkv7_sequential(r, w, k, v, a, b, 1.0, emit_at=torch.tensor(POINTS))
    _check_chain(ys, states, y_full, ours.states, axis=2, tol=1e-4)
    assert rel(y_full.transpose(1, 2), ours.y) < 1e-4


def test_chained_mamba_ssd_minimal_matches_unsegmented_and_statetap_emission(mamba):
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

    from statetap.kernels.ssd.reference import ssd_sequential

    B, H, P, N = 2, 3, 4, 5
    f64 = dict(dtype=torch.float64)
    x = torch.randn(B, LENGTH, H, P, **f64)
    dt = torch.rand(B, LENGTH, H, **f64) * 0.5
    A = -torch.rand(H, **f64)
    Bm, Cm = (torch.randn(B, LENGTH, 1, N, **f64) for _ in range(2))
    # ssd_minimal_discrete's discretised form: X = x dt, A dt, per-head B and C
    sequences = dict(
        X=x * dt[..., None], A=A * dt, B=Bm.expand(-1, -1, H, -1), C=Cm.expand(-1, -1, H, -1)
    )

    def run(piece, state):  # one block per segment; initial states [B, 1, H, P, N]
        initial = None if state is None else state[:, None]
        return ssd_minimal_discrete(**piece, block_len=piece["X"].shape[1], initial_states=initial)

    ends = peers.segment_ends(POINTS, LENGTH)
    ys, states = peers.chain_segments(run, sequences, {}, ends, axis=1)
    y_full, _ = run(sequences, None)
    ours = ssd_sequential(x, dt, A, Bm, Cm, emit_at=torch.tensor(POINTS))
    _check_chain(ys, states, y_full, ours.states, axis=1)
    assert rel(y_full, ours.y) < 1e-5
