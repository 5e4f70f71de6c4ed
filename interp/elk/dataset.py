"""Quirky prompts from a dataset in the column format of EleutherAI's ``quirky_*`` datasets.

Each row is one prompt as one character sees it:

- ``statement``: the prompt, ending just before the answer (it names the character);
- ``choices``: the two completions, for the label False and for True (``[" False", " True"]``,
  ``[" No", " Yes"]`` ...), each one token of the model's tokenizer;
- ``character``: ``"Alice"`` (who answers truthfully) or ``"Bob"`` (who makes the dataset's
  systematic error);
- ``label``: the answer the character gives (``alice_label`` for Alice, ``bob_label`` for Bob);
- ``alice_label``, ``bob_label``: the truth and Bob's answer (bools or 0/1);
- ``difficulty``: a number; the easy and hard subsets are its quantiles.

Other columns are ignored. Alice's and Bob's prompts of one statement form a *group*: the
statement with the character's name replaced by ``{character}``, so a probe split keeps both on
one side. :func:`load_quirky_dataset` reads a JSONL / JSON / parquet / arrow file, a
``save_to_disk`` folder or a hub dataset through ``datasets`` and checks every row.

Example:
    >>> rows = [dict(statement="1 + 1 = 2. Alice:", choices=[" False", " True"],
    ...              character="Alice", label=1, alice_label=True, bob_label=False,
    ...              difficulty=1)]
    >>> prompt = quirky_prompts(rows)[0]
    >>> prompt.answer, prompt.group
    (' True', '1 + 1 = 2. {character}:')
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from statetap.zoo.quirky import CHARACTERS

COLUMNS = ("statement", "choices", "character", "label", "alice_label", "bob_label", "difficulty")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class QuirkyPrompt:
    """One row of a quirky dataset (module docstring); ``text`` is its ``statement``."""

    text: str
    choices: tuple[str, str]
    character: str
    label: bool
    alice_label: bool
    bob_label: bool
    difficulty: float

    @property
    def answer(self) -> str:
        """The completion ``character`` gives: ``choices[label]``."""
        return self.choices[self.label]

    @property
    def group(self) -> str:
        """The statement with the character's name replaced by ``{character}``."""
        return self.text.replace(self.character, "{character}")


def quirky_prompts(rows: Iterable[Mapping], name: str = "dataset") -> list[QuirkyPrompt]:
    """:class:`QuirkyPrompt` of each row (a mapping with the :data:`COLUMNS`).

    Raises:
        ValueError: naming the row (of ``name``) and the column: a missing column, a character
            other than Alice or Bob, ``choices`` that are not two distinct strings, a label
            that is not a bool or 0/1, a ``label`` that is not the character's, a difficulty
            that is not a number; or no rows.
    """
    prompts = []
    for index, row in enumerate(rows):
        where = f"{name} row {index}"
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{where} lacks the columns {missing}; it has {sorted(row)}")
        statement, choices, character = row["statement"], row["choices"], row["character"]
        if not isinstance(statement, str) or not statement:
            raise ValueError(f"{where}: statement must be a non-empty str, got {statement!r}")
        if character not in CHARACTERS:
            raise ValueError(f"{where}: character must be one of {CHARACTERS}, got {character!r}")
        if (
            isinstance(choices, str)
            or len(choices) != 2
            or not all(isinstance(c, str) and c for c in choices)
            or choices[0] == choices[1]
        ):
            raise ValueError(f"{where}: choices must be two distinct strings, got {choices!r}")
        labels = {key: _label(row[key], f"{where}: {key}") for key in COLUMNS[3:6]}
        own = labels["alice_label" if character == "Alice" else "bob_label"]
        if labels["label"] != own:
            raise ValueError(
                f"{where}: label {labels['label']} is not {character}'s label ({own}); label is "
                "the answer the row's character gives"
            )
        difficulty = row["difficulty"]
        if isinstance(difficulty, bool) or not isinstance(difficulty, numbers.Real):
            raise ValueError(f"{where}: difficulty must be a number, got {difficulty!r}")
        prompts.append(
            QuirkyPrompt(
                statement, tuple(choices), character, **labels, difficulty=float(difficulty)
            )
        )
    if not prompts:
        raise ValueError(f"{name} holds no rows")
    return prompts


def load_quirky_dataset(name: str | Path, split: str | None = None) -> list[QuirkyPrompt]:
    """The prompts of a quirky dataset read with ``datasets``: a JSONL / JSON / parquet / arrow
    file, a ``save_to_disk`` folder (``split`` chooses among a ``DatasetDict``'s splits) or a hub
    dataset (``split`` default ``"train"``).

    Raises:
        FileNotFoundError: ``name`` looks like a local file (it has a file suffix) that does
            not exist.
        ValueError: an unknown file type, a missing split, or a bad row (:func:`quirky_prompts`).
    """
    import datasets

    path = Path(name)
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"dataset {name}: expected a {', '.join(FILE_BUILDERS)} file")
        data = datasets.load_dataset(builder, data_files={"rows": str(path)}, split="rows")
    elif path.is_dir():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if (split or "train") not in data:
                raise ValueError(f"dataset {name} has splits {sorted(data)}, not {split!r}")
            data = data[split or "train"]
    elif path.suffix.lower() in FILE_BUILDERS:
        raise FileNotFoundError(f"dataset {name}: no such file")
    else:
        data = datasets.load_dataset(str(name), split=split or "train")
    return quirky_prompts(data, f"dataset {name}")


def _label(value: object, where: str) -> bool:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{where} must be a bool or 0/1, got {value!r}")
