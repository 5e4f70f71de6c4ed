"""Where the texts come from: a list, a text file, or a dataset read in streaming mode.

A :class:`TextSource` yields the texts one at a time (nothing holds the corpus in memory),
knows how many there are when the source says so, and carries a *fingerprint*: a SHA-256 of
the input's bytes (a file, or every file of a saved ``datasets`` folder), or of the texts of
an in-memory list.  A hub dataset is identified by its name, configuration, split and revision
(its files are not on this machine to hash).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class TextSource:
    """Texts to extract from.

    Attributes:
        description: what the input is (kind, path or name, split, text field), for the manifest.
        fingerprint: ``sha256:...`` of the input (module docstring).
        open: a fresh iterator over the texts, from the first.
        total: how many texts there are, or None when the source does not say.
    """

    description: dict
    fingerprint: str
    open: Callable[[], Iterator[str]]
    total: int | None = None

    def rows(self, skip: int = 0, limit: int | None = None) -> Iterator[tuple[int, str]]:
        """``(index in the input, text)`` from text ``skip`` on, at most ``limit`` of them."""
        stop = None if limit is None else skip + limit
        return itertools.islice(enumerate(self.open()), skip, stop)

    def count(self, skip: int = 0, limit: int | None = None) -> int | None:
        """How many texts :meth:`rows` yields, when :attr:`total` is known (else ``limit``)."""
        if self.total is None:
            return limit
        remaining = max(0, self.total - skip)
        return remaining if limit is None else min(limit, remaining)


def texts_source(texts: Sequence[str]) -> TextSource:
    """An in-memory list of texts (fingerprint: the hash of the texts)."""
    texts = list(texts)
    digest = hashlib.sha256()
    for text in texts:
        _check_text(text, "a text")
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return TextSource(
        {"kind": "texts"}, f"sha256:{digest.hexdigest()}", lambda: iter(texts), len(texts)
    )


def text_file_source(path: str | Path) -> TextSource:
    """A UTF-8 file, one text per line (the newline is not part of the text)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"text_file {str(path)!r} is not a file")

    def lines() -> Iterator[str]:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")

    with open(path, "rb") as handle:
        total = sum(1 for _ in handle)
    return TextSource({"kind": "text_file", "path": str(path)}, hash_files([path]), lines, total)


def dataset_source(
    name: str,
    split: str | None = None,
    text_field: str = "text",
    config_name: str | None = None,
    revision: str | None = None,
) -> TextSource:
    """A dataset through the ``datasets`` library, read row by row.

    ``name`` is a JSONL / JSON, parquet or arrow file (streamed; ``split`` names it, default
    ``"train"``), a folder written by ``Dataset.save_to_disk`` (memory-mapped; ``split``
    chooses among a ``DatasetDict``'s splits), or a hub dataset (streamed).

    Raises:
        ValueError: an unknown file type, a split that does not exist, or rows without
            ``text_field`` (when read; the message lists the columns).
    """
    import datasets

    path = Path(name)
    description = {"kind": "dataset", "name": name, "split": split, "text_field": text_field}
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"dataset {name!r}: expected a {', '.join(FILE_BUILDERS)} file, a saved "
                "datasets folder or a hub name"
            )
        split = split or "train"
        data = datasets.load_dataset(
            builder, data_files={split: str(path)}, split=split, streaming=True
        )
        texts = _texts_of(data, text_field, name)
        return TextSource(description, hash_files([path]), texts, _rows_in(path))
    if path.is_dir():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            split = split or "train"
            if split not in data:
                raise ValueError(f"dataset {name!r} has splits {sorted(data)}, not split={split!r}")
            data = data[split]
        elif split is not None:
            raise ValueError(
                f"dataset {name!r} holds one dataset, not splits: drop split={split!r}"
            )
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return TextSource(
            description, hash_files(files, path), _texts_of(data, text_field, name), len(data)
        )
    split = split or "train"
    data = datasets.load_dataset(name, config_name, split=split, streaming=True, revision=revision)
    identity = f"hub:{name}:{config_name}:{split}:{revision}".encode()
    description |= {"config_name": config_name, "revision": revision}
    total = None
    if data.info.splits and split in data.info.splits:
        total = data.info.splits[split].num_examples
    return TextSource(
        description,
        f"sha256:{hashlib.sha256(identity).hexdigest()}",
        _texts_of(data, text_field, name),
        total,
    )


def hash_files(paths: Iterable[Path], root: Path | None = None, chunk: int = 1 << 20) -> str:
    """``sha256:...`` over the files' bytes, read in chunks (constant memory), and with a
    ``root`` their names relative to it (a folder's layout is part of its content)."""
    digest = hashlib.sha256()
    for path in paths:
        if root is not None:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _rows_in(path: Path) -> int | None:
    """Rows of a JSONL or parquet file, read from its lines or its footer (for the progress
    bar's ETA); None for other files."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    if suffix == ".parquet":
        import pyarrow.parquet

        return pyarrow.parquet.ParquetFile(path).metadata.num_rows
    return None


def _texts_of(data, text_field: str, name: str) -> Callable[[], Iterator[str]]:
    def texts() -> Iterator[str]:
        for index, row in enumerate(data):
            if text_field not in row:
                raise ValueError(
                    f"dataset {name!r} row {index} has no text_field {text_field!r}; its "
                    f"columns are {sorted(row)}"
                )
            yield _check_text(row[text_field], f"dataset {name!r} row {index} {text_field!r}")

    return texts


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    return text
