"""``Tap.run(start_at=l, start_residual=...)``: a pass that runs only blocks ``l ..`` from the
residual stream entering block ``l`` equals the full pass.

The reference is the model's own forward (from the empty state) or a full ``tap.run`` from the
same state (a continuation, itself checked against the model's cache edits in
test_model_tap.py); the residual stream fed in is the full pass's, read by the ``"residual"``
site of layer ``l - 1`` (the embeddings for ``l = 0``, by a hook on the embedding).  Emissions
and injections at layers ``>= l`` must equal the full pass's; below ``l`` they are refused.
Fresh random prompts on tiny random models of several families: transformers' Mamba, Mamba-2,
RWKV-4 (with its every-2-layers rescaling) and a Jamba and a Bamba hybrid (attention layers
between the Mamba ones), statetap's RWKV-6 (and RWKV-7, which is refused past layer 0);
Mamba-2 and Jamba are marked slow.
"""

from __future__ import annotations

import pytest
import torch
from rwkv_blinkdl_cases import random_checkpoint
from test_hybrid_mamba1 import _build as build_mamba1_hybrid
from test_hybrid_mamba2 import _build as build_mamba2_hybrid
from test_model_tap import _build

import statetap
from statetap.kernels.examples import rel_error
from statetap.models import from_blinkdl_state_dict

LENGTH, SPLIT = 9, 4  # prompts of 9 tokens; continuations after the first 4


def _model(name: str):
    if name == "rwkv6":
        return from_blinkdl_state_dict(random_checkpoint("x060", 4321))
    if name == "jamba":
        return build_mamba1_hybrid("jamba")
    if name == "bamba":
        return build_mamba2_hybrid("bamba")
    return _build(name)


