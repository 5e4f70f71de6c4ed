"""The Bob vector on Alice prompts (``statetap.interp.steering.quirky``), against a hand
computation on a tiny untrained Mamba with the quirky tokenizer."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

import statetap
from statetap.interp.steering.quirky import steer_alice_to_bob
from statetap.kernels.examples import rel_error
from statetap.zoo.quirky import ANSWERS, quirky_addition
from statetap.zoo.tokenizer import quirky_tokenizer


@torch.no_grad()
def test_bob_vector_rates_and_best_equal_a_hand_computation(fresh_seed):
    tokenizer = quirky_tokenizer()
    config = MambaConfig(
        vocab_size=len(tokenizer), hidden_size=24, state_size=4, num_hidden_layers=3
    )
    model = MambaForCausalLM(config).eval()
    tap = statetap.attach(model)
    train, test = quirky_addition(23, 31, max_digits=2, seed=fresh_seed)
    multipliers = [0.0, 2.5, -4.0]
    found = steer_alice_to_bob(
        tap, tokenizer, train, test, multipliers, modes=("residual",), progress=False
    )

    def last_residual(text: str, layer: int) -> torch.Tensor:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        hidden = model(ids, output_hidden_states=True).hidden_states
        return hidden[tap.adapter.hidden_states_index(layer)][0, -1]

    layer = 1
    alice = [e.text for e in train if e.character == "Alice"]
    bob = [e.text for e in train if e.character == "Bob"]
    by_hand = torch.stack([last_residual(t, layer) for t in bob]).mean(0) - torch.stack(
        [last_residual(t, layer) for t in alice]
    ).mean(0)
    assert rel_error(by_hand, found.vectors["residual", layer]) < 1e-5

    steered = [e for e in test if e.character == "Alice" and e.alice_label != e.bob_label]
    true_id, false_id = (tokenizer.convert_tokens_to_ids(ANSWERS[x]) for x in (True, False))
    j = 1  # multiplier 2.5: add it at the last prompt token, after block `layer`
    vector = found.vectors["residual", layer]

    def add_at_last(module, args):
        hidden = args[0].clone()
        hidden[:, -1] += multipliers[j] * vector
        return (hidden, *args[1:])

    handle = tap.adapter.blocks[layer + 1].register_forward_pre_hook(add_at_last)
    try:
        p_match = []
        for e in steered:
            ids = tokenizer(e.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            p = model(ids).logits[0, -1].softmax(-1)
            bob_id = true_id if e.bob_label else false_id
            p_match.append(p[bob_id] / (p[true_id] + p[false_id]))
    finally:
        handle.remove()
    p_match = torch.stack(p_match)
    assert rel_error(p_match, found.result.p_match[0, layer, j]) < 1e-4
    assert found.rates[0, layer, j].item() == pytest.approx((p_match > 0.5).float().mean().item())
    best = found.best("residual")
    assert best.rate == found.rates[0].max().item()
    assert (
        best.rate
        == found.rates[
            0, found.result.layers.index(best.layer), multipliers.index(best.multiplier)
        ].item()
    )
    assert best.shift == pytest.approx(best.rate - found.baseline_rate)


def test_bob_steering_refuses_examples_without_pairs_or_disagreement():
    tokenizer = quirky_tokenizer()
    model = MambaForCausalLM(
        MambaConfig(vocab_size=len(tokenizer), hidden_size=8, state_size=2, num_hidden_layers=2)
    ).eval()
    train, test = quirky_addition(6, 6, max_digits=2, seed=random.randrange(1000))
    tap = statetap.attach(model)
    alice_only = [e for e in train if e.character == "Alice"]
    with pytest.raises(ValueError, match="no equation with both an Alice and a Bob prompt"):
        steer_alice_to_bob(tap, tokenizer, alice_only, test, [1.0], progress=False)
    agreeing = [e for e in test if e.alice_label == e.bob_label]
    with pytest.raises(ValueError, match="no Alice prompt on which Alice and Bob disagree"):
        steer_alice_to_bob(tap, tokenizer, train, agreeing, [1.0], progress=False)
