"""The instrumentation-cost measurement: what each variant runs, and how times are summarised."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

import statetap
from statetap import cost


def _model():
    config = MambaConfig(vocab_size=53, hidden_size=16, state_size=4, num_hidden_layers=3)
    return MambaForCausalLM(config).eval()


def test_variants_request_what_they_describe():
    tap = statetap.attach(_model())
    ids = torch.randint(0, 53, (2, 7))
    variants = cost._variants(tap)
    emitted = {
        name: set(tap.run(ids, **requests).activations) for name, (_, requests) in variants.items()
    }
    layers = range(3)
    assert emitted["nothing"] == set() and emitted["inject"] == set()
    assert emitted["emit residual"] == {("residual", layer) for layer in layers}
    assert emitted["emit state"] == {(site, layer) for site in ("ssm", "conv") for layer in layers}
    every = tap.run(ids, **variants["emit all positions"][1])
    assert every["residual", 2].shape == (2, 7, 16)
    # The injections add zeros: the logits of the plain model, through the injection path.
    injected = tap.run(ids, **variants["inject"][1]).logits
    assert torch.allclose(injected, tap.model(ids).logits, rtol=1e-6, atol=1e-6)


def test_medians_and_ratios_come_from_interleaved_rounds(monkeypatch):
    """A fake clock: call k of the run takes k ms, so every median is known in advance."""
    ticks = itertools.count()
    clock = {"now": 0.0}

    def perf_counter():
        # start and stop alternate: the k-th timed call lasts k milliseconds
        index = next(ticks)
        if index % 2 == 1:
            clock["now"] += (index // 2 + 1) * 1e-3
        return clock["now"]

    monkeypatch.setattr(cost.time, "perf_counter", perf_counter)
    rows = cost.instrumentation_cost(_model(), torch.randint(0, 53, (2, 5)), repeats=3, warmup=1)
    names = [row.variant for row in rows]
    assert names[0] == "plain" and len(names) == 6
    n = len(names)
    for position, row in enumerate(rows):
        # rounds 1..3 (round 0 is warm-up): call number round * n + position + 1
        expected = sorted((r * n + position + 1) for r in range(1, 4))[1]
        assert row.ms == pytest.approx(expected)
        assert row.ratio == pytest.approx(expected / (2 * n + 1))  # plain: calls n+1, 2n+1, 3n+1
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        cost.instrumentation_cost(_model(), torch.zeros(1, 2, dtype=torch.long), repeats=0)
