"""Contrast prompts for steering, and the A/B front end of Rimsky et al.'s datasets.

The core is general: :class:`Prompts` are token sequences that end just before an answer, and
:class:`ContrastPairs` add, for each prompt, the token of the completion that matches the
behaviour and the token of the one that does not.  The steering vector of a pair set is read
at those completion tokens (``pairs.completions()``); a sweep measures
``p(matching) / (p(matching) + p(not matching))`` at the prompts' last token.  Any two answer
tokens work (``" True"`` / ``" False"``), and vectors can also come from two unrelated prompt
sets (:func:`statetap.interp.steering.vectors.mean_difference`).

The A/B front end reads rows ``{"question", "answer_matching_behavior",
"answer_not_matching_behavior"}`` (answers ``"(A)"`` / ``"(B)"``) from JSON, JSONL or any
iterable of mappings (a ``datasets.Dataset``), puts each question in a
:class:`PromptTemplate` that ends just before the answer letter, and checks that each letter
is one token after the prompt in the tokenizer.

Example:
    >>> from transformers import ByT5Tokenizer
    >>> rows = [{"question": "Help?\\n(A) yes\\n(B) no", "answer_matching_behavior": "(A)",
    ...          "answer_not_matching_behavior": "(B)"}]
    >>> pairs = ab_pairs(load_ab_items(rows), ByT5Tokenizer(), TEMPLATES["plain"], letters="1-2")
    >>> len(pairs), pairs.prompts.ids[0][-1] == ord("(") + 3, pairs.matching.tolist()
    (1, True, [52])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# letter format -> (first letter, second letter); the datasets are written in "A-B"
LETTERS = {"A-B": ("A", "B"), "1-2": ("1", "2")}
MATCHING, NOT_MATCHING = "answer_matching_behavior", "answer_not_matching_behavior"


def fingerprint(*parts: object) -> str:
    """sha256 of the JSON of ``parts`` (token ids, texts): what a saved artifact was made from."""
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Prompts:
    """Token sequences that end just before an answer.

    Attributes:
        ids: one tuple of token ids per prompt (lengths differ).
        instruction: per prompt, how many of its first tokens are the instruction (the tokens
            after it are the response so far, e.g. ``" ("``); None when unknown.  Only the
            ``"instruction"`` steering mode (Rimsky et al.'s) needs it.
    """

    ids: tuple[tuple[int, ...], ...]
    instruction: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        ids = tuple(tuple(int(t) for t in row) for row in self.ids)
        if not ids or any(not row for row in ids):
            raise ValueError("Prompts.ids must hold at least one non-empty token sequence")
        object.__setattr__(self, "ids", ids)
        if self.instruction is not None:
            instruction = tuple(int(n) for n in self.instruction)
            if len(instruction) != len(ids):
                raise ValueError(
                    f"Prompts.instruction has {len(instruction)} entries for {len(ids)} prompts"
                )
            bad = [i for i, (n, row) in enumerate(zip(instruction, ids)) if not 0 <= n <= len(row)]
            if bad:
                raise ValueError(f"Prompts.instruction of prompt {bad[0]} is outside the prompt")
            object.__setattr__(self, "instruction", instruction)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.ids]

    def select(self, rows: Sequence[int]) -> Prompts:
        """The prompts ``rows``, in that order."""
        instruction = None if self.instruction is None else [self.instruction[i] for i in rows]
        return Prompts(tuple(self.ids[i] for i in rows), instruction)

    @classmethod
    def from_texts(
        cls,
        tokenizer,
        texts: Sequence[str],
        instructions: Sequence[str] | None = None,
        bos: bool = False,
    ) -> Prompts:
        """Tokenize ``texts`` (no special tokens; ``bos`` puts the tokenizer's BOS first).

        ``instructions[i]``, a prefix of ``texts[i]``, marks where its instruction ends: the
        instruction is the longest run of leading tokens that tokenizing it alone also gives.
        """
        ids = _tokenize(tokenizer, texts, bos)
        if instructions is None:
            return cls(tuple(map(tuple, ids)))
        if len(instructions) != len(texts):
            raise ValueError(f"{len(instructions)} instructions for {len(texts)} texts")
        heads = _tokenize(tokenizer, instructions, bos)
        counts = [_common_prefix(head, row) for head, row in zip(heads, ids)]
        return cls(tuple(map(tuple, ids)), tuple(counts))


@dataclass(frozen=True)
class ContrastPairs:
    """Prompts with the token of the matching and of the non-matching completion.

    Attributes:
        prompts: the prompts, ``N`` of them.
        matching, not_matching: ``[N]`` token ids (int64); they differ in every row.
    """

    prompts: Prompts
    matching: torch.Tensor
    not_matching: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, Prompts):
            raise TypeError(f"prompts must be Prompts, got {type(self.prompts).__name__}")
        for name in ("matching", "not_matching"):
            value = torch.as_tensor(getattr(self, name))
            if value.is_floating_point() or value.shape != (len(self.prompts),):
                raise ValueError(
                    f"{name} must be {len(self.prompts)} token ids (one per prompt), "
                    f"got {value.dtype} {list(value.shape)}"
                )
            object.__setattr__(self, name, value.long().cpu())
        same = (self.matching == self.not_matching).nonzero().flatten()
        if len(same):
            raise ValueError(
                f"row {int(same[0])}: the matching and the non-matching answer are the same token"
            )

    def __len__(self) -> int:
        return len(self.prompts)

    def completions(self) -> tuple[Prompts, Prompts]:
        """Each prompt followed by its matching answer, and by its non-matching answer: the
        positive and negative sequences of a steering vector (read at their last token)."""
        return tuple(
            Prompts(tuple(row + (int(t),) for row, t in zip(self.prompts.ids, answers)))
            for answers in (self.matching, self.not_matching)
        )

    def select(self, rows: Sequence[int]) -> ContrastPairs:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        prompts = self.prompts.select(rows)
        return ContrastPairs(prompts, self.matching[index], self.not_matching[index])

    def fingerprint(self) -> str:
        """sha256 of the prompts' and answers' token ids."""
        return fingerprint(self.prompts.ids, self.matching.tolist(), self.not_matching.tolist())

    @classmethod
    def from_texts(
        cls,
        tokenizer,
        prompts: Sequence[str],
        matching: Sequence[str] | str,
        not_matching: Sequence[str] | str,
        instructions: Sequence[str] | None = None,
        bos: bool = False,
    ) -> ContrastPairs:
        """Tokenize prompts and answers (one answer string for every row, or one per row).

        An answer must be exactly one token *after its prompt*: tokenizing ``prompt + answer``
        must give the prompt's tokens and one more (so ``"A"`` after ``"("`` is checked in
        context, as the model will see it).

        Raises:
            ValueError: an answer that is not one token after its prompt (or the unknown
                token), or both answers of a row the same token.
        """
        prompts = list(prompts)
        tokenized = Prompts.from_texts(tokenizer, prompts, instructions, bos)
        answers = {}
        for name, given in (("matching", matching), ("not_matching", not_matching)):
            given = [given] * len(prompts) if isinstance(given, str) else list(given)
            if len(given) != len(prompts):
                raise ValueError(f"{name} has {len(given)} answers for {len(prompts)} prompts")
            completed = _tokenize(tokenizer, [p + a for p, a in zip(prompts, given)], bos)
            answers[name] = [
                _answer_token(tokenizer, row, whole, i, name, answer)
                for i, (row, whole, answer) in enumerate(zip(tokenized.ids, completed, given))
            ]
        matching, not_matching = (torch.tensor(answers[k]) for k in ("matching", "not_matching"))
        return cls(tokenized, matching, not_matching)


def _tokenize(tokenizer, texts: Sequence[str], bos: bool) -> list[list[int]]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if not bos:
        return ids
    if tokenizer.bos_token_id is None:
        raise ValueError("bos=True, but the tokenizer has no BOS token")
    return [[tokenizer.bos_token_id, *row] for row in ids]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _answer_token(tokenizer, prompt, whole, row: int, name: str, answer: str) -> int:
    if len(whole) != len(prompt) + 1 or tuple(whole[: len(prompt)]) != tuple(prompt):
        raise ValueError(
            f"{name} answer {answer!r} of row {row} is not a single token after its prompt in "
            f"this tokenizer (prompt + answer tokenizes to {len(whole)} tokens, the prompt to "
            f"{len(prompt)})"
        )
    token = int(whole[-1])
    if tokenizer.unk_token_id is not None and token == tokenizer.unk_token_id:
        raise ValueError(f"{name} answer {answer!r} of row {row} is the tokenizer's unknown token")
    return token


# ---------------------------------------------------------------------------- the A/B front end
@dataclass(frozen=True)
class ABItem:
    """One row of an A/B behaviour dataset; ``matching`` / ``not_matching`` are the letters
    (``"A"`` or ``"B"``) of the answers that match and do not match the behaviour."""

    question: str
    matching: str
    not_matching: str


def load_ab_items(source: str | Path | Iterable[Mapping]) -> list[ABItem]:
    """Rows in Rimsky et al.'s format from a ``.json`` file (a list of rows), a ``.jsonl``
    file (one row per line), or an iterable of mappings (a ``datasets.Dataset``).

    Raises:
        ValueError: a row without a question or without both answers, or an answer that is
            not ``"(A)"`` / ``"(B)"`` (``"A"``, ``" (B)"`` … are accepted).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise ValueError(f"{path} must hold a JSON list of rows")
    else:
        rows = list(source)
    if not rows:
        raise ValueError("the dataset has no rows")
    return [_ab_item(i, row) for i, row in enumerate(rows)]


def _ab_item(index: int, row: object) -> ABItem:
    if not isinstance(row, Mapping):
        raise ValueError(f"dataset row {index} is a {type(row).__name__}, not a mapping")
    missing = [key for key in ("question", MATCHING, NOT_MATCHING) if key not in row]
    if missing:
        raise ValueError(
            f"dataset row {index} has no {', '.join(map(repr, missing))}: every row needs a "
            f"question, {MATCHING!r} and {NOT_MATCHING!r}"
        )
    if not isinstance(row["question"], str):
        raise ValueError(f"dataset row {index}: 'question' must be a string")
    letters = [_letter(index, key, row[key]) for key in (MATCHING, NOT_MATCHING)]
    if letters[0] == letters[1]:
        raise ValueError(f"dataset row {index}: both answers are ({letters[0]})")
    return ABItem(row["question"], *letters)


def _letter(index: int, key: str, answer: object) -> str:
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    letter = answer.strip().strip("()").strip() if isinstance(answer, str) else None
    if letter not in LETTERS["A-B"]:
        raise ValueError(f"dataset row {index}: {key} must be '(A)' or '(B)', got {answer!r}")
    return letter


@dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes a prompt that ends just before the answer letter.

    The prompt is ``instruction`` (with ``{question}`` replaced) followed by ``response``; with
    ``chat=True`` the instruction is the tokenizer's chat template applied to the question as a
    user message (after an optional ``system`` message), with the generation prompt.

    Attributes:
        instruction: text with a ``{question}`` field (ignored with ``chat=True``).
        response: the start of the answer, up to the letter (``"("``).
        chat: use the tokenizer's chat template.
        system: system message for the chat template.
        bos: put the tokenizer's BOS token first (Llama-style models; a chat template
            usually writes it itself).
    """

    instruction: str = "{question}"
    response: str = "\n\nAnswer: ("
    chat: bool = False
    system: str | None = None
    bos: bool = False

    def __post_init__(self) -> None:
        if not self.chat and "{question}" not in self.instruction:
            raise ValueError(
                f"PromptTemplate.instruction must contain '{{question}}', got {self.instruction!r}"
            )

    def instruction_text(self, question: str, tokenizer) -> str:
        if not self.chat:
            return self.instruction.replace("{question}", question)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("PromptTemplate(chat=True): the tokenizer has no chat template")
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# The templates of the paper's code (rnngineering Steering/steer.py) and a plain one.
TEMPLATES = {
    "plain": PromptTemplate(),
    "hermes": PromptTemplate("\x16user\n{question}\x17\n\x16assistant\n", "("),
    "llama": PromptTemplate("[INST] {question} [/INST]", " (", bos=True),
    "chat": PromptTemplate(chat=True, response="("),
}


def ab_pairs(
    items: Sequence[ABItem],
    tokenizer,
    template: PromptTemplate = TEMPLATES["plain"],
    letters: str = "A-B",
) -> ContrastPairs:
    """Contrast pairs of A/B items: ``template`` around each question, the matching and the
    non-matching letter as the two answers.

    Args:
        items: rows from :func:`load_ab_items`.
        tokenizer: a transformers tokenizer.
        template: see :class:`PromptTemplate`.
        letters: ``"A-B"``, or ``"1-2"`` (``"(A)"`` / ``"(B)"`` in the question become
            ``"(1)"`` / ``"(2)"``, and so do the answers: a control for letter bias).
    """
    if letters not in LETTERS:
        raise ValueError(f"letters must be one of {sorted(LETTERS)}, got {letters!r}")
    if not items or not all(isinstance(item, ABItem) for item in items):
        raise TypeError("items must be a non-empty sequence of ABItem (see load_ab_items)")
    rename = dict(zip(LETTERS["A-B"], LETTERS[letters]))
    questions = [item.question for item in items]
    if letters != "A-B":
        for old, new in rename.items():
            questions = [q.replace(f"({old})", f"({new})") for q in questions]
    instructions = [template.instruction_text(q, tokenizer) for q in questions]
    return ContrastPairs.from_texts(
        tokenizer,
        [text + template.response for text in instructions],
        [rename[item.matching] for item in items],
        [rename[item.not_matching] for item in items],
        instructions=instructions,
        bos=template.bos,
    )
