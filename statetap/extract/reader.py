"""Reading an extraction back, lazily: :func:`open_extraction`.

The shards are opened with safetensors' ``safe_open`` (memory-mapped); a row, or a range of
rows, reads only its own slices.  Rows come in input order, whichever rank wrote them.  Each
shard is checked against the SHA-256 in the manifest when it is first read (``verify=False``
skips that); a damaged shard raises an error naming the file and the way out.  A run that did
not finish is read with ``partial=True``: the shards it finished, nothing else.

Texts left out by the extraction (no tokens, or too short for the positions) have no row, so
stored row ``i`` is input row ``i`` only when none was left out: each row carries its input
index as ``row``, and :meth:`Extraction.index_of` maps an input row to its stored row.

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
from safetensors import SafetensorError, safe_open

from statetap.extract.manifest import read_manifest
from statetap.extract.shards import OFFSETS, POSITIONS, ROW, file_sha256

RECOMPUTE = "run the same extract command again: it recomputes that shard's window"


class Extraction(torch.utils.data.Dataset):
    """An extraction, read on demand; also a ``torch.utils.data.Dataset`` of rows.

    ``extraction[i]`` is stored row ``i`` (input order): ``{name: tensor}`` with
    ``"{site}.{layer}"`` ``[P, *shape]`` (fixed positions) or ``[n_i, *shape]`` (a span: the
    row's tokens), plus ``row`` (the text's index in the input: see :meth:`index_of`) and
    ``positions`` (``[P]`` / ``[n_i]``).

    Args:
        folder: the extraction's output folder.
        partial: read a run that did not finish (killed, or stopped by an error): the shards
            its manifest lists, in window order; rows of the windows without a shard are absent.
        verify: check each shard's SHA-256 against the manifest when it is first read.

    Raises:
        ValueError: an unfinished extraction without ``partial``, a damaged manifest or shard
            (naming the file and the way out).
    """

    def __init__(self, folder: str | Path, partial: bool = False, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.partial, self.verify = partial, verify
        self.manifest = read_manifest(self.folder)
        shards = self.manifest["shards"]
        if not self.manifest["complete"] and not partial:
            raise ValueError(
                f"the extraction in {self.folder} did not finish ({len(shards)} shard(s) "
                "written); run the same command again to resume it, or read the finished "
                "shards with open_extraction(folder, partial=True)"
            )
        self.ragged = self.manifest["layout"] == "ragged"
        self.names = list(self.manifest["tensors"])
        self._shards = sorted(shards, key=lambda shard: shard["window"])
        self._handles: dict[int, object] = {}
        self._offsets: dict[int, torch.Tensor] = {}
        self._starts = [0]
        for shard in self._shards:
            self._starts.append(self._starts[-1] + shard["rows"])
        self._first_rows = [shard["input_rows"][0] for shard in self._shards]

    def __reduce__(self):
        # the open shard handles do not pickle: a copy (a DataLoader worker) opens them anew
        return (Extraction, (str(self.folder), self.partial, self.verify))

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
        while start < stop and shard < len(self._shards):
            first, last = (
                start - self._starts[shard],
                min(stop, self._starts[shard + 1]) - self._starts[shard],
            )
            if last > first:
                parts.append(self._read(shard, first, last))
            start = self._starts[shard + 1]
            shard += 1
        if not parts:
            return self._read(0, 0, 0) if self._shards else {}
        if not self.ragged:
            return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        joined = {name: torch.cat([p[name] for p in parts]) for name in parts[0] if name != OFFSETS}
        counts = torch.cat([p[OFFSETS].diff() for p in parts])
        joined[OFFSETS] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return joined

    def index_of(self, input_row: int) -> int:
        """The stored row of input row ``input_row`` (the text's index in the input, as
        ``row`` holds it): ``extraction[extraction.index_of(k)]`` is text ``k``.

        Raises:
            KeyError: the text has no row, naming why: left out (no tokens, or too short for
                the positions), in a window a partial run has not written, or outside the
                extracted rows.
        """
        if not isinstance(input_row, int) or isinstance(input_row, bool):
            raise TypeError(f"input_row must be an int, got {type(input_row).__name__}")
        shard = bisect.bisect_right(self._first_rows, input_row) - 1
        entry = self._shards[shard] if shard >= 0 else None
        if entry is None or not entry["input_rows"][0] <= input_row < entry["input_rows"][1]:
            where = "a window this partial run has not written" if self.partial else None
            raise KeyError(
                f"input row {input_row} has no row in {self.folder}: it is outside the "
                f"extracted input rows{'' if where is None else ', or in ' + where}"
            )
        left_out = entry["left_out"]
        for reason, what in (
            ("empty", "it has no tokens"),
            ("short", f"it is too short for the positions {self.manifest['config']['positions']}"),
        ):
            if input_row in left_out[reason]:
                raise KeyError(
                    f"input row {input_row} was left out of {self.folder}: {what} "
                    f"(manifest: {entry['file']} left_out.{reason})"
                )
        before = sum(row < input_row for rows in left_out.values() for row in rows)
        return self._starts[shard] + input_row - entry["input_rows"][0] - before

    def batches(self, size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive :meth:`rows` of ``size`` rows (the last may be shorter)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        for start in range(0, len(self), size):
            yield self.rows(start, min(start + size, len(self)))

    def to_datasets(self, cache_dir: str | Path | None = None, progress: bool = False):
        """The rows as a ``datasets.Dataset`` (written to arrow files under ``cache_dir``, default
        the ``datasets`` cache): one column per name, tensors as nested lists. ``progress``:
        show ``datasets``' progress bars while it converts (off by default; the setting is
        restored afterwards)."""
        import datasets

        was_disabled = datasets.are_progress_bars_disabled()
        if not progress:
            datasets.disable_progress_bars()
        try:
            return datasets.Dataset.from_generator(
                _row_dicts,
                # the manifest is part of the cache key: a folder extracted again converts again
                gen_kwargs={
                    "folder": str(self.folder),
                    "manifest": json.dumps(self.manifest),
                    "partial": self.partial,
                    "verify": self.verify,
                },
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        finally:
            if not was_disabled:
                datasets.enable_progress_bars()

    def _handle(self, shard: int):
        """Shard ``shard`` opened (and, with ``verify``, checked) on first use."""
        if shard not in self._handles:
            entry = self._shards[shard]
            path = self.folder / entry["file"]
            if not path.is_file():
                raise ValueError(f"{path} is missing: {RECOMPUTE}")
            if self.verify and file_sha256(path) != entry.get("sha256"):
                problem = (
                    "has no SHA-256 in the manifest (its run stopped before recording it)"
                    if entry.get("sha256") is None
                    else "does not match the SHA-256 in the manifest: it is damaged"
                )
                raise ValueError(
                    f"{path} {problem}; {RECOMPUTE}, or open the extraction with verify=False "
                    "to read it unchecked"
                )
            try:
                handle = safe_open(path, framework="pt")
                if self.ragged:
                    self._offsets[shard] = handle.get_tensor(OFFSETS)
            except SafetensorError as error:
                raise ValueError(f"{path} is damaged ({error}); {RECOMPUTE}") from None
            self._handles[shard] = handle
        return self._handles[shard]

    def _read(self, shard: int, first: int, last: int) -> dict[str, torch.Tensor]:
        handle = self._handle(shard)
        try:
            if not self.ragged:
                names = (*self.names, ROW, POSITIONS)
                return {name: handle.get_slice(name)[first:last] for name in names}
            offsets = self._offsets[shard][first : last + 1]
            a, b = int(offsets[0]), int(offsets[-1])
            tensors = {name: handle.get_slice(name)[a:b] for name in (*self.names, POSITIONS)}
            return tensors | {ROW: handle.get_slice(ROW)[first:last], OFFSETS: offsets - a}
        except SafetensorError as error:
            path = self.folder / self._shards[shard]["file"]
            raise ValueError(f"{path} is damaged ({error}); {RECOMPUTE}") from None


def open_extraction(folder: str | Path, partial: bool = False, verify: bool = True) -> Extraction:
    """The extraction in ``folder``, opened lazily (:class:`Extraction`: finished, or with
    ``partial`` the finished shards of a run that stopped; each shard checked against its
    SHA-256 unless ``verify=False``)."""
    return Extraction(folder, partial, verify)


def load_extraction(
    folder: str | Path, partial: bool = False, verify: bool = True
) -> tuple[dict, dict[str, torch.Tensor]]:
    """An extraction read whole into memory (``partial``, ``verify``: as
    :func:`open_extraction`): its manifest and every tensor, rows concatenated in input order
    (:meth:`Extraction.rows` of all rows)."""
    extraction = open_extraction(folder, partial, verify)
    return extraction.manifest, extraction.rows(0, len(extraction))


def _row_dicts(folder: str, manifest: str, partial: bool, verify: bool) -> Iterator[dict]:
    extraction = open_extraction(folder, partial, verify)
    if json.loads(manifest) != extraction.manifest:
        raise RuntimeError(f"the extraction in {folder} changed while it was being converted")
    for index in range(len(extraction)):
        yield {name: value.tolist() for name, value in extraction[index].items()}
