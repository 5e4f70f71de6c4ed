"""Tensors on disk beside the JSON record that describes them, written and read as a pair.

The tensors go to a safetensors file and the record to a JSON file, each written to a temporary
name and renamed into place, tensors first; the record holds the sha256 of the tensor file, so a
pair whose halves do not belong together (an interrupted overwrite) is refused when read.
Steering vectors, sweep results and tuned lenses are stored this way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load, save

from statetap.extract import write_atomically


def write_pair(
    tensor_file: Path,
    record_file: Path,
    tensors: dict[str, torch.Tensor],
    record: dict,
    digest_key: str,
) -> None:
    """Write ``tensors`` (moved to the CPU) to ``tensor_file`` and ``record``, with the tensor
    file's sha256 under ``digest_key``, to ``record_file`` (the folder is created). The record is
    serialised before anything is written, so a record that is not JSON leaves no file behind."""
    data = save({name: value.detach().cpu().contiguous() for name, value in tensors.items()})
    text = json.dumps({**record, digest_key: hashlib.sha256(data).hexdigest()}, indent=2)
    tensor_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(tensor_file, lambda path: Path(path).write_bytes(data))
    write_atomically(record_file, lambda path: Path(path).write_text(text, encoding="utf-8"))


def require_files(what: str, *paths: Path) -> None:
    """Raise FileNotFoundError naming the first of ``paths`` that does not exist (``what``: the
    thing a complete folder would be, for the message)."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: not a saved {what}")


def read_tensors(
    tensor_file: Path, record_file: Path, record: dict, digest_key: str
) -> dict[str, torch.Tensor]:
    """The tensors of ``tensor_file`` (on the CPU), after checking that their sha256 is the one
    ``record`` (read from ``record_file``) holds under ``digest_key``."""
    data = tensor_file.read_bytes()
    if record.get(digest_key) != hashlib.sha256(data).hexdigest():
        raise ValueError(
            f"{tensor_file} is not the file {record_file} was written for (an interrupted "
            f"overwrite?)"
        )
    return load(data)
