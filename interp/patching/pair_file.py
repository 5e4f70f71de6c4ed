"""The JSONL file of clean/corrupted prompt pairs, and the names of the built-in tasks.

A pair file has one JSON object per line: ``clean`` and ``corrupt`` (the two prompts, the same
number of tokens, aligned token by token), ``answer`` (the clean prompt's next token) and
``wrong`` (the corrupted prompt's), each one token of the model's tokenizer.  Reading it needs
neither torch nor a tokenizer, so the command line checks it before a model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("operand", "character")  # built from quirky equations: statetap.interp.patching.tasks
PAIR_KEYS = ("clean", "corrupt", "answer", "wrong")


def read_pair_rows(path: str | Path) -> list[dict]:
    """The rows of a JSONL pair file, each checked (:data:`PAIR_KEYS`, all strings).

    Raises:
        ValueError: naming the line: not a JSON object, a missing key, a value that is not a
            non-empty string; or an empty file.
    """
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path} line {number} is not JSON: {error}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            missing = [key for key in PAIR_KEYS if key not in row]
            if missing:
                raise ValueError(f"{path} line {number} lacks {missing}; a pair has {PAIR_KEYS}")
            bad = [key for key in PAIR_KEYS if not isinstance(row[key], str) or not row[key]]
            if bad:
                raise ValueError(f"{path} line {number}: {bad} must be non-empty strings")
            rows.append({key: row[key] for key in PAIR_KEYS})
    if not rows:
        raise ValueError(f"{path} holds no pairs")
    return rows
