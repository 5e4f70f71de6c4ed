"""Each reference reproduces an independent implementation on the same tensors (float32).

Mamba-1, Mamba-2 and RWKV-4 against transformers' own pure-torch paths; RWKV-5/6/7 against
loops written here from the published equations, in the official CUDA kernels' ``[V, K]``
state layout and multiplicative-decay parameterisation (so the layout and log-decay
conversions at our boundary are checked too).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from statetap import kernels
from statetap.kernels.examples import rel_error
from statetap.kernels.ssd.reference import ssd_chunked, ssd_sequential
from statetap.kernels.wkv5.reference import wkv5_chunked, wkv5_sequential
from statetap.kernels.wkv6.reference import wkv6_chunked, wkv6_sequential
from statetap.kernels.wkv7.reference import wkv7_chunked, wkv7_sequential

TOL = 1e-5


def assert_close(reference: torch.Tensor, value: torch.Tensor) -> None:
    assert reference.shape == value.shape, (reference.shape, value.shape)
    error = rel_error(reference, value)
    assert error <= TOL, f"relative error {error:.2e} > {TOL:.0e}"


# ---------------------------------------------------------------- Mamba-1
@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D-z-bias"])
def test_selective_scan_matches_transformers(length, extras):
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    batch, dim, state = 3, 10, 5
    u, delta = torch.randn(batch, dim, length), torch.randn(batch, dim, length)
    A = -torch.exp(torch.randn(dim, state))
    B, C = torch.randn(batch, state, length), torch.randn(batch, state, length)
    opts = dict(delta_softplus=True)
    if extras:
        opts |= dict(
            D=torch.randn(dim), z=torch.randn(batch, dim, length), delta_bias=torch.randn(dim)
        )
    theirs, their_state = mamba_selective_scan(u, delta, A, B, C, return_last_state=True, **opts)
    ours = kernels.selective_scan(u, delta, A, B, C, output_final_state=True, **opts)
    assert_close(theirs, ours.y)
    assert_close(their_state, ours.final_state)


def test_selective_scan_shared_and_grouped_B_C():
    """``[D, N]`` shared and ``[B, G, N, L]`` grouped B/C equal the expanded per-token form."""
    batch, dim, state, length, groups = 2, 6, 3, 9, 3
    u, delta = torch.randn(batch, dim, length), torch.randn(batch, dim, length)
    A = -torch.exp(torch.randn(dim, state))
    shared = torch.randn(dim, state)
    grouped = torch.randn(batch, groups, state, length)
    per_channel = grouped.repeat_interleave(dim // groups, dim=1)  # [B, D, N, L]
    # softplus makes every time step positive, as in the models: a negative step grows the
    # state by exp(|delta * A|) per token and overflowed to nan at some seeds (564378001)
    opts = dict(delta_softplus=True, output_final_state=True)
    out = kernels.selective_scan(u, delta, A, shared, grouped, **opts)
    # One channel at a time: with G = 1 and B constant in time, channel d sees its own row.
    for d in range(dim):
        single = kernels.selective_scan(
            u[:, d : d + 1],
            delta[:, d : d + 1],
            A[d : d + 1],
            shared[d].view(1, 1, state, 1).expand(batch, 1, state, length),
            per_channel[:, d : d + 1],
            **opts,
        )
        assert_close(single.y[:, 0], out.y[:, d])
        assert_close(single.final_state[:, 0], out.final_state[:, d])


# ---------------------------------------------------------------- Mamba-2
@pytest.mark.parametrize("form", [ssd_sequential, ssd_chunked], ids=["sequential", "chunked"])
@pytest.mark.parametrize("length,chunk", [(1, 4), (9, 4), (16, 8), (21, 16)])
def test_ssd_matches_transformers(form, length, chunk):
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    batch, heads, head_dim, groups, state = 2, 4, 3, 2, 5
    x, dt = torch.randn(batch, length, heads, head_dim), torch.randn(batch, length, heads)
    A = -torch.exp(torch.randn(heads))
    B, C = torch.randn(batch, length, groups, state), torch.randn(batch, length, groups, state)
    opts = dict(
        D=torch.randn(heads),
        dt_bias=torch.randn(heads),
        dt_softplus=True,
        dt_limit=(0.05, 2.0),
        initial_states=torch.randn(batch, heads, head_dim, state),
    )
    theirs, their_state = mamba2_chunk_scan(x, dt, A, B, C, chunk, return_final_states=True, **opts)
    ours = form(x, dt, A, B, C, chunk, output_final_state=True, **opts)
    assert_close(theirs, ours.y)
    assert_close(their_state, ours.final_state)


def test_ssd_seq_idx_resets_between_packed_sequences():
    batch, heads, head_dim, state = 2, 2, 3, 4
    lengths = (5, 8)
    total = sum(lengths)
    x, dt = torch.randn(batch, total, heads, head_dim), torch.randn(batch, total, heads)
    A = -torch.exp(torch.randn(heads))
    B, C = torch.randn(batch, total, 1, state), torch.randn(batch, total, 1, state)
    seq_idx = torch.repeat_interleave(torch.arange(2), torch.tensor(lengths)).expand(batch, -1)
    for form in (ssd_sequential, ssd_chunked):
        packed = form(
            x,
            dt,
            A,
            B,
            C,
            4,
            seq_idx=seq_idx,
            dt_softplus=True,
            emit_at=torch.tensor([lengths[0] - 1]),
            output_final_state=True,
        )
        first = form(
            x[:, :5], dt[:, :5], A, B[:, :5], C[:, :5], 4, dt_softplus=True, output_final_state=True
        )
        second = form(
            x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], 4, dt_softplus=True, output_final_state=True
        )
        assert_close(torch.cat([first.y, second.y], 1), packed.y)
        assert_close(first.final_state, packed.states[:, 0])  # end of the first sequence
        assert_close(second.final_state, packed.final_state)


# ---------------------------------------------------------------- RWKV-4
@pytest.mark.parametrize("length", [1, 6, 40])
@pytest.mark.parametrize("with_state", [False, True])
def test_wkv4_matches_transformers(length, with_state):
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    batch, channels = 3, 8
    time_decay, time_first = torch.randn(channels), torch.randn(channels)
    key, value = torch.randn(batch, length, channels), torch.randn(batch, length, channels)
    state = None
    if with_state:
        state = [
            torch.randn(batch, channels),
            torch.rand(batch, channels) + 0.1,
            torch.randn(batch, channels),
        ]
    theirs, their_state = rwkv_linear_attention_cpu(
        time_decay,
        time_first,
        key,
        value,
        state=None if state is None else [s.clone() for s in state],
        return_state=True,
    )
    ours = kernels.wkv4(
        -torch.exp(time_decay),
        time_first,
        key,
        value,
        output_final_state=True,
        initial_state=None if state is None else torch.stack(state, 1),
    )
    assert_close(theirs, ours.y)
    assert_close(torch.stack(their_state, 1), ours.final_state)


# ---------------------------------------------------------------- RWKV-5/6/7, from the equations
def wkv6_cuda_loop(r, k, v, w_raw, u, state_vk):
    """Per head, state ``s[i, j]`` (i: value, j: key), decay ``exp(-exp(w_raw))`` as the RWKV-6
    CUDA kernel: ``y_i = sum_j r_j (u_j k_j v_i + s_ij)``; ``s_ij = s_ij w_j + k_j v_i``."""
    batch, length, heads, key_dim = r.shape
    s = state_vk.clone()
    out = torch.zeros(batch, length, heads, v.shape[-1])
    for t in range(length):
        decay = torch.exp(-torch.exp(w_raw[:, t]))  # [B, H, K]
        for i in range(v.shape[-1]):
            vi = v[:, t, :, i, None]  # [B, H, 1]
            out[:, t, :, i] = (r[:, t] * (u * k[:, t] * vi + s[:, :, i, :])).sum(-1)
            s[:, :, i, :] = s[:, :, i, :] * decay + k[:, t] * vi
    return out, s


def wkv7_cuda_loop(r, w_decay, k, v, a, b, state_vk):
    """Per head, ``s[i, j]`` (i: value, j: key), as the RWKV-7 CUDA kernel:
    ``sa_i = sum_j a_j s_ij``; ``s_ij = s_ij w_j + sa_i b_j + k_j v_i``;
    ``y_i = sum_j s_ij r_j``."""
    batch, length, heads, _ = r.shape
    s = state_vk.clone()
    out = torch.zeros(batch, length, heads, v.shape[-1])
    for t in range(length):
        for i in range(v.shape[-1]):
            sa = (a[:, t] * s[:, :, i, :]).sum(-1, keepdim=True)  # [B, H, 1]
            s[:, :, i, :] = (
                s[:, :, i, :] * w_decay[:, t] + sa * b[:, t] + k[:, t] * v[:, t, :, i, None]
            )
            out[:, t, :, i] = (s[:, :, i, :] * r[:, t]).sum(-1)
    return out, s


RWKV_SHAPES = [(1, 1, 16), (2, 15, 16), (2, 33, 32), (1, 65, 64)]  # (B, L, K=V)


@pytest.mark.parametrize("batch,length,size", RWKV_SHAPES, ids=lambda x: str(x))
@pytest.mark.parametrize("form", ["sequential", "chunked"])
def test_wkv6_matches_cuda_equations(batch, length, size, form):
    heads = 2
    r, k, v = (torch.randn(batch, length, heads, size) for _ in range(3))
    w_raw = torch.randn(batch, length, heads, size) - 1.0
    u = torch.randn(heads, size)
    state_vk = torch.randn(batch, heads, size, size)
    theirs, their_state = wkv6_cuda_loop(r, k, v, w_raw, u, state_vk)
    fn = wkv6_sequential if form == "sequential" else wkv6_chunked
    ours = fn(
        r,
        k,
        v,
        -torch.exp(w_raw),
        u,
        scale=1.0,
        initial_state=state_vk.transpose(-1, -2),
        output_final_state=True,
    )
    assert_close(theirs, ours.y)
    assert_close(their_state.transpose(-1, -2), ours.final_state)


@pytest.mark.parametrize("form", ["sequential", "chunked"])
def test_wkv5_matches_cuda_equations(form):
    batch, length, heads, size = 2, 19, 2, 16
    r, k, v = (torch.randn(batch, length, heads, size) for _ in range(3))
    time_decay, u = torch.randn(heads, size), torch.randn(heads, size)
    theirs, their_state = wkv6_cuda_loop(
        r,
        k,
        v,
        time_decay.expand(batch, length, heads, size),
        u,
        torch.zeros(batch, heads, size, size),
    )
    fn = wkv5_sequential if form == "sequential" else wkv5_chunked
    ours = fn(r, k, v, -torch.exp(time_decay), u, scale=1.0, output_final_state=True)
    assert_close(theirs, ours.y)
    assert_close(their_state.transpose(-1, -2), ours.final_state)


@pytest.mark.parametrize("batch,length,size", RWKV_SHAPES, ids=lambda x: str(x))
@pytest.mark.parametrize("form", ["sequential", "chunked"])
def test_wkv7_matches_cuda_equations(batch, length, size, form):
    heads = 2
    r, k, v = (torch.randn(batch, length, heads, size) for _ in range(3))
    w_decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(torch.randn(batch, length, heads, size)))
    kappa = F.normalize(torch.randn(batch, length, heads, size), dim=-1)
    iclr = torch.sigmoid(torch.randn(batch, length, heads, size))
    a, b = -kappa, kappa * iclr
    state_vk = torch.randn(batch, heads, size, size)
    theirs, their_state = wkv7_cuda_loop(r, w_decay, k, v, a, b, state_vk)
    fn = wkv7_sequential if form == "sequential" else wkv7_chunked
    ours = fn(
        r,
        torch.log(w_decay),
        k,
        v,
        a,
        b,
        initial_state=state_vk.transpose(-1, -2),
        output_final_state=True,
    )
    assert_close(theirs, ours.y)
    assert_close(their_state.transpose(-1, -2), ours.final_state)


def test_public_ops_dispatch_on_cpu(monkeypatch):
    from statetap.kernels import _cpu
    from statetap.kernels._backend import dispatching

    r, k, v = (torch.randn(1, 5, 2, 4) for _ in range(3))
    w, u = F.logsigmoid(torch.randn(1, 5, 2, 4)), torch.randn(2, 4)
    default = kernels.wkv6.implementations["cpu" if _cpu.built() else "torch"]
    assert torch.equal(kernels.wkv6(r, k, v, w, u).y, default(r, k, v, w, u).y)
    monkeypatch.setenv("STATETAP_BACKEND", "torch")
    assert torch.equal(kernels.wkv6(r, k, v, w, u).y, wkv6_chunked(r, k, v, w, u).y)
    monkeypatch.setenv("STATETAP_BACKEND", "cpu")
    only_torch = dispatching("wkv6", {"torch": wkv6_chunked})
    with pytest.raises(RuntimeError, match="wkv6 has no cpu implementation"):
        only_torch(r, k, v, w, u)
    monkeypatch.setenv("STATETAP_BACKEND", "gpu")
    with pytest.raises(ValueError, match="STATETAP_BACKEND='gpu' is not a backend"):
        kernels.wkv6(r, k, v, w, u)


def test_fused_backends_fall_back_to_the_reference_for_gradients(monkeypatch):
    from statetap.kernels._backend import dispatching

    calls = []

    def fused(*args, **kwargs):
        calls.append("fused")
        return wkv6_chunked(*args, **kwargs)

    op = dispatching("wkv6_probe", {"torch": wkv6_chunked, "cpu": fused})
    r, k, v = (torch.randn(1, 5, 2, 4) for _ in range(3))
    w, u = F.logsigmoid(torch.randn(1, 5, 2, 4)), torch.randn(2, 4)
    op(r, k, v, w, u)
    assert calls == ["fused"]
    r.requires_grad_(True)
    with pytest.warns(UserWarning, match="the cpu kernel is forward-only"):
        out = op(r, k, v, w, u)
    assert calls == ["fused"]  # the reference ran, and it is differentiable
    out.y.sum().backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


def _small_scan():
    u, delta = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    A, B, C = -torch.rand(6, 3), torch.randn(2, 1, 3, 5), torch.randn(2, 1, 3, 5)
    return u, delta, A, B, C


def test_cpu_tensors_run_the_cpu_kernels_where_built(monkeypatch):
    from statetap.kernels import _cpu
    from statetap.kernels._backend import choose_backend

    if not _cpu.built():
        pytest.skip("statetap._C is not built")
    calls = []
    real = kernels.selective_scan.implementations["cpu"]
    monkeypatch.setitem(
        kernels.selective_scan.implementations,
        "cpu",
        lambda *a, **k: calls.append("cpu") or real(*a, **k),
    )
    out = kernels.selective_scan(*_small_scan())
    assert calls == ["cpu"] and out.y.shape == (2, 6, 5)
    for op in ("selective_scan", "selective_scan_step", "ssd", "ssd_step"):
        public = getattr(kernels, op)
        assert choose_backend(op, torch.device("cpu"), public.implementations) == "cpu"


def test_without_the_extension_cpu_tensors_run_the_reference_with_one_notice(monkeypatch):
    import warnings

    from statetap.kernels import _cpu
    from statetap.kernels.selective_scan.reference import selective_scan

    monkeypatch.setattr(_cpu, "built", lambda: False)
    _cpu.notice_missing.cache_clear()
    inputs = _small_scan()
    with pytest.warns(UserWarning, match=r"statetap\._C\) are not built.*make venv"):
        out = kernels.selective_scan(*inputs)
    assert torch.equal(out.y, selective_scan(*inputs).y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second call is silent
        kernels.selective_scan(*inputs)
    monkeypatch.setenv("STATETAP_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match=r"STATETAP_BACKEND='cpu', but statetap\._C"):
        kernels.selective_scan(*inputs)
    _cpu.notice_missing.cache_clear()


def test_cpu_isa_is_chosen_at_run_time_and_can_be_forced(monkeypatch):
    from statetap.kernels import _cpu

    if not _cpu.built():
        pytest.skip("statetap._C is not built")
    assert _cpu.isa() in ("avx512", "avx2", "scalar")
    monkeypatch.setenv("STATETAP_CPU_ISA", "scalar")
    assert _cpu.isa() == "scalar"
    monkeypatch.setenv("STATETAP_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="STATETAP_CPU_ISA='?sse9'? is not an instruction set"):
        kernels.selective_scan(*_small_scan())
