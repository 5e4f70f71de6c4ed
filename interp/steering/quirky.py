"""Steering a quirky model's character: the "Bob" vector applied to Alice prompts.

A quirky model (``statetap.zoo``) answers ``"{a} + {b} = {s}. Alice:"`` by the truth and the
same equation with ``Bob:`` by Bob's sloppy rule.  The Bob vector of a layer is the mean
difference between Bob and Alice prompts of the same equations (residual stream at the last
token, every state component after it).  Added to Alice prompts on which the two characters
disagree, it should make the model answer as Bob would: the measure is the rate of
Bob-consistent answers (``p_match > 1/2``, the matching answer being Bob's).

Example:
    >>> from statetap import zoo                                      # doctest: +SKIP
    >>> model, tokenizer = zoo.load("quirky-mamba")                   # doctest: +SKIP
    >>> train, test = zoo.quirky.quirky_addition(512, 512, max_digits=2, seed=1)  # doctest: +SKIP
    >>> found = steer_alice_to_bob(statetap.attach(model), tokenizer, train, test,
    ...                            multipliers=[1.0, 2.0, 4.0])       # doctest: +SKIP
    >>> found.best("residual")                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from statetap.interp.steering.dataset import ContrastPairs, Prompts
from statetap.interp.steering.sweeps import SweepResult, sweep
from statetap.interp.steering.vectors import SteeringVectors, mean_difference
from statetap.tap import Tap
from statetap.zoo.quirky import ANSWERS, QuirkyExample


@dataclass(frozen=True)
class BestSteering:
    """The layer and multiplier of a mode with the highest Bob-consistent rate."""

    mode: str
    layer: int
    multiplier: float
    rate: float  # Bob-consistent answers on the steered Alice prompts
    baseline_rate: float  # ... without steering

    @property
    def shift(self) -> float:
        """The rate's change, as a fraction (0.3 = 30 percentage points)."""
        return self.rate - self.baseline_rate


@dataclass
class CharacterSteering:
    """The Bob vectors, the sweep over Alice prompts, and its Bob-consistent rates."""

    vectors: SteeringVectors
    result: SweepResult

    @property
    def rates(self) -> torch.Tensor:
        """``[modes, layers, multipliers]``: fraction of prompts answered by Bob's rule."""
        return (self.result.p_match > 0.5).float().mean(-1)

    @property
    def baseline_rate(self) -> float:
        return (self.result.baseline_p_match > 0.5).float().mean().item()

    def best(self, mode: str) -> BestSteering:
        """The (layer, multiplier) of ``mode`` with the highest rate."""
        rates = self.rates[self.result.mode_index(mode)]  # [layers, M]
        flat = int(rates.argmax())
        layer, multiplier = divmod(flat, rates.shape[1])
        return BestSteering(
            mode,
            self.result.layers[layer],
            self.result.multipliers[multiplier],
            rates[layer, multiplier].item(),
            self.baseline_rate,
        )


def _texts(examples: Sequence[QuirkyExample], character: str) -> list[QuirkyExample]:
    return [e for e in examples if e.character == character]


def steer_alice_to_bob(
    tap: Tap,
    tokenizer,
    vector_examples: Sequence[QuirkyExample],
    test_examples: Sequence[QuirkyExample],
    multipliers: Sequence[float],
    modes: Sequence[str] = ("residual", "state", "both"),
    batch_size: int = 64,
    progress: bool = True,
) -> CharacterSteering:
    """Bob vectors from ``vector_examples``, swept over the Alice prompts of ``test_examples``
    on which Alice and Bob disagree.

    Args:
        tap: ``statetap.attach`` of a quirky model.
        tokenizer: its tokenizer (``" True"`` and ``" False"`` single tokens).
        vector_examples: examples holding both characters' prompts of each equation.
        test_examples: held-out examples; their disagreeing Alice prompts are steered.
        multipliers, modes, batch_size, progress: see :func:`statetap.interp.steering.sweeps.sweep`.

    Raises:
        ValueError: no Alice/Bob prompt pairs, or no disagreeing Alice prompt.
    """
    bob = {(e.a, e.b, e.shown): e.text for e in _texts(vector_examples, "Bob")}
    alice = [e for e in _texts(vector_examples, "Alice") if (e.a, e.b, e.shown) in bob]
    if not alice:
        raise ValueError("vector_examples hold no equation with both an Alice and a Bob prompt")
    vectors = mean_difference(
        tap,
        Prompts.from_texts(tokenizer, [bob[(e.a, e.b, e.shown)] for e in alice]),
        Prompts.from_texts(tokenizer, [e.text for e in alice]),
        batch_size=batch_size,
        progress=progress,
    )
    steered = [e for e in _texts(test_examples, "Alice") if e.alice_label != e.bob_label]
    if not steered:
        raise ValueError("test_examples hold no Alice prompt on which Alice and Bob disagree")
    pairs = ContrastPairs.from_texts(
        tokenizer,
        [e.text for e in steered],
        matching=[ANSWERS[e.bob_label] for e in steered],
        not_matching=[ANSWERS[e.alice_label] for e in steered],
    )
    result = sweep(
        tap, pairs, vectors, multipliers, modes=modes, batch_size=batch_size, progress=progress
    )
    return CharacterSteering(vectors, result)
