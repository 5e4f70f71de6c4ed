"""End to end on a random transformers Mamba (d 256, 4 layers, B 8, L 256): the plain
transformers forward, ``tap.run`` with nothing requested and with every state + the residual
emitted at 4 positions, and transformers' own token-by-token loop with its cache."""

from __future__ import annotations

import pytest
import torch

BATCH, LENGTH, VOCAB = 8, 256, 1000
POSITIONS = [63, 127, 191, 255]
IMPLS = [
    "transformers forward",
    "tap.run nothing",
    "tap.run states+residual @4",
    "transformers token loop",
]


@pytest.fixture(scope="module")
def model():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    config = MambaConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, state_size=16)
    return MambaForCausalLM(config).eval()


def token_loop(model, ids):
    out = model(ids[:, :1], use_cache=True)
    for t in range(1, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
    return out.logits


def make_call(impl, model, ids, positions=POSITIONS):
    """The call that ``impl`` times on ``model`` over ``ids`` (emissions at ``positions``)."""
    if impl == "transformers forward":
        return lambda: model(ids)
    if impl == "transformers token loop":
        return lambda: token_loop(model, ids)
    from statetap.tap import Emit, Tap

    tap = Tap(model)
    emit = (
        []
        if impl == "tap.run nothing"
        else [Emit("state", positions=positions), Emit("residual", positions=positions)]
    )
    return lambda: tap.run(ids, emit=emit)


@pytest.mark.parametrize("impl", IMPLS)
def test_mamba_model(record, model, impl):
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    record.time(
        "end to end",
        f"transformers Mamba d256 x4, B{BATCH} L{LENGTH}",
        impl,
        lambda: make_call(impl, model, ids),
        1 if impl == "transformers token loop" else 3,
    )
