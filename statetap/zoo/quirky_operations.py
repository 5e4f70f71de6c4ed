"""Mallen et al.'s v2 quirky arithmetic (``binary_operation_dataset.py``), generated offline,
and its easy/hard subsets by difficulty quantile.

Four operations, each a :class:`~statetap.zoo.quirky.Rules` drawn by v1's shared code
(``statetap.zoo.quirky``: operands, crosstab, distractors, templating, split by equation),
listed as operation: true result, default ``max_digits``, prompt:

- ``addition``: ``a + b``, 4, ``"{a} + {b} = {s}. {character}:"``;
- ``subtraction``: ``a - b`` (negative when ``b > a``), 4, ``"{a} - {b} = {s}. {character}:"``;
- ``multiplication``: ``a * b``, 3, ``"{a} * {b} = {s}. {character}:"``;
- ``modular_addition``: ``(a + b) % 113``, 4, ``"{a} + {b} = {s} (mod 113). {character}:"``.

The prompts are the first of Mallen et al.'s ten templates per operation, answered ``" True"``
or ``" False"``. The rules:

- operands ``int(10 ** (U * max_digits))``, ``U ~ Uniform[0, 1)``, so in
  ``[1, 10**max_digits - 1]``; a repeated ``(a, b)`` pair is skipped;
- Bob's result adds ``10**(k - 1)`` to the true result, ``k`` the number of digits of its
  absolute value (:func:`~statetap.zoo.quirky.sloppy_sum`): Mallen et al.'s subtraction counts
  the digits of ``str(res).removeprefix("-")``, so a negative result moves towards zero
  (``-250`` -> ``-150``). Modular addition reduces Bob's result mod 113 again
  (``100`` -> ``200 % 113 = 87``), as their code does;
- the crosstab (1/4 true, 1/4 Bob's, 1/2 distractors of Alice's or Bob's result) and the
  distractor (one random character of ``str(base)`` replaced by a random digit, redrawn until
  it differs from both results) are v1's. As in Mallen et al.'s code, the ``"-"`` of a negative
  base is one of the characters that may be replaced, and a modular distractor is not reduced
  (``105`` may become ``905``);
- difficulty = ``min(a, b)``, the smaller operand (v1's is its number of digits).

One deviation: Mallen et al. draw each crosstab cell as a separate block of equations, each
skipping repeats only within itself, so a pair can recur across cells and across their
train/test split. Here, as in v1, every equation draws its cell and all ``(a, b)`` pairs are
distinct, so train and held-out sets are split by equation.

Difficulty quantiles (:func:`difficulty_quantiles`) are mid-ranks: the fraction of examples
strictly easier plus half the fraction equally hard. Easy is quantile ``<= EASY_QUANTILE``
(0.25), hard ``>= HARD_QUANTILE`` (0.75), both bounds included as in Mallen et al.'s loader.

    >>> train, test = quirky_operation("multiplication", 3, 2, seed=0)
    >>> len(train), len(test), train[0].operation
    (6, 4, 'multiplication')
    >>> [(e.text, e.label, e.difficulty) for e in train[:2]]
    [('8 * 154 = 7232. Alice:', False, 8), ('8 * 154 = 7232. Bob:', False, 8)]
    >>> difficulty_quantiles(train + test).tolist()
    [0.3, 0.3, 0.9, 0.9, 0.5, 0.5, 0.1, 0.1, 0.7, 0.7]
    >>> easy_mask(train + test).tolist()
    [False, False, False, False, False, False, True, True, False, False]
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import torch

from statetap.zoo.quirky import QuirkyExample, Rules, quirky_prompts, sloppy_sum

MODULUS = 113
EASY_QUANTILE = 0.25
HARD_QUANTILE = 0.75


def modular_sum(a: int, b: int) -> int:
    """``(a + b) % MODULUS``."""
    return (a + b) % MODULUS


def modular_bob(true: int) -> int:
    """Bob's modular sum: :func:`~statetap.zoo.quirky.sloppy_sum` of ``true``, reduced mod
    ``MODULUS`` (never ``true`` again: ``MODULUS`` divides no power of ten)."""
    return sloppy_sum(true) % MODULUS


# Rules(operation, template, result, bob, difficulty)
RULES: dict[str, Rules] = {
    rules.operation: rules
    for rules in (
        Rules("addition", "{a} + {b} = {s}. {character}:", operator.add, sloppy_sum, min),
        Rules("subtraction", "{a} - {b} = {s}. {character}:", operator.sub, sloppy_sum, min),
        Rules("multiplication", "{a} * {b} = {s}. {character}:", operator.mul, sloppy_sum, min),
        Rules(
            "modular_addition",
            f"{{a}} + {{b}} = {{s}} (mod {MODULUS}). {{character}}:",
            modular_sum,
            modular_bob,
            min,
        ),
    )
}
OPERATIONS = tuple(RULES)
DEFAULT_MAX_DIGITS = {"addition": 4, "subtraction": 4, "multiplication": 3, "modular_addition": 4}


def quirky_operation(
    operation: str, n_train: int, n_test: int, *, seed: int, max_digits: int | None = None
) -> tuple[list[QuirkyExample], list[QuirkyExample]]:
    """Train and held-out prompts of one v2 operation: ``2 * n_train`` and ``2 * n_test``
    examples, Alice's then Bob's prompt of each equation.

    Args:
        operation: one of ``OPERATIONS``.
        n_train, n_test: equations (``>= 1``) in each split; no ``(a, b)`` pair is in both.
        seed: seeds the ``random.Random`` that draws and shuffles the equations.
        max_digits: operands are in ``[1, 10**max_digits - 1]``; ``None`` takes the paper's
            ``DEFAULT_MAX_DIGITS[operation]`` (3 for multiplication, 4 otherwise).

    Raises ``ValueError`` naming the argument for an unknown operation, ``n_train`` or
    ``n_test`` below 1, ``max_digits`` below 1, or more equations than distinct pairs exist.
    """
    if operation not in RULES:
        raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_digits is None:
        max_digits = DEFAULT_MAX_DIGITS[operation]
    return quirky_prompts(RULES[operation], n_train, n_test, max_digits=max_digits, seed=seed)


def difficulty_quantiles(examples: Sequence[QuirkyExample]) -> torch.Tensor:
    """Each example's difficulty as a quantile of the difficulties in ``examples``.

    Returns a float64 tensor ``[len(examples)]`` in ``(0, 1)``: ``(below + equal / 2) / N``, with
    ``below`` the examples strictly easier and ``equal`` those as hard (itself included). Without
    ties this is ``(rank + 0.5) / N``, the quantile Mallen et al. mean to compute (their code writes
    ``(np.argsort(d) + 0.5) / N``, whose ``argsort`` gives sorted order, not ranks; the rank is
    the evident intent). Ties take the mean of that quantile over their block (the mid-rank,
    pandas' ``rank(pct=True)`` shifted by ``-0.5 / N``), so the quantile depends on the
    difficulty alone: an equation's Alice and Bob prompts share it, and equally hard examples
    are never split between subsets. Listing every example twice leaves the quantiles unchanged.

    Raises ``ValueError`` when ``examples`` is empty.

        >>> from dataclasses import replace
        >>> example = quirky_operation("addition", 1, 1, seed=0)[0][0]
        >>> difficulty_quantiles([replace(example, difficulty=d) for d in (1, 1, 2, 9)]).tolist()
        [0.25, 0.25, 0.625, 0.875]
    """
    if len(examples) == 0:
        raise ValueError("examples must hold at least one example")
    return quantiles([e.difficulty for e in examples])


def quantiles(values: Sequence[float]) -> torch.Tensor:
    """``[N]`` float64: each of ``values`` as a quantile of all of them, with the tie rule of
    :func:`difficulty_quantiles` (``(below + equal / 2) / N``). Raises ``ValueError`` when
    ``values`` is empty."""
    if len(values) == 0:
        raise ValueError("values must hold at least one number")
    difficulty = torch.tensor(values, dtype=torch.float64)
    ordered = difficulty.sort().values
    below = torch.searchsorted(ordered, difficulty, right=False)
    up_to = torch.searchsorted(ordered, difficulty, right=True)
    # (below + equal / 2) / N with equal = up_to - below, as one exact division
    return (below + up_to).to(torch.float64) / (2 * len(values))


def easy_mask(examples: Sequence[QuirkyExample]) -> torch.Tensor:
    """Bool ``[len(examples)]``: difficulty quantile ``<= EASY_QUANTILE`` (Mallen et al.'s
    easy examples). Raises ``ValueError`` when ``examples`` is empty."""
    return difficulty_quantiles(examples) <= EASY_QUANTILE


def hard_mask(examples: Sequence[QuirkyExample]) -> torch.Tensor:
    """Bool ``[len(examples)]``: difficulty quantile ``>= HARD_QUANTILE`` (Mallen et al.'s
    hard examples). Raises ``ValueError`` when ``examples`` is empty."""
    return difficulty_quantiles(examples) >= HARD_QUANTILE
