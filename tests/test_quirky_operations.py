"""statetap.zoo.quirky_operations: Mallen et al.'s v2 quirky arithmetic against rules re-derived
here, the difficulty quantiles against a brute-force count, and v1 addition left unchanged."""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from dataclasses import replace
from fractions import Fraction

import pytest
import torch

from statetap.zoo import quirky
from statetap.zoo.quirky_operations import (
    EASY_QUANTILE,
    HARD_QUANTILE,
    OPERATIONS,
    difficulty_quantiles,
    easy_mask,
    hard_mask,
    modular_bob,
    quirky_operation,
)

# ---------------------------------------------------------------- v2 rules, re-derived

TRUE_RESULT = {
    "addition": lambda a, b: a + b,
    "subtraction": lambda a, b: a - b,
    "multiplication": lambda a, b: a * b,
    "modular_addition": lambda a, b: (a + b) % 113,
}
MAX_DIGITS = {"addition": 4, "subtraction": 4, "multiplication": 3, "modular_addition": 4}
# the prompt, parsed back: a, b, the shown result (maybe negative), the character
PROMPT = {
    "addition": r"(\d+) \+ (\d+) = (-?\d+)\. (Alice|Bob):",
    "subtraction": r"(\d+) - (\d+) = (-?\d+)\. (Alice|Bob):",
    "multiplication": r"(\d+) \* (\d+) = (-?\d+)\. (Alice|Bob):",
    "modular_addition": r"(\d+) \+ (\d+) = (-?\d+) \(mod 113\)\. (Alice|Bob):",
}


def rederived_bob(operation: str, true: int) -> int:
    """Bob adds 10**(digits - 1), the digits of the result without its sign; modular addition
    reduces again."""
    bob = true + 10 ** (len(str(true).lstrip("-")) - 1)
    return bob % 113 if operation == "modular_addition" else bob


def one_replacement(base: int) -> set[int]:
    """Every integer that replacing one character of ``str(base)`` (a digit, or the sign of a
    negative base) by a digit reads back as; leading zeros drop out."""
    text = str(base)
    return {int(text[:i] + d + text[i + 1 :]) for i in range(len(text)) for d in "0123456789"}


def pairs(examples) -> list[tuple[int, int]]:
    return [(e.a, e.b) for e in examples[0::2]]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_examples_follow_the_v2_rules(operation, fresh_seed):
    train, test = quirky_operation(operation, 1500, 500, seed=fresh_seed)
    assert len(train) == 3000 and len(test) == 1000
    examples = train + test
    limit = 10 ** MAX_DIGITS[operation]
    for alice, bob in zip(examples[0::2], examples[1::2]):
        assert (alice.character, bob.character) == ("Alice", "Bob")
        assert (alice.a, alice.b, alice.shown) == (bob.a, bob.b, bob.shown)
        true = TRUE_RESULT[operation](alice.a, alice.b)
        sloppy = rederived_bob(operation, true)
        for e in (alice, bob):
            assert e.operation == operation
            assert 1 <= e.a < limit and 1 <= e.b < limit
            assert (e.true_sum, e.sloppy_sum) == (true, sloppy) and sloppy != true
            assert e.alice_label == (e.shown == true) and e.bob_label == (e.shown == sloppy)
            assert e.difficulty == min(e.a, e.b)
            # the text parses back to the equation, in canonical integers
            match = re.fullmatch(PROMPT[operation], e.text)
            assert match is not None, e.text
            assert match.groups() == (str(e.a), str(e.b), str(e.shown), e.character)
        assert alice.label == alice.alice_label and bob.label == bob.bob_label
        assert alice.answer == (" True" if alice.alice_label else " False")
        assert bob.answer == (" True" if bob.bob_label else " False")
        if not (alice.alice_label or alice.bob_label):
            assert alice.shown in one_replacement(true) | one_replacement(sloppy)
    # operands reach the top decade; pairs are distinct and the split is by equation
    assert max(max(e.a, e.b) for e in examples) >= limit // 10
    assert len(set(pairs(train))) == 1500 and len(set(pairs(test))) == 500
    assert not set(pairs(train)) & set(pairs(test))


