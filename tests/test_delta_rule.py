"""``delta_rule`` (the gated delta rule of Qwen3-Next, OLMo-hybrid and Kimi Linear) and its decode
step, on every backend: against the float64 definition, transformers' own torch paths
(``torch_recurrent_gated_delta_rule`` / ``torch_chunk_gated_delta_rule`` of Qwen3-Next and
OLMo-hybrid, Kimi Linear's ``recurrent_kimi_delta_attention`` / ``chunk_kimi_delta_attention``)
and fla's naive recurrences (``naive_recurrent_gated_delta_rule``, ``naive_recurrent_kda``).

Emission is checked as the peer's final state on the prefix ``0..t``; injection as the peer
continuing from its edited prefix state.  Every output a fused wrapper allocates starts as NaN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _device import DEVICE, needs_kernel_device
from _triton_mamba import BACKENDS, implementation, poisoned  # noqa: F401  (fixture)
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.kda.naive import naive_recurrent_kda

from statetap import kernels
from statetap.check_references import torch_function
from statetap.kernels.delta_rule.reference import delta_rule_sequential
from statetap.kernels.examples import rel_error
from statetap.kernels.wkv7.chunk import CHUNK

ALL_BACKENDS = [pytest.param("torch"), *BACKENDS]
PEER_TOLERANCE = 1e-5  # the peers compute in float32 whatever their inputs
Y_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
STATE_TOLERANCE = 1e-5  # the state is float32 whatever the input dtype
QWEN3_NEXT = "transformers.models.qwen3_next.modeling_qwen3_next"
OLMO_HYBRID = "transformers.models.olmo_hybrid.modeling_olmo_hybrid"
KIMI_LINEAR = "transformers.models.kimi_linear.modeling_kimi_linear"
TIMED = ("query", "key", "value", "g", "beta")


def make(B, L, HK, HV, K, V, channel_gate, dtype=torch.float32, device="cpu", strength=1.0):
    """Model-like inputs: ``g = -exp(A_log) softplus(.)`` (times ``strength``: 20 gives gates
    down to ``exp(-100)``), ``beta = sigmoid(.)``; ``g`` ``[B, L, HV, K]`` with ``channel_gate``
    (Kimi Linear), else ``[B, L, HV]``."""
    gate = (B, L, HV, K) if channel_gate else (B, L, HV)
    values = dict(
        query=torch.randn(B, L, HK, K),
        key=torch.randn(B, L, HK, K),
        value=torch.randn(B, L, HV, V),
        g=-strength * torch.exp(torch.randn(gate[2:])) * F.softplus(torch.randn(gate)),
        beta=torch.sigmoid(torch.randn(B, L, HV)),
    )
    return {n: x.to(device, dtype) for n, x in values.items()}


def state_shape(x: dict) -> tuple[int, int, int]:
    return (x["value"].shape[2], x["key"].shape[3], x["value"].shape[3])


def sliced(x: dict, start: int, end: int) -> dict:
    return {n: t[:, start:end] if n in TIMED else t for n, t in x.items()}


def double(x: dict) -> dict:
    return {n: t.double() if isinstance(t, torch.Tensor) else t for n, t in x.items()}


def transformers_peer(module: str, name: str):
    function = torch_function(module, name).function

    def run(x, initial):
        return function(
            *(x[n] for n in TIMED),
            initial_state=initial,
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )

    return run


def fla_peer(naive, channel_gate: bool):
    """fla's naive recurrence on query/key normalised here (it has no in-kernel norm) and
    repeated to the value heads (``naive_recurrent_gated_delta_rule`` has no grouped heads)."""

    def run(x, initial):
        group = x["value"].shape[2] // x["query"].shape[2]
        q, k = (F.normalize(x[n], dim=-1).repeat_interleave(group, 2) for n in ("query", "key"))
        if channel_gate:
            return naive(
                q, k, x["value"], x["g"], x["beta"], initial_state=initial, output_final_state=True
            )
        return naive(
            q, k, x["value"], x["beta"], x["g"], initial_state=initial, output_final_state=True
        )

    return run


# name -> (peer, gate per channel?, grouped value heads?)
PEERS = {
    "qwen3_next-recurrent": (
        transformers_peer(QWEN3_NEXT, "torch_recurrent_gated_delta_rule"),
        False,
        True,
    ),
    "qwen3_next-chunk": (
        transformers_peer(QWEN3_NEXT, "torch_chunk_gated_delta_rule"),
        False,
        True,
    ),
    "olmo_hybrid-recurrent": (
        transformers_peer(OLMO_HYBRID, "torch_recurrent_gated_delta_rule"),
        False,
        True,
    ),
    "kimi_linear-recurrent": (
        transformers_peer(KIMI_LINEAR, "recurrent_kimi_delta_attention"),
        True,
        False,
    ),
    "kimi_linear-chunk": (
        transformers_peer(KIMI_LINEAR, "chunk_kimi_delta_attention"),
        True,
        False,
    ),
    "fla-naive_recurrent_gated_delta_rule": (
        fla_peer(naive_recurrent_gated_delta_rule, False),
        False,
        True,
    ),
    "fla-naive_recurrent_kda": (fla_peer(naive_recurrent_kda, True), True, True),
}


def peer_inputs(grouped: bool, channel_gate: bool, L: int, device="cpu", **kw) -> dict:
    HK, HV = (2, 4) if grouped else (3, 3)
    return make(2, L, HK, HV, 16, 12, channel_gate, device=device, **kw)


def close(want: torch.Tensor, got: torch.Tensor, tol: float, what: str) -> None:
    assert want.shape == got.shape, (what, want.shape, got.shape)
    assert not got.isnan().any(), f"{what}: unwritten (NaN) elements"
    err = rel_error(want, got)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("peer", list(PEERS))
def test_definition_matches_the_peers(peer):
    run, channel_gate, grouped = PEERS[peer]
    x = peer_inputs(grouped, channel_gate, L=70)  # more than one of the peers' 64-token chunks
    initial = torch.randn(2, *state_shape(x))
    y, final = run(x, initial)
    out = delta_rule_sequential(
        **double(x),
        initial_state=initial.double(),
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    close(out.y, y, PEER_TOLERANCE, "y")
    close(out.final_state, final, PEER_TOLERANCE, "final state")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "peer", ["qwen3_next-recurrent", "kimi_linear-recurrent", "fla-naive_recurrent_kda"]
)
def test_emission_and_injection_match_the_peer(peer, backend, poisoned, monkeypatch):  # noqa: F811
    """Emitted ``S_t`` is the peer's final state on tokens ``0..t``; injecting at ``t`` is the
    peer continuing from its edited state after token ``t``."""
    run, channel_gate, grouped = PEERS[peer]
    device = DEVICE if backend == "triton" else "cpu"
    L, t_emit, t_inject = 13, (0, 5, 12), 6
    x = peer_inputs(grouped, channel_gate, L)
    B, shape = 2, state_shape(x)
    initial, value, scale = torch.randn(B, *shape), torch.randn(B, 1, *shape), torch.randn(B)
    op = implementation(kernels.delta_rule, backend, monkeypatch)
    out = op(
        **{n: t.to(device) for n, t in x.items()},
        initial_state=initial.to(device),
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
        emit_at=torch.tensor(t_emit, device=device),
        inject_at=torch.tensor([t_inject], device=device),
        inject_value=value.to(device),
        inject_scale=scale.to(device),
    )
    for slot, t in enumerate(t_emit[:-1]):  # before the injection
        _, prefix_state = run(sliced(x, 0, t + 1), initial)
        close(prefix_state, out.states[:, slot].cpu(), PEER_TOLERANCE, f"state emitted at {t}")
    y_before, prefix_state = run(sliced(x, 0, t_inject + 1), initial)
    edited = prefix_state + scale.view(B, 1, 1, 1) * value[:, 0]
    y_after, final = run(sliced(x, t_inject + 1, L), edited)
    close(y_before, out.y[:, : t_inject + 1].cpu(), PEER_TOLERANCE, "y up to the injection")
    close(y_after, out.y[:, t_inject + 1 :].cpu(), PEER_TOLERANCE, "y after the injection")
    close(final, out.final_state.cpu(), PEER_TOLERANCE, "final state")
    _, emitted_after = run(sliced(x, t_inject + 1, t_emit[-1] + 1), edited)
    close(emitted_after, out.states[:, -1].cpu(), PEER_TOLERANCE, "state emitted after injection")


def instrumentation(B: int, L: int, shape, mode: str, device) -> dict:
    """Per-row emission at 0, the chunk edges, L-1 and an unused slot, in its own order per row;
    even rows inject at L // 2, odd rows at L - 2; a random initial state."""
    times = sorted({t for t in (0, 3, 4, CHUNK - 1, CHUNK, L - 1) if t < L})
    emit = torch.stack(
        [torch.tensor([*times, -1])[torch.randperm(len(times) + 1)] for _ in range(B)]
    )
    inject = torch.tensor([[L // 2, -1] if b % 2 == 0 else [-1, max(L - 2, 0)] for b in range(B)])
    values = dict(
        initial_state=torch.randn(B, *shape),
        output_final_state=True,
        emit_at=emit,
        inject_at=inject,
        inject_value=torch.randn(B, 2, *shape),
        inject_mode=mode,
        inject_scale=torch.randn(B) if mode == "add" else None,
    )
    return {n: v.to(device) if isinstance(v, torch.Tensor) else v for n, v in values.items()}


def assert_matches(reference, out, dtype=torch.float32) -> None:
    close(reference.y, out.y.cpu(), Y_TOLERANCE[dtype], "y")
    close(reference.final_state, out.final_state.cpu(), STATE_TOLERANCE, "final state")
    close(reference.states, out.states.cpu(), STATE_TOLERANCE, "emitted states")
    assert out.final_state.dtype == out.states.dtype == torch.float32
    assert out.y.dtype == dtype


SIZES = [  # B, L, HK, HV, K, V, gate per channel, gate strength
    (2, 1, 1, 1, 16, 16, False, 1.0),
    (1, 7, 2, 4, 32, 16, True, 20.0),
    (2, 17, 1, 2, 16, 24, False, 1.0),
    (1, 9, 1, 1, 128, 12, True, 1.0),  # Kimi's / Qwen3-Next's K, a V of 3 tiles
]
size_ids = [
    f"B{s[0]}-L{s[1]}-H{s[2]}x{s[3]}-K{s[4]}-V{s[5]}-{'channel' if s[6] else 'head'}-x{s[7]:g}"
    for s in SIZES
]


def reference(x: dict, **instr) -> object:
    instr = {
        n: v.cpu().double()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
        else v.cpu()
        if isinstance(v, torch.Tensor)
        else v
        for n, v in instr.items()
    }
    return delta_rule_sequential(
        **double({n: t.cpu() for n, t in x.items()}), use_qk_l2norm_in_kernel=True, **instr
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("size", SIZES, ids=size_ids)
def test_matches_the_definition(size, mode, backend, poisoned, monkeypatch):  # noqa: F811
    B, L, HK, HV, K, V, channel_gate, strength = size
    device = DEVICE if backend == "triton" else "cpu"
    x = make(B, L, HK, HV, K, V, channel_gate, device=device, strength=strength)
    instr = instrumentation(B, L, state_shape(x), mode, device)
    op = implementation(kernels.delta_rule, backend, monkeypatch)
    out = op(**x, use_qk_l2norm_in_kernel=True, **instr)
    assert_matches(reference(x, **instr), out)


CHUNKED_SIZES = [  # L, K, gate per channel, gate strength, mode, dtype
    (CHUNK + 3, 16, True, 5.0, "add", torch.float32),
    (77, 128, False, 1.0, "add", torch.float32),  # Qwen3-Next's / OLMo-hybrid's K
    (77, 128, True, 30.0, "set", torch.float16),  # Kimi's; chunks too strongly gated to factorise
]


@needs_kernel_device
@pytest.mark.parametrize(
    "size",
    CHUNKED_SIZES,
    ids=[
        f"L{s[0]}-K{s[1]}-{'channel' if s[2] else 'head'}-x{s[3]:g}-{s[4]}" for s in CHUNKED_SIZES
    ],
)
def test_triton_chunked_form_matches_the_definition(size, poisoned):  # noqa: F811
    """``form="chunked"``: ``wkv7``'s chunked kernels on the mapped inputs (the other tests run
    the recurrent kernel), two rows of one head of 16 value columns, with
    emission at 0, mid-chunk, the chunk edges and L-1, an injection mid-chunk (even rows) and
    just before the end (odd rows)."""
    L, K, channel_gate, strength, mode, dtype = size
    x = make(2, L, 1, 1, K, 16, channel_gate, dtype=dtype, device=DEVICE, strength=strength)
    instr = instrumentation(2, L, state_shape(x), mode, DEVICE)
    out = kernels.delta_rule.implementations["triton"](
        **x, use_qk_l2norm_in_kernel=True, form="chunked", **instr
    )
    assert_matches(reference(x, **instr), out, dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_float32_state(dtype, backend, poisoned, monkeypatch):  # noqa: F811
    device = DEVICE if backend == "triton" else "cpu"
    x = make(2, 9, 1, 2, 16, 8, False, dtype=dtype, device=device)
    instr = instrumentation(2, 9, state_shape(x), "add", device)
    op = implementation(kernels.delta_rule, backend, monkeypatch)
    out = op(**x, use_qk_l2norm_in_kernel=True, **instr)
    assert_matches(reference(x, **instr), out, dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("channel_gate", [False, True], ids=["head-gate", "channel-gate"])
def test_decode_step_token_by_token(channel_gate, backend, monkeypatch):
    """``delta_rule_step`` over the tokens, state in place, emitting after tokens 0 and 3 and
    injecting (add, per-row scales; row 1 not at all) after token 2: the sequence definition."""
    device = DEVICE if backend == "triton" else "cpu"
    B, L = 2, 6
    x = make(B, L, 1, 2, 16, 8, channel_gate, device=device)
    shape = state_shape(x)
    initial, value = torch.randn(B, *shape), torch.randn(B, 1, *shape)
    scale = torch.tensor([0.7, 0.0])
    step = implementation(kernels.delta_rule_step, backend, monkeypatch)
    state = initial.clone().to(device)
    ys, emitted = [], []
    for t in range(L):
        kw = {}
        if t in (0, 3):
            kw["emit_at"] = torch.tensor([0], device=device)
        if t == 2:
            kw |= dict(
                inject_at=torch.tensor([[0], [-1]], device=device),
                inject_value=value.to(device),
                inject_scale=scale.to(device),
            )
        token = {n: x[n][:, t] for n in TIMED}
        out = step(**token, state=state, use_qk_l2norm_in_kernel=True, **kw)
        assert out.final_state is state
        ys.append(out.y)
        if "emit_at" in kw:
            emitted.append(out.states[:, 0].clone())
    want = reference(
        x,
        initial_state=initial,
        output_final_state=True,
        emit_at=torch.tensor([0, 3]),
        inject_at=torch.tensor([[2], [-1]]),
        inject_value=value,
        inject_scale=scale,
    )
    close(want.y, torch.stack(ys, 1).cpu(), Y_TOLERANCE[torch.float32], "y")
    close(want.final_state, state.cpu(), STATE_TOLERANCE, "state")
    close(want.states, torch.stack(emitted, 1).cpu(), STATE_TOLERANCE, "emitted states")


@pytest.mark.parametrize("form", ["public", "sequential"])
def test_bad_input_names_the_argument(form):
    op = kernels.delta_rule if form == "public" else delta_rule_sequential
    x = make(2, 5, 2, 4, 8, 6, False)
    with pytest.raises(ValueError, match=r"value must have a multiple of query's 2 heads.*HV = 3"):
        op(**dict(x, value=x["value"][:, :, :3], beta=x["beta"][:, :, :3], g=x["g"][:, :, :3]))
    with pytest.raises(ValueError, match=r"g must have shape \[B=2, L=5, HV=4, K=8\]"):
        op(**dict(x, g=torch.zeros(2, 5, 4, 7)))
    with pytest.raises(ValueError, match=r"g must have shape \[B=2, L=5, HV=4\]"):
        op(**dict(x, g=torch.zeros(2, 5, 3)))
    with pytest.raises(ValueError, match=r"beta must have shape \[B=2, L=5, HV=4\]"):
        op(**dict(x, beta=torch.zeros(2, 5, 4, 1)))
    with pytest.raises(ValueError, match=r"key must have shape \[B=2, L=5, HK=2, K=8\]"):
        op(**dict(x, key=x["key"][:, :, :1]))
    with pytest.raises(TypeError, match="scale must be a float or None"):
        op(**x, scale="0.5")
    with pytest.raises(TypeError, match="use_qk_l2norm_in_kernel must be a bool"):
        op(**x, use_qk_l2norm_in_kernel=1)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[B=2, S0=4, S1=8"):
        op(**x, initial_state=torch.zeros(2, 4, 6, 8))


def test_bad_decode_state_names_the_argument():
    token = {n: t[:, 0] for n, t in make(2, 1, 1, 2, 8, 6, False).items()}
    with pytest.raises(ValueError, match=r"state must have shape \[B=2, HV=2, K=8, V=6\]"):
        kernels.delta_rule_step(**token, state=torch.zeros(2, 2, 6, 8))
    with pytest.raises(TypeError, match="state must be a contiguous float32 tensor"):
        kernels.delta_rule_step(**token, state=torch.zeros(2, 2, 8, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"query must have shape \[B, HK, K\]"):
        kernels.delta_rule_step(
            **dict(token, query=token["query"][:, None]), state=torch.zeros(2, 2, 8, 6)
        )
