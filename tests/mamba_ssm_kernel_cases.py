"""statetap's cpu kernels against mamba-ssm's own references: ``selective_scan_ref`` and
``selective_state_update_ref`` (Mamba-1), ``ssd_minimal_discrete`` (Mamba-2).

Run by ``tests/test_mamba_ssm.py`` in a separate process (importing mamba-ssm on a CPU machine
needs a stand-in ``selective_scan_cuda`` module).  An emission at ``t`` must be the peer's final
state on the prefix ``0..t``; an injection at ``t`` must be the peer's prefix state, edited,
with the peer continuing from it.  Each test runs the C++ kernels with the widest ISA of this CPU
and on their scalar path.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

try:
    import selective_scan_cuda  # noqa: F401  (the real extension, on a CUDA build)
except ImportError:
    sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")

from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete  # noqa: E402
from mamba_ssm.ops.selective_scan_interface import selective_scan_ref  # noqa: E402
from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref  # noqa: E402

from statetap.kernels import _cpu  # noqa: E402
from statetap.kernels.examples import rel_error  # noqa: E402
from statetap.kernels.selective_scan import selective_scan_cpu  # noqa: E402
from statetap.kernels.ssd import ssd_cpu  # noqa: E402

TOL = 2e-5  # float32 against float32: the two differ in summation order and exp


@pytest.fixture(autouse=True, params=["widest", "scalar"])
def isa(request, monkeypatch):
    if not _cpu.built():
        pytest.skip("statetap._C is not built")
    if request.param == "scalar":
        monkeypatch.setenv(_cpu.ISA_ENV, "scalar")


def close(theirs: torch.Tensor, ours: torch.Tensor) -> None:
    assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
    assert rel_error(theirs, ours) <= TOL, rel_error(theirs, ours)


# ------------------------------------------------------------------ Mamba-1


def mamba1_inputs(batch=2, dim=11, n=5, length=13, groups=1):
    """mamba-ssm's selective_scan layout: B and C per token ``[B, G, N, L]`` (``[B, N, L]`` for
    one group), with every optional input."""
    bc = (batch, groups, n, length) if groups > 1 else (batch, n, length)
    return dict(
        u=torch.randn(batch, dim, length),
        delta=torch.randn(batch, dim, length),
        A=-torch.rand(dim, n) - 0.1,
        B=torch.randn(bc),
        C=torch.randn(bc),
        D=torch.randn(dim),
        z=torch.randn(batch, dim, length),
        delta_bias=torch.randn(dim) * 0.5,
        delta_softplus=True,
    )


def prefix(inputs: dict, end: int) -> dict:
    """The Mamba-1 inputs restricted to tokens ``0 .. end-1``."""
    timed = ("u", "delta", "B", "C", "z")
    return {k: v[..., :end] if k in timed else v for k, v in inputs.items()}


@pytest.mark.parametrize("groups", [1, 2])
def test_selective_scan_matches_selective_scan_ref(groups):
    inputs = mamba1_inputs(dim=12, groups=groups)
    y, last = selective_scan_ref(**inputs, return_last_state=True)
    ours = selective_scan_cpu(**inputs, output_final_state=True)
    close(y, ours.y)
    close(last, ours.final_state)


def test_selective_scan_emission_is_the_peers_prefix_state():
    inputs = mamba1_inputs()
    times = [0, 6, 12]
    ours = selective_scan_cpu(**inputs, emit_at=torch.tensor(times))
    for slot, t in enumerate(times):
        _, last = selective_scan_ref(**prefix(inputs, t + 1), return_last_state=True)
        close(last, ours.states[:, slot])


@pytest.mark.parametrize("mode", ["add", "set"])
def test_selective_scan_injection_is_editing_the_peers_state(mode):
    inputs, t = mamba1_inputs(), 5
    length = inputs["u"].shape[-1]
    _, state = selective_scan_ref(**prefix(inputs, t + 1), return_last_state=True)
    value, scale = torch.randn_like(state), torch.tensor([0.5, -2.0])
    edited = state + scale[:, None, None] * value if mode == "add" else value
    ours = selective_scan_cpu(
        **inputs,
        inject_at=torch.tensor([t]),
        inject_value=value[:, None],
        inject_mode=mode,
        inject_scale=scale if mode == "add" else None,
        output_final_state=True,
    )
    state = edited.clone()
    for i in range(t + 1, length):  # the peer's own decode step from the edited state
        y_i = selective_state_update_ref(
            state,
            inputs["u"][..., i],
            inputs["delta"][..., i],
            inputs["A"],
            inputs["B"][..., i],
            inputs["C"][..., i],
            D=inputs["D"],
            z=inputs["z"][..., i],
            dt_bias=inputs["delta_bias"],
            dt_softplus=True,
        )
        close(y_i, ours.y[..., i])
    close(state, ours.final_state)


# ------------------------------------------------------------------ Mamba-2


def mamba2_inputs(batch=2, length=12, heads=4, head_dim=6, groups=2, n=7):
    """statetap's ssd inputs (``dt`` already positive: no softplus) and what
    ``ssd_minimal_discrete`` takes for them: ``X = x dt``, ``A = A dt``, B and C per head."""
    x, dt = torch.randn(batch, length, heads, head_dim), torch.rand(batch, length, heads) + 0.05
    A = -torch.rand(heads) - 0.1
    B, C = torch.randn(batch, length, groups, n), torch.randn(batch, length, groups, n)
    per_head = heads // groups
    peer = dict(
        X=x * dt[..., None],
        A=A * dt,
        B=B.repeat_interleave(per_head, dim=2),
        C=C.repeat_interleave(per_head, dim=2),
    )
    return dict(x=x, dt=dt, A=A, B=B, C=C), peer


def peer_span(peer: dict, start: int, end: int, initial=None):
    """``ssd_minimal_discrete`` on tokens ``start .. end-1`` (one chunk) from ``initial``."""
    span = {k: v[:, start:end] for k, v in peer.items()}
    initial = None if initial is None else initial[:, None]
    return ssd_minimal_discrete(**span, block_len=end - start, initial_states=initial)


def test_ssd_matches_ssd_minimal_discrete():
    ours_in, peer = mamba2_inputs()
    y, final = ssd_minimal_discrete(**peer, block_len=4)
    ours = ssd_cpu(**ours_in, output_final_state=True)
    close(y, ours.y)
    close(final, ours.final_state)


def test_ssd_emission_is_the_peers_prefix_state():
    ours_in, peer = mamba2_inputs(length=9)
    times = [0, 4, 8]
    ours = ssd_cpu(**ours_in, emit_at=torch.tensor(times))
    for slot, t in enumerate(times):
        _, final = peer_span(peer, 0, t + 1)
        close(final, ours.states[:, slot])


@pytest.mark.parametrize("mode", ["add", "set"])
def test_ssd_injection_is_editing_the_peers_state(mode):
    ours_in, peer = mamba2_inputs(length=11)
    t, length = 3, 11
    _, state = peer_span(peer, 0, t + 1)
    value, scale = torch.randn_like(state), torch.tensor([1.5, -0.5])
    edited = state + scale[:, None, None, None] * value if mode == "add" else value
    ours = ssd_cpu(
        **ours_in,
        inject_at=torch.tensor([t]),
        inject_value=value[:, None],
        inject_mode=mode,
        inject_scale=scale if mode == "add" else None,
        output_final_state=True,
    )
    y_rest, final = peer_span(peer, t + 1, length, initial=edited)
    close(y_rest, ours.y[:, t + 1 :])
    close(final, ours.final_state)