@pytest.mark.parametrize("operation", OPERATIONS)
def test_crosstab_and_distractors(operation, fresh_seed, monkeypatch):
    drawn = []
    real = quirky.distractor

    def spy(rng, base, true, sloppy):
        drawn.append((base, true, sloppy, real(rng, base, true, sloppy)))
        return drawn[-1][-1]

    monkeypatch.setattr(quirky, "distractor", spy)
    n = 4000
    train, test = quirky_operation(operation, n - 500, 500, seed=fresh_seed)
    alice = (train + test)[0::2]
    cells = Counter((e.alice_label, e.bob_label) for e in alice)

    def tol(p: float) -> float:  # 5 binomial standard deviations of a fraction p of n
        return 5 * math.sqrt(p * (1 - p) / n)

    assert cells[(True, True)] == 0
    assert abs(cells[(True, False)] / n - 0.25) < tol(0.25)
    assert abs(cells[(False, True)] / n - 0.25) < tol(0.25)
    assert abs(cells[(False, False)] / n - 0.5) < tol(0.5)
    # every (F, F) equation got one distractor, of Alice's result or of Bob's, a quarter each
    assert len(drawn) == cells[(False, False)]
    shown = [e.shown for e in alice if not (e.alice_label or e.bob_label)]
    assert Counter(d[-1] for d in drawn) == Counter(shown)
    from_alice = sum(base == true for base, true, _, _ in drawn)
    assert abs(from_alice / n - 0.25) < tol(0.25)
    assert abs((len(drawn) - from_alice) / n - 0.25) < tol(0.25)
    for base, true, sloppy, value in drawn:
        assert base in (true, sloppy) and sloppy == rederived_bob(operation, true)
        assert value not in (true, sloppy)  # so value != base: exactly one character changed
        assert value in one_replacement(base)
    if operation == "subtraction":
        # negative results occur; their distractors mostly keep the sign, and replacing the
        # sign itself (Mallen et al.'s rule) gives a non-negative number
        negative = [value for base, _, _, value in drawn if base < 0]
        assert sum(e.shown < 0 for e in alice) > n / 10
        assert any(v < 0 for v in negative) and any(v >= 0 for v in negative)


@pytest.mark.parametrize(
    "true, bob",
    [(0, 1), (7, 8), (9, 10), (951, 1051), (-1, 0), (-9, -8), (-250, -150), (-1000, 0)],
)
def test_bob_adds_one_to_the_leading_digit_of_the_magnitude(true, bob):
    assert quirky.sloppy_sum(true) == bob == rederived_bob("subtraction", true)


@pytest.mark.parametrize("true, bob", [(0, 1), (5, 6), (12, 22), (100, 87), (112, 99)])
def test_modular_bob_reduces_again(true, bob):
    assert modular_bob(true) == bob == rederived_bob("modular_addition", true)


def test_v2_addition_draws_as_v1_addition_with_another_difficulty(fresh_seed):
    v1 = quirky.quirky_addition(300, 100, max_digits=4, seed=fresh_seed)
    v2 = quirky_operation("addition", 300, 100, seed=fresh_seed)
    for old, new in zip(v1[0] + v1[1], v2[0] + v2[1], strict=True):
        assert replace(old, difficulty=min(old.a, old.b)) == new


def test_seeded_and_max_digits(fresh_seed):
    first = quirky_operation("multiplication", 200, 50, seed=fresh_seed)
    assert quirky_operation("multiplication", 200, 50, seed=fresh_seed) == first
    assert quirky_operation("multiplication", 200, 50, seed=fresh_seed + 1) != first
    train, test = quirky_operation("subtraction", 300, 100, seed=fresh_seed, max_digits=2)
    assert max(max(e.a, e.b) for e in train + test) < 100
    with pytest.raises(ValueError, match="distinct"):
        quirky_operation("modular_addition", 70, 20, seed=0, max_digits=1)  # 81 pairs exist


# ---------------------------------------------------------------- difficulty quantiles


def with_difficulties(difficulties):
    example = quirky_operation("addition", 1, 1, seed=0)[0][0]
    return [replace(example, difficulty=d) for d in difficulties]


def brute_force_quantiles(difficulties) -> list[Fraction]:
    """Fraction strictly easier plus half the fraction as hard, counted pair by pair."""
    n = len(difficulties)
    return [
        Fraction(sum(d < di for d in difficulties), n)
        + Fraction(sum(d == di for d in difficulties), 2 * n)
        for di in difficulties
    ]


def test_quantiles_with_ties_by_hand():
    got = difficulty_quantiles(with_difficulties([1, 1, 2, 3, 3, 3, 4, 10]))
    expected = torch.tensor([1, 1, 2.5, 4.5, 4.5, 4.5, 6.5, 7.5], dtype=torch.float64) / 8
    assert got.dtype == torch.float64 and got.shape == (8,)
    assert torch.equal(got, expected)
    examples = with_difficulties([1, 1, 2, 3, 3, 3, 4, 10])
    assert easy_mask(examples).tolist() == [True, True] + [False] * 6
    assert hard_mask(examples).tolist() == [False] * 6 + [True, True]
    # both bounds are included: 2 + 2 ties sit exactly on 0.25 and 0.75
    assert difficulty_quantiles(with_difficulties([5, 1, 5, 1])).tolist() == [0.75, 0.25] * 2
    assert easy_mask(with_difficulties([5, 1, 5, 1])).tolist() == [False, True] * 2
    assert hard_mask(with_difficulties([5, 1, 5, 1])).tolist() == [True, False] * 2
    assert difficulty_quantiles(with_difficulties([7] * 5)).tolist() == [0.5] * 5
    assert difficulty_quantiles(with_difficulties([3])).tolist() == [0.5]