#: in CI: Mamba, RWKV-4 (its rescaling), RWKV-6 (statetap's blocks) and Bamba (attention
#: layers, tuple-returning blocks); Mamba-2 and Jamba (Mamba-1 hybrid) with ``-m slow``
FAMILIES = [
    "mamba",
    "rwkv",
    "rwkv6",
    "bamba",
    pytest.param("mamba2", marks=pytest.mark.slow),
    pytest.param("jamba", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=FAMILIES)
def tap(request):
    return statetap.attach(_model(request.param))


def _ids(tap, batch: int = 2, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(0, tap.model.config.vocab_size, (batch, length))


def _entering(tap, ids, layer, state=None) -> torch.Tensor:
    """``[B, L, H]``: the residual stream entering block ``layer`` in the full pass."""
    if layer > 0:
        emit = [statetap.Emit("residual", layers=layer - 1, positions="all")]
        return tap.run(ids, emit=emit, state=state)["residual", layer - 1]
    caught = []
    handle = tap.adapter.start_module(0).register_forward_pre_hook(
        lambda module, args: caught.append(args[0])
    )
    try:
        tap.run(ids, state=state)
    finally:
        handle.remove()
    return caught[0]


@torch.no_grad()
def test_a_pass_started_at_any_layer_equals_the_full_pass(tap, fresh_seed):
    ids = _ids(tap)
    plain = tap.model(ids).logits
    every = tap.run(ids, emit=[statetap.Emit("residual", positions="all")])
    for layer in range(tap.adapter.n_layers + 1):
        residual = _entering(tap, ids, 0) if layer == 0 else every["residual", layer - 1]
        started = tap.run(ids, start_at=layer, start_residual=residual)
        assert rel_error(plain, started.logits) <= 1e-6, layer


@torch.no_grad()
def test_a_started_continuation_with_emission_and_injection_equals_the_full_one(tap, fresh_seed):
    """From the state after a prefix, started at the last state layer: logits, an emitted
    state, residual and mixer, and a state and a residual injection, all at layers >= start."""
    ids = _ids(tap)
    prefix, rest = ids[:, :SPLIT], ids[:, SPLIT:]
    state = tap.run(prefix, keep_state=True).state
    layer = tap.state_layers[-1]
    component = tap.adapter.state_sites[0]
    shape = tap.site_shape(component)
    emit = [
        statetap.Emit(component, layers=layer, positions=[0, -1]),
        statetap.Emit("residual", layers=layer, positions="all"),
        statetap.Emit("mixer", layers=layer, positions=[1]),
    ]
    inject = [
        statetap.Inject(component, layer, torch.randn(shape), positions=1, mode="set"),
        statetap.Inject("residual", layer, torch.randn(tap.adapter.hidden_size), positions=2),
    ]
    full = tap.run(rest, emit=emit, inject=inject, state=state)
    residual = _entering(tap, rest, layer, state)
    started = tap.run(
        rest, emit=emit, inject=inject, state=state, start_at=layer, start_residual=residual
    )
    assert rel_error(full.logits, started.logits) <= 1e-6
    for key, value in full.activations.items():
        assert rel_error(value, started[key]) <= 1e-6, key


@torch.no_grad()
def test_what_a_started_pass_refuses(tap):
    ids = _ids(tap, length=5)
    layer = tap.adapter.n_layers - 1
    hidden = tap.adapter.hidden_size
    residual = torch.zeros(2, 5, hidden)
    with pytest.raises(ValueError, match=r"start_at=2 skips the layers of \[\('residual', 0\)\]"):
        tap.run(
            ids, emit=[statetap.Emit("residual", layers=0)], start_at=2, start_residual=residual
        )
    with pytest.raises(ValueError, match=r"skips the layers of \[\('mixer', 0\)\]"):
        inject = statetap.Inject("mixer", 0, torch.zeros(hidden))
        tap.run(ids, inject=[inject], start_at=layer, start_residual=residual)
    with pytest.raises(ValueError, match="no state to keep"):
        tap.run(ids, keep_state=True, start_at=layer, start_residual=residual)
    with pytest.raises(ValueError, match="pass both or neither"):
        tap.run(ids, start_at=layer)
    with pytest.raises(ValueError, match=rf"start_at must be an int in 0 \.\. {layer + 1}"):
        tap.run(ids, start_at=layer + 2, start_residual=residual)
    with pytest.raises(ValueError, match=rf"\[B, L, H\] = \[2, 5, {hidden}\]"):
        tap.run(ids, start_at=layer, start_residual=residual[:, 1:])
    with pytest.raises(TypeError, match="start_residual must be torch.float32"):
        tap.run(ids, start_at=layer, start_residual=residual.double())
    with pytest.raises(ValueError, match="ends the pass before start_at"):
        tap.run(ids, start_at=layer, start_residual=residual, stop_after=layer - 1)


def test_rwkv7_starts_at_layer_0_only():
    tap = statetap.attach(from_blinkdl_state_dict(random_checkpoint("x070", 4321)))
    ids = torch.randint(0, tap.model.config.vocab_size, (1, 4))
    residual = torch.zeros(1, 4, tap.adapter.hidden_size)
    with pytest.raises(ValueError, match="v_first"):
        tap.run(ids, start_at=1, start_residual=residual)
    with torch.no_grad():
        started = tap.run(ids, start_at=0, start_residual=_entering(tap, ids, 0))
        assert rel_error(tap.model(ids).logits, started.logits) <= 1e-6


@torch.no_grad()
def test_logits_at_chosen_positions_equal_the_full_logits_there(tap, fresh_seed):
    ids = _ids(tap)
    plain = tap.model(ids).logits
    per_row = torch.randint(0, LENGTH, (2, 2))
    rows = torch.arange(2)[:, None]
    assert rel_error(plain[rows, per_row], tap.run(ids, logits_at=per_row).logits) <= 1e-6
    assert rel_error(plain[:, -1:], tap.run(ids, logits_at="last").logits) <= 1e-6
    layer = tap.adapter.n_layers - 1
    started = tap.run(
        ids, start_at=layer, start_residual=_entering(tap, ids, layer), logits_at=[0, -1]
    )
    assert rel_error(plain[:, [0, -1]], started.logits) <= 1e-6
    with pytest.raises(ValueError, match="logits_at cannot go with keep_state"):
        tap.run(ids, logits_at="last", keep_state=True)
