"""The text corpus of the byte-level zoo LM: documentation every CPython install carries.

Documents are the texts of ``pydoc_data.topics`` (the language reference behind ``help()``), in
key order, then the module, class and function docstrings of the standard library's own
sources, read with ``ast`` (nothing is imported) from the sorted ``.py`` files under
``sysconfig.get_paths()["stdlib"]``, tests and third-party ``site-packages`` left out. The
corpus therefore depends on the Python version; the cache manifest records its sha256.
"""

from __future__ import annotations

import ast
import functools
import os
import random
import sysconfig

import torch

SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
BYTE_OFFSET = 3  # ByT5Tokenizer: pad 0, eos 1, unk 2, then byte b is id b + 3
EOS_ID = 1


def stdlib_sources() -> list[str]:
    """Paths of the standard library's ``.py`` files, sorted, tests and site-packages left out."""
    root = sysconfig.get_paths()["stdlib"]
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        found.extend(os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))
    return found


def docstrings(path: str) -> list[str]:
    """The module, class and function docstrings of one source file (none if it fails to parse)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [d for d in found if d and d.strip()]


def documents(stdlib_files: int | None = None) -> list[str]:
    """The corpus: the pydoc topics, then the docstrings of the first ``stdlib_files`` standard
    library sources (all of them when None, none when 0). Parsed once per process."""
    return list(_parsed_documents(stdlib_files))


@functools.cache
def _parsed_documents(stdlib_files: int | None) -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)]
    for path in stdlib_sources()[:stdlib_files]:
        docs.extend(docstrings(path))
    return tuple(docs)


def split(docs: list[str], held_out: float, seed: int) -> tuple[list[str], list[str]]:
    """Train and held-out documents: a seeded shuffle, the last ``held_out`` fraction (at least
    one document) held out. No document is in both."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(held_out * len(docs)))
    if n_test >= len(docs):
        raise ValueError(f"{len(docs)} documents cannot be split with held_out={held_out}")
    return [docs[i] for i in order[:-n_test]], [docs[i] for i in order[-n_test:]]


def encode(docs: list[str]) -> torch.Tensor:
    """One token stream ``[T]`` (int64) of ByT5 ids: each document's UTF-8 bytes, then eos."""
    eos = torch.tensor([EOS_ID])
    pieces: list[torch.Tensor] = []
    for doc in docs:
        data = bytearray(doc.encode("utf-8"))
        pieces += [torch.frombuffer(data, dtype=torch.uint8).to(torch.int64) + BYTE_OFFSET, eos]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