def test_quantiles_against_brute_force(fresh_seed):
    rng = random.Random(fresh_seed)
    cases = [[rng.randrange(rng.choice([2, 5, 50])) for _ in range(rng.randrange(1, 60))]]
    cases += [[rng.randrange(1000) for _ in range(30)] for _ in range(5)]
    train, test = quirky_operation("multiplication", 600, 200, seed=fresh_seed)
    cases.append([e.difficulty for e in train + test])  # min(a, b): many ties at 1, 2, ...
    for difficulties in cases:
        examples = with_difficulties(difficulties)
        exact = brute_force_quantiles(difficulties)
        got = difficulty_quantiles(examples)
        assert torch.equal(got, torch.tensor([float(q) for q in exact], dtype=torch.float64))
        assert easy_mask(examples).tolist() == [q <= Fraction(1, 4) for q in exact]
        assert hard_mask(examples).tolist() == [q >= Fraction(3, 4) for q in exact]
        # mid-ranks average to 1/2 and do not move when every example is listed twice
        assert sum(exact) == Fraction(len(exact), 2)
        doubled = difficulty_quantiles(with_difficulties([d for d in difficulties for _ in "ab"]))
        assert torch.equal(doubled, got.repeat_interleave(2))


@pytest.mark.parametrize("operation", OPERATIONS)
def test_easy_and_hard_subsets_of_generated_data(operation, fresh_seed):
    train, test = quirky_operation(operation, 800, 200, seed=fresh_seed)
    examples = train + test
    easy, hard = easy_mask(examples), hard_mask(examples)
    assert (EASY_QUANTILE, HARD_QUANTILE) == (0.25, 0.75)
    assert easy.dtype == hard.dtype == torch.bool and easy.shape == (len(examples),)
    assert easy.any() and hard.any() and not (easy & hard).any()
    difficulty = torch.tensor([e.difficulty for e in examples])
    assert difficulty[easy].max() < difficulty[hard].min()
    # an equation's two prompts share their difficulty, so their subset
    assert torch.equal(easy[0::2], easy[1::2]) and torch.equal(hard[0::2], hard[1::2])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: quirky_operation("division", 10, 10, seed=0), "operation"),
        (lambda: quirky_operation("addition", 0, 10, seed=0), "n_train"),
        (lambda: quirky_operation("addition", 10, 0, seed=0), "n_test"),
        (lambda: quirky_operation("addition", 10, -3, seed=0), "n_test"),
        (lambda: quirky_operation("addition", 2.5, 10, seed=0), "n_train"),
        (lambda: quirky_operation("addition", 10, 10, seed=0, max_digits=0), "max_digits"),
        (lambda: difficulty_quantiles([]), "examples"),
        (lambda: easy_mask([]), "examples"),
        (lambda: hard_mask([]), "examples"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ---------------------------------------------------------------- v1 unchanged

V1_FIELDS = (
    "a",
    "b",
    "shown",
    "true_sum",
    "sloppy_sum",
    "character",
    "alice_label",
    "bob_label",
    "difficulty",
    "text",
    "label",
)


def v1_digest(examples) -> str:
    lines = ("|".join(repr(getattr(e, f)) for f in V1_FIELDS) + "|" + e.answer for e in examples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# Recorded with the v1 generator before the v2 operations were added: the quirky-mamba and
# quirky-rwkv4/-mamba2 recipes' data (seed 0, two digits) and a four-digit set.
V1_DIGESTS = {
    (8800, 1000, 2, 0): (
        "ff1c3441d422eff0054e63f3ad1d03c406d972fe882e3980524f297437a7a58e",
        "caf84b50a6fb409a0721b538c0bdfb605c9591b2b709659b1b9f6dca74c628a8",
    ),
    (6000, 1000, 2, 0): (
        "0b32491adec7ceb1e9c1512298b861312706690c73a9b0150d00c9d308b3b969",
        "e6a95479a2c7fcaf5d2bad6a8b6a543a61a943f7e556937954d9f4e8edb9d720",
    ),
    (300, 100, 4, 12345): (
        "3a63afc690861d48a015bea00a7b79cda6339bb166ca82f892b8f3129e0d9dc9",
        "3029e32a374afff45e692f9bdab41b8a6fc145e0bccf567a5023f3329a9d202b",
    ),
}


@pytest.mark.parametrize("n_train, n_test, max_digits, seed", list(V1_DIGESTS))
def test_v1_addition_is_unchanged(n_train, n_test, max_digits, seed):
    train, test = quirky.quirky_addition(n_train, n_test, max_digits=max_digits, seed=seed)
    assert (v1_digest(train), v1_digest(test)) == V1_DIGESTS[n_train, n_test, max_digits, seed]
    assert {e.operation for e in train + test} == {"addition"}
