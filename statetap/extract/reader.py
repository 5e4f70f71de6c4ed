"""Reading an extraction back, lazily: :func:`open_extraction`.

The shards are opened with safetensors' ``safe_open`` (memory-mapped); a row, or a range of
rows, reads only its own slices.  Rows come in input order, whichever rank wrote them.

Example:
    >>> extraction = open_extraction("runs/x")                            # doctest: +SKIP
    >>> extraction[0]["residual.3"].shape          # fixed positions: [P, H]  # doctest: +SKIP
    >>> for batch in extraction.batches(256): ...  # [256, P, H] per name     # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(extraction, batch_size=None)     # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from statetap.extract.manifest import read_manifest
from statetap.extract.shards import OFFSETS, POSITIONS, ROW


class Extraction(torch.utils.data.Dataset):
    """A finished extraction, read on demand; also a ``torch.utils.data.Dataset`` of rows.

    ``extraction[i]`` is row ``i`` (input order): ``{name: tensor}`` with ``"{site}.{layer}"``
    ``[P, *shape]`` (fixed positions) or ``[n_i, *shape]`` (a span: the row's tokens), plus
    ``row`` (the text's index in the input) and ``positions`` (``[P]`` / ``[n_i]``).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest["complete"]:
            raise ValueError(
                f"the extraction in {self.folder} did not finish; run the same command again "
                "to resume it (its manifest lists the shards written so far)"
            )
        self.ragged = self.manifest["layout"] == "ragged"
        self.names = list(self.manifest["tensors"])
        self._handles = [
            safe_open(self.folder / shard["file"], framework="pt")
            for shard in self.manifest["shards"]
        ]
        counts = [shard["rows"] for shard in self.manifest["shards"]]
        self._starts = [0]
        for count in counts:
            self._starts.append(self._starts[-1] + count)
        self._offsets = [h.get_tensor(OFFSETS) for h in self._handles] if self.ragged else None

    def __reduce__(self):
        # the open shard handles do not pickle: a copy (a DataLoader worker) opens them anew
        return (Extraction, (str(self.folder),))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not isinstance(index, int):
            raise TypeError(f"index an extraction with an int row, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} is out of range for an extraction of {n} rows")
        index %= n
        item = self.rows(index, index + 1)
        return {
            name: (value[0] if name == ROW else value) if self.ragged else value[0]
            for name, value in item.items()
            if name != OFFSETS
        }

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows ``start .. stop - 1``: ``[rows, P, *shape]`` per name (fixed positions) or
        ``[tokens, *shape]`` with ``offsets`` ``[rows + 1]`` (a span), plus ``row`` and
        ``positions``."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} are out of range for {len(self)} rows")
        parts = []
        shard = bisect.bisect_right(self._starts, start) - 1
        while start < stop and shard < len(self._handles):
            first, last = (
                start - self._starts[shard],
                min(stop, self._starts[shard + 1]) - self._starts[shard],
            )
            if last > first:
                parts.append(self._read(shard, first, last))
            start = self._starts[shard + 1]
            shard += 1
        if not parts:
            return self._read(0, 0, 0) if self._handles else {}
        if not self.ragged:
            return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        joined = {name: torch.cat([p[name] for p in parts]) for name in parts[0] if name != OFFSETS}
        counts = torch.cat([p[OFFSETS].diff() for p in parts])
        joined[OFFSETS] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return joined

    def batches(self, size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive :meth:`rows` of ``size`` rows (the last may be shorter)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        for start in range(0, len(self), size):
            yield self.rows(start, min(start + size, len(self)))

    def to_datasets(self, cache_dir: str | Path | None = None):
        """The rows as a ``datasets.Dataset`` (written to arrow files under ``cache_dir``, default
        the ``datasets`` cache): one column per name, tensors as nested lists."""
        import datasets

        return datasets.Dataset.from_generator(
            _row_dicts,
            # the manifest is part of the cache key: a folder extracted again converts again
            gen_kwargs={"folder": str(self.folder), "manifest": json.dumps(self.manifest)},
            cache_dir=None if cache_dir is None else str(cache_dir),
        )

    def _read(self, shard: int, first: int, last: int) -> dict[str, torch.Tensor]:
        handle = self._handles[shard]
        if not self.ragged:
            return {
                name: handle.get_slice(name)[first:last] for name in (*self.names, ROW, POSITIONS)
            }
        offsets = self._offsets[shard][first : last + 1]
        a, b = int(offsets[0]), int(offsets[-1])
        tensors = {name: handle.get_slice(name)[a:b] for name in (*self.names, POSITIONS)}
        return tensors | {ROW: handle.get_slice(ROW)[first:last], OFFSETS: offsets - a}


def open_extraction(folder: str | Path) -> Extraction:
    """The finished extraction in ``folder``, opened lazily (:class:`Extraction`)."""
    return Extraction(folder)


def load_extraction(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A finished extraction read whole into memory: its manifest and every tensor, rows
    concatenated in input order (:meth:`Extraction.rows` of all rows)."""
    extraction = open_extraction(folder)
    return extraction.manifest, extraction.rows(0, len(extraction))


def _row_dicts(folder: str, manifest: str) -> Iterator[dict]:
    extraction = open_extraction(folder)
    if json.loads(manifest) != extraction.manifest:
        raise RuntimeError(f"the extraction in {folder} changed while it was being converted")
    for index in range(len(extraction)):
        yield {name: value.tolist() for name, value in extraction[index].items()}
