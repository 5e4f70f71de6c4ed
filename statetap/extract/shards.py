"""Shards: one safetensors file per window of input rows, in input order, written atomically.

Window ``k`` (input rows ``skip + k * shard_rows`` onwards) becomes ``shard-{k:05d}.safetensors``
holding, for the rows that have tokens:

* fixed positions: ``"{site}.{layer}"`` ``[rows, P, *shape]``, ``positions`` ``[rows, P]``;
* a span: ``"{site}.{layer}"`` ``[tokens, *shape]``, ``positions`` ``[tokens]`` and
  ``offsets`` ``[rows + 1]`` (row ``i``'s tokens are ``offsets[i] : offsets[i + 1]``);
* ``row`` ``[rows]``: each row's index in the input.

Its safetensors metadata records the window, the rank that wrote it, the rows, tokens, cut
texts, the input rows left out (empty or too short), the batching, and the hash of the settings
it was made with.  A shard file present is a finished window: that is what a resumed run skips.
The file's SHA-256, taken before it is moved into place, goes into the manifest
(:func:`file_sha256` checks it again).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from statetap.extract.atomic import TEMPORARY_SUFFIX, write_atomically
from statetap.extract.forward import BatchTensors

SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.safetensors$")
ROW, POSITIONS, OFFSETS = "row", "positions", "offsets"


def shard_name(window: int) -> str:
    return f"shard-{window:05d}.safetensors"


def assemble(
    parts: Sequence[BatchTensors],
    shapes: Mapping[str, tuple[int, ...]],
    slots: int | None,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The shard's tensors from a window's passes, in input order.

    Args:
        parts: the passes (in any row order).
        shapes: per-token shape of each stored tensor name (for a window with no rows).
        slots: ``P`` for fixed positions, None for a span (ragged layout).
    """
    rows = torch.cat([part.rows for part in parts]) if parts else torch.zeros(0, dtype=torch.long)
    order = rows.argsort()
    if slots is not None:
        if not parts:
            tensors = {
                name: torch.zeros(0, slots, *shape, dtype=dtype) for name, shape in shapes.items()
            }
            return tensors | {ROW: rows, POSITIONS: torch.zeros(0, slots, dtype=torch.long)}
        tensors = {name: torch.cat([p.tensors[name] for p in parts])[order] for name in shapes}
        return tensors | {
            ROW: rows[order],
            POSITIONS: torch.cat([p.positions for p in parts])[order],
        }
    if not parts:
        tensors = {name: torch.zeros(0, *shape, dtype=dtype) for name, shape in shapes.items()}
        empty = torch.zeros(0, dtype=torch.long)
        return tensors | {ROW: rows, POSITIONS: empty, OFFSETS: torch.zeros(1, dtype=torch.long)}
    counts = torch.cat([part.counts for part in parts])
    starts = counts.cumsum(0) - counts  # each row's first token, in processing order
    counts, starts = counts[order], starts[order]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    within = torch.arange(int(offsets[-1])) - offsets[:-1].repeat_interleave(counts)
    tokens = starts.repeat_interleave(counts) + within  # input-order tokens in processing order
    tensors = {name: torch.cat([p.tensors[name] for p in parts])[tokens] for name in shapes}
    positions = torch.cat([part.positions for part in parts])[tokens]
    return tensors | {ROW: rows[order], POSITIONS: positions, OFFSETS: offsets}


def write_shard(out: Path, window: int, tensors: dict[str, torch.Tensor], metadata: dict) -> str:
    """Write window ``window``'s shard atomically; ``metadata`` values are stored as strings.
    Returns the file's SHA-256 (hex), taken before the file is moved into place."""
    path = out / shard_name(window)
    text = {key: str(value) for key, value in metadata.items()}
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    digest = []

    def write(temporary: str) -> None:
        save_file(contiguous, temporary, metadata=text)
        digest.append(file_sha256(temporary))

    write_atomically(path, write)
    return digest[0]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_header(path: Path) -> dict[str, str] | None:
    """A shard's metadata, or None when its header does not read (a truncated or damaged
    file: safetensors checks that the header covers the file)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError):
        return None


def shard_files(out: Path) -> dict[int, Path]:
    """``{window: path}`` of the shard files in ``out``."""
    found = {}
    for path in sorted(out.glob("shard-*.safetensors")):
        match = SHARD_PATTERN.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def remove_temporaries(out: Path) -> list[str]:
    """Delete the temporary files a killed writer left in ``out``; returns their names."""
    left = [path for path in out.glob(f".*{TEMPORARY_SUFFIX}") if path.is_file()]
    for path in left:
        path.unlink()
    return [path.name for path in left]
