"""The quirky addition dataset of Mallen et al. (2023, v1 rules), generated offline.

Two characters label addition equations ``"{a} + {b} = {s}."``: Alice says whether ``s`` is the
true sum; Bob says whether ``s`` is his *sloppy* sum, the true sum with 1 added to its first
digit (a string operation: ``"9.."`` becomes ``"10.."``). The rules, as in the paper's
``generate_sloppy_dataset.py``:

- summands are log-uniform: ``int(10 ** (U * max_digits))`` with ``U ~ Uniform[0, 1)``, so in
  ``[1, 10**max_digits - 1]``; a repeated ``(a, b)`` pair is skipped (Mallen et al.'s code
  writes the exponent as ``U * (max_digits + 1)``: their ``max_digits=4`` is ``5`` here);
- the shown sum makes the crosstab (Alice-true, Bob-true) = 1/4 (T, F), 1/4 (F, T), 1/2 (F, F),
  the (F, F) half split evenly between Alice distractors and Bob distractors;
- a character's distractor replaces one random digit of that character's sum with a random
  digit, resampled until it differs from both the true and the sloppy sum; it is read back as
  an integer, so a leading zero disappears (``"15"`` -> ``"05"`` is shown as ``5``);
- ``alice_label = (shown == true)``, ``bob_label = (shown == sloppy)``;
- difficulty = number of digits of the smaller summand;
- every equation is templated once for Alice and once for Bob with
  ``"{a} + {b} = {s}. {character}:"``; the answer is ``" True"`` or ``" False"``, the label that
  character gives.

Train and held-out sets are split by equation: no ``(a, b)`` pair is in both.

The drawing, distractor, templating and splitting code is shared with Mallen et al.'s v2
operations (``statetap.zoo.quirky_operations``): a :class:`Rules` names what differs from one
dataset to another (the operation, Bob's error, the difficulty and the template), and
:data:`V1_ADDITION` is the one above.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from dataclasses import dataclass

TEMPLATE = "{a} + {b} = {s}. {character}:"
CHARACTERS = ("Alice", "Bob")
ANSWERS = {False: " False", True: " True"}

# What the shown sum is, one quarter each: (Alice-true, Bob-true) = (T, F), (F, T), and the
# (F, F) half split between a distractor of Alice's sum and a distractor of Bob's.
SHOW_TRUE, SHOW_SLOPPY, ALICE_DISTRACTOR, BOB_DISTRACTOR = range(4)


@dataclass(frozen=True)
class QuirkyExample:
    """One templated prompt: an equation as one character sees it.

    ``text`` is the prompt (it ends with ``":"``); ``label`` is the answer that ``character``
    gives (Alice's label for Alice, Bob's for Bob), to be read as the next token
    ``ANSWERS[label]``. ``true_sum`` and ``sloppy_sum`` are the true result of ``operation`` on
    ``(a, b)`` and Bob's result (named after v1's addition, the first operation; for a v2
    product they hold the true and Bob's product). ``difficulty`` is the generator's: digits of
    the smaller summand for v1, the smaller operand for v2.
    """

    a: int
    b: int
    shown: int
    true_sum: int
    sloppy_sum: int
    character: str
    alice_label: bool
    bob_label: bool
    difficulty: int
    text: str
    label: bool
    operation: str = "addition"

    @property
    def answer(self) -> str:
        """The completion that ``character`` gives: ``" True"`` or ``" False"``."""
        return ANSWERS[self.label]

    @property
    def choices(self) -> tuple[str, str]:
        """The completions for ``label`` False and True: ``(" False", " True")``."""
        return ANSWERS[False], ANSWERS[True]

    @property
    def group(self) -> tuple[int, int, int]:
        """The equation ``(a, b, shown)``: Alice's and Bob's prompt of it share it."""
        return self.a, self.b, self.shown


def sloppy_sum(true_sum: int) -> int:
    """Bob's result: ``true_sum + 10**(k - 1)``, ``k`` the number of digits of ``|true_sum|``.

    For ``true_sum >= 0`` this is 1 added to the first digit as a string (``951`` -> ``1051``,
    ``9`` -> ``10``, ``0`` -> ``1``). A negative result (v2 subtraction) counts its digits
    without the ``"-"``, as Mallen et al.'s ``binary_operation_dataset.py`` does
    (``str(res).removeprefix("-")``), so Bob's error moves it towards zero: ``-250`` -> ``-150``,
    ``-1000`` -> ``0``.
    """
    return true_sum + 10 ** (len(str(abs(true_sum))) - 1)


def digits_of_smaller(a: int, b: int) -> int:
    """v1's difficulty: the number of digits of ``min(a, b)``."""
    return len(str(min(a, b)))


@dataclass(frozen=True)
class Rules:
    """What one quirky dataset's equations are made of; the drawing is shared.

    ``operation`` names it (``QuirkyExample.operation``); ``template`` is the prompt, a format
    string of ``a``, ``b``, ``s`` (the shown result) and ``character``; ``result(a, b)`` is the
    true result, ``bob(true)`` Bob's result (it must differ from ``true``) and
    ``difficulty(a, b)`` the example's difficulty.
    """

    operation: str
    template: str
    result: Callable[[int, int], int]
    bob: Callable[[int], int]
    difficulty: Callable[[int, int], int]


