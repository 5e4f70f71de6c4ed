"""Token sequences of different lengths as padded batches for ``Tap.run`` (steering, ELK).

Rows are sorted by length (longest first) so that a batch carries little padding, and padded
on the right: positions count each row's real tokens, and tokens after a row's last real one
cannot change it, even in models that ignore ``attention_mask`` (transformers' RWKV-4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def length_batches(
    lengths: Sequence[int], size: int, same_length: bool = False
) -> Iterator[list[int]]:
    """Row indices in batches of at most ``size``, longest rows first.

    ``same_length`` cuts a batch where the length changes, so no batch needs padding (for
    models that take no attention mask, such as mamba-ssm's ``MambaLMHeadModel``).
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size must be a positive int, got {size!r}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) == size or same_length and lengths[index] != lengths[batch[0]]):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def pad(
    sequences: Sequence[Sequence[int]],
    side: str = "right",
    pad_id: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``input_ids`` ``[B, L]`` and ``attention_mask`` ``[B, L]`` (None when no row is padded).

    Args:
        sequences: ``B`` token sequences.
        side: ``"right"`` or ``"left"`` (generation needs every row to end with a real token).
    """
    length = max(len(row) for row in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for b, row in enumerate(sequences):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[b, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[b, span] = 1
    return ids.to(device), (None if bool(mask.all()) else mask.to(device))


def last_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The logits ``[B, V]`` at each row's last real token of right-padded ``logits``
    ``[B, L, V]``."""
    if mask is None:
        return logits[:, -1]
    last = mask.sum(1) - 1
    return logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)]
