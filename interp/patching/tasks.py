"""Clean/corrupted prompt pairs as token ids: from a pair file's rows
(:mod:`.pair_file`), or built from the zoo's quirky equations.

Built-in tasks on the quirky addition prompts ``"{a} + {b} = {s}. {character}:"``
(:mod:`statetap.zoo.quirky`), taken from the held-out equations:

* ``operand``: a prompt that its character answers ``" True"``, corrupted by changing the last
  digit of ``a`` so that neither Alice's nor Bob's rule holds (``" False"``): where does the
  operand's information travel?
* ``character``: an equation on which Alice and Bob disagree, ``Bob:`` (clean, Bob's answer)
  against ``Alice:`` (corrupted, Alice's answer): where is Bob's rule decided?

Pairs of one sweep must have one length; :func:`tokenize_pairs` keeps those of the most
common length (tasks: of the most common digit pattern, so each position has one role) and
says how many it kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from statetap.interp.patching.pair_file import TASKS
from statetap.zoo.quirky import ANSWERS, QuirkyExample, sloppy_sum


@dataclass
class PromptPairs:
    """Aligned clean and corrupted prompts ``[N, L]`` with their answers ``[N]``.

    Attributes:
        clean, corrupt: token ids ``[N, L]``.
        answer, wrong: token ids ``[N]``: the clean and the corrupted run's answer.
        tokens: each clean prompt's tokens as strings (plot labels).
        kept, total: pairs kept (one length) of the pairs given.
    """

    clean: torch.Tensor
    corrupt: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    tokens: list[list[str]]
    kept: int
    total: int

    @property
    def subject(self) -> torch.Tensor:
        """``[N, L]`` bool: the tokens where clean and corrupted prompts differ (what causal
        tracing noises)."""
        return self.clean != self.corrupt


def tokenize_pairs(
    rows: Sequence[Mapping[str, str]],
    tokenizer,
    limit: int | None = None,
    groups: Sequence[object] | None = None,
) -> PromptPairs:
    """Token ids of ``rows`` (:data:`PAIR_KEYS`), the pairs of the most common length (or of
    the most common of ``groups``, one label per row), at most ``limit`` of them.

    Raises:
        ValueError: naming the row: a clean and corrupted prompt of different lengths, or an
            answer that is not one token.
    """

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    encoded = []
    for index, row in enumerate(rows):
        clean, corrupt = encode(row["clean"]), encode(row["corrupt"])
        if len(clean) != len(corrupt):
            raise ValueError(
                f"pair {index}: clean and corrupt prompts must have the same number of tokens "
                f"(aligned by position), got {len(clean)} and {len(corrupt)}"
            )
        answers = []
        for key in ("answer", "wrong"):
            ids = encode(row[key])
            if len(ids) != 1:
                raise ValueError(f"pair {index}: {key} {row[key]!r} is {len(ids)} tokens, not one")
            answers.append(ids[0])
        encoded.append((clean, corrupt, *answers))
    labels = [len(clean) for clean, *_ in encoded] if groups is None else list(groups)
    common = Counter(labels).most_common(1)[0][0]
    chosen = [pair for pair, label in zip(encoded, labels) if label == common][:limit]
    return PromptPairs(
        clean=torch.tensor([pair[0] for pair in chosen]),
        corrupt=torch.tensor([pair[1] for pair in chosen]),
        answer=torch.tensor([pair[2] for pair in chosen]),
        wrong=torch.tensor([pair[3] for pair in chosen]),
        tokens=[tokenizer.convert_ids_to_tokens(pair[0]) for pair in chosen],
        kept=len(chosen),
        total=len(encoded),
    )


def quirky_task_rows(task: str, examples: Sequence[QuirkyExample]) -> tuple[list[dict], list]:
    """The pair rows of a built-in ``task`` (:data:`TASKS`) from quirky ``examples``, and each
    row's digit pattern (``len`` of ``a``, ``b`` and the shown sum)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    rows, patterns = [], []
    for example in examples:
        row = _character_row(example) if task == "character" else _operand_row(example)
        if row is not None:
            rows.append(row)
            patterns.append((len(str(example.a)), len(str(example.b)), len(str(example.shown))))
    if not rows:
        raise ValueError(f"no {task} pairs can be made from these {len(examples)} examples")
    return rows, patterns


def _character_row(example: QuirkyExample) -> dict | None:
    """Bob's prompt against Alice's on an equation where they disagree."""
    if example.character != "Bob" or example.alice_label == example.bob_label:
        return None
    stem = example.text.removesuffix("Bob:")
    return dict(
        clean=example.text,
        corrupt=stem + "Alice:",
        answer=ANSWERS[example.bob_label],
        wrong=ANSWERS[example.alice_label],
    )


def _operand_row(example: QuirkyExample) -> dict | None:
    """A prompt answered True, its first operand's last digit changed so that neither rule
    holds for the shown sum (both characters would answer False)."""
    head = f"{example.a} + "
    if not example.label or example.operation != "addition" or not example.text.startswith(head):
        return None
    a = example.a
    for step in range(1, 10):
        changed = a - a % 10 + (a % 10 + step) % 10
        if len(str(changed)) != len(str(a)):
            continue
        true = changed + example.b
        if example.shown not in (true, sloppy_sum(true)):
            return dict(
                clean=example.text,
                corrupt=f"{changed} + " + example.text[len(head) :],
                answer=ANSWERS[True],
                wrong=ANSWERS[False],
            )
    return None
