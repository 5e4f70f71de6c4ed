"""Token positions as users write them, resolved to padded indices per row.

A position names a token of each row's *text*: ``0`` is the row's first real token and
``-1`` its last, whatever padding (left or right) the batch carries; ``attention_mask``
says which tokens are real.  Accepted forms:

* an ``int``, or a list / tuple of ints: the same positions in every row;
* an integer tensor ``[P]`` (every row) or ``[B, P]`` (per row);
* ``"last"``: ``-1``;
* ``"all"``: every index of the padded sequence, ``0 .. L-1`` (padding included, aligned
  with ``input_ids`` like ``output_hidden_states``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PositionSpec = int | Sequence[int] | torch.Tensor | str


def resolve_positions(
    spec: PositionSpec,
    batch: int,
    length: int,
    attention_mask: torch.Tensor | None = None,
    name: str = "positions",
) -> torch.Tensor:
    """Padded indices ``[B, P]`` (int64, on the mask's device or the CPU) for ``spec``.

    Args:
        spec: the positions, in any accepted form (module docstring).
        batch, length: ``B`` and ``L`` of the padded batch.
        attention_mask: ``[B, L]`` with 1 on real tokens, or None when every token is real.
        name: the argument's name, for error messages.

    Raises:
        ValueError: a position outside some row's text, a mask of the wrong shape, an
            unknown string; TypeError: a spec of another type.
    """
    real = real_tokens(batch, length, attention_mask)
    if isinstance(spec, str) and spec == "all":
        return torch.arange(length, device=real.device).expand(batch, length)
    text = text_indices(spec, real.sum(1), name)
    return padded_indices(text, real)


def real_tokens(batch: int, length: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, L]`` bool: which tokens are real (all of them without a mask)."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool)
    if attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask must have shape [B={batch}, L={length}], "
            f"got {list(attention_mask.shape)}"
        )
    return attention_mask.bool()


def text_indices(
    spec: PositionSpec, counts: torch.Tensor, name: str = "positions", beyond: bool = False
) -> torch.Tensor:
    """``[B, P]`` indices among each row's real tokens (``0`` the first).

    Args:
        spec: the positions (not ``"all"``).
        counts: ``[B]`` real tokens per row; negative positions count back from them.
        beyond: allow positions at or past ``counts`` (tokens that generation will add).
    """
    batch = counts.shape[0]
    if isinstance(spec, str):
        if spec != "last":
            raise ValueError(
                f"{name} must be an int, a list of ints, a tensor, 'last' or 'all'; got {spec!r}"
            )
        spec = -1
    if isinstance(spec, bool):
        raise TypeError(
            f"{name} must be an int, a list of ints, a tensor, 'last' or 'all'; got a bool"
        )
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in spec):
            raise TypeError(f"{name} must hold ints, got {spec!r}")
        spec = torch.tensor(spec, dtype=torch.long)
    if not isinstance(spec, torch.Tensor):
        raise TypeError(
            f"{name} must be an int, a list of ints, a tensor, 'last' or 'all'; "
            f"got {type(spec).__name__}"
        )
    if spec.is_floating_point() or spec.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor [P] or [B, P], got {spec.dtype}")
    spec = spec.to(device=counts.device, dtype=torch.long)
    if spec.dim() == 1:
        spec = spec.expand(batch, -1)
    if spec.dim() != 2 or spec.shape[0] != batch:
        raise ValueError(f"{name} must have shape [P] or [B={batch}, P], got {list(spec.shape)}")
    counts = counts[:, None]
    text = torch.where(spec < 0, spec + counts, spec)
    bad = (text < 0) if beyond else (text < 0) | (text >= counts)
    if bool(bad.any()):
        row, slot = (int(i) for i in bad.nonzero()[0])
        n = int(counts[row])
        valid = f"positions -{n} .. {n - 1}" if n else "its attention_mask is all padding"
        raise ValueError(
            f"{name}[{row}, {slot}] = {int(spec[row, slot])} is outside row {row}, which has "
            f"{n} real tokens ({valid})"
        )
    return text


def padded_indices(text: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Padded index ``[B, P]`` of each row's ``text``-th real token; ``-1`` past the last one."""
    # The k-th real token of a row sits where the running count of real tokens first reaches k+1.
    running = real.long().cumsum(1)  # [B, L]
    index = torch.searchsorted(running, (text + 1).contiguous())
    return torch.where(text < running[:, -1:], index, -1)