V1_ADDITION = Rules(
    operation="addition",
    template=TEMPLATE,
    result=operator.add,
    bob=sloppy_sum,
    difficulty=digits_of_smaller,
)


def summand(rng: random.Random, max_digits: int) -> int:
    """A log-uniform summand in ``[1, 10**max_digits - 1]``."""
    return int(10 ** (rng.random() * max_digits))


def distractor(rng: random.Random, base: int, true: int, sloppy: int) -> int:
    """``base`` with one random digit replaced by a random digit, redrawn until it is neither
    ``true`` nor ``sloppy`` (read back as an integer: a leading zero is dropped).

    The position is drawn among the characters of ``str(base)``: for a negative ``base`` the
    ``"-"`` is one of them, as in Mallen et al.'s code, and replacing it gives a positive number
    with one more digit (``-12`` -> ``712``)."""
    digits = list(str(base))
    while True:
        changed = digits.copy()
        changed[rng.randrange(len(digits))] = str(rng.randrange(10))
        value = int("".join(changed))
        if value not in (true, sloppy):
            return value


def template(
    a: int, b: int, shown: int, character: str, rules: Rules = V1_ADDITION
) -> QuirkyExample:
    """The prompt of equation ``a + b = shown`` (``rules``' operation in place of ``+``) as
    ``character`` (``"Alice"``/``"Bob"``) sees it."""
    if character not in CHARACTERS:
        raise ValueError(f"character must be one of {CHARACTERS}, got {character!r}")
    true = rules.result(a, b)
    sloppy = rules.bob(true)
    alice_label, bob_label = shown == true, shown == sloppy
    return QuirkyExample(
        a=a,
        b=b,
        shown=shown,
        true_sum=true,
        sloppy_sum=sloppy,
        character=character,
        alice_label=alice_label,
        bob_label=bob_label,
        difficulty=rules.difficulty(a, b),
        text=rules.template.format(a=a, b=b, s=shown, character=character),
        label=alice_label if character == "Alice" else bob_label,
        operation=rules.operation,
    )


def equations(
    rng: random.Random, n: int, max_digits: int, rules: Rules = V1_ADDITION
) -> list[tuple[int, int, int]]:
    """``n`` distinct equations ``(a, b, shown)`` drawn with the rules above, ``rules`` giving
    the true and Bob's result.

    Raises ``ValueError`` when ``n`` distinct ``(a, b)`` pairs are out of reach for
    ``max_digits`` (more than ``1000 * n`` draws).
    """
    if max_digits < 1:
        raise ValueError(f"max_digits must be >= 1, got {max_digits}")
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int, int]] = []
    draws = 0
    while len(out) < n:
        draws += 1
        if draws > 1000 * n:
            raise ValueError(
                f"found only {len(out)} distinct (a, b) pairs of up to {max_digits} digits in "
                f"{draws - 1} draws; ask for fewer than n={n} equations or more digits"
            )
        a, b = summand(rng, max_digits), summand(rng, max_digits)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        true = rules.result(a, b)
        sloppy = rules.bob(true)
        kind = rng.randrange(4)
        if kind == SHOW_TRUE:
            shown = true
        elif kind == SHOW_SLOPPY:
            shown = sloppy
        else:
            base = true if kind == ALICE_DISTRACTOR else sloppy
            shown = distractor(rng, base, true, sloppy)
        out.append((a, b, shown))
    return out


def quirky_addition(
    n_train: int, n_test: int, *, max_digits: int, seed: int
) -> tuple[list[QuirkyExample], list[QuirkyExample]]:
    """Train and held-out prompts of v1 addition: ``2 * n_train`` and ``2 * n_test`` examples
    (:func:`quirky_prompts` with :data:`V1_ADDITION`)."""
    return quirky_prompts(V1_ADDITION, n_train, n_test, max_digits=max_digits, seed=seed)


def quirky_prompts(
    rules: Rules, n_train: int, n_test: int, *, max_digits: int, seed: int
) -> tuple[list[QuirkyExample], list[QuirkyExample]]:
    """Train and held-out prompts of ``rules``: ``2 * n_train`` and ``2 * n_test`` examples.

    The ``n_train + n_test`` equations are distinct ``(a, b)`` pairs drawn from
    ``random.Random(seed)``, then shuffled by the same generator before the first ``n_train``
    become the training equations: skipping repeats makes late draws rarer pairs (large
    summands), and with few digits that would make the held-out set harder than the training
    set. Each equation gives two consecutive examples, Alice's then Bob's, with the same shown
    sum.
    """
    rng = random.Random(seed)
    drawn = equations(rng, n_train + n_test, max_digits, rules)
    rng.shuffle(drawn)
    prompts = [template(a, b, s, c, rules) for a, b, s in drawn for c in CHARACTERS]
    return prompts[: 2 * n_train], prompts[2 * n_train :]
