"""How big an extraction will be, said before the first batch: :func:`estimate_bytes`, and
sizes as people write them (``"20G"``, ``"512MB"``): :func:`parse_size`, :func:`format_size`.

The estimate counts the bytes of the tensors the shards will hold (safetensors adds a header of
a few kilobytes per shard): for fixed positions every text's ``P`` slots of every stored tensor
plus its ``positions`` and ``row`` (exact when no text is left out); for a span, the tokens per
text (measured on the first window of texts) times the bytes per token, plus ``row`` and
``offsets`` per text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
INDEX_BYTES = 8  # row, positions and offsets are int64


def parse_size(text: str) -> int:
    """Bytes from ``"123"``, ``"1.5G"``, ``"20GB"``, ``"512mb"`` (decimal units, as the
    estimate prints them).

    Raises:
        ValueError: anything else, with an example of what is accepted.
    """
    match = SIZE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"a size is a number with an optional unit (K, M, G, T), e.g. 20G; got {text!r}"
        )
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def format_size(size: float) -> str:
    """``size`` bytes in the largest decimal unit that keeps it at 1 or more: ``"2.7 GB"``."""
    for unit in ("TB", "GB", "MB", "kB"):
        scale = UNITS[unit[0].lower()]
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def bytes_per_slot(tensors: Mapping[str, Mapping]) -> int:
    """Bytes one position (or one token) of one text takes in every stored tensor: the
    manifest's ``tensors`` (per-token ``shape`` and ``dtype`` per name), plus its position index."""
    import torch  # here, not with the module: --max-output is parsed before torch loads

    total = INDEX_BYTES
    for entry in tensors.values():
        itemsize = torch.empty((), dtype=getattr(torch, entry["dtype"])).element_size()
        total += math.prod(entry["shape"]) * itemsize
    return total


def estimate_bytes(
    tensors: Mapping[str, Mapping], texts: int, slots_per_text: float, ragged: bool
) -> int:
    """Bytes of the shards' tensors for ``texts`` texts of ``slots_per_text`` positions (fixed)
    or tokens (``ragged``) each (module docstring)."""
    per_text = slots_per_text * bytes_per_slot(tensors) + INDEX_BYTES * (2 if ragged else 1)
    return math.ceil(texts * per_text)
