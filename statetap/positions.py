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
    device = attention_mask.device if attention_mask is not None else torch.device("cpu")
    if isinstance(spec, str):
        if spec == "all":
            return torch.arange(length, device=device).expand(batch, length)
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
    spec = spec.to(device=device, dtype=torch.long)
    if spec.dim() == 1:
        spec = spec.expand(batch, -1)
    if spec.dim() != 2 or spec.shape[0] != batch:
        raise ValueError(f"{name} must have shape [P] or [B={batch}, P], got {list(spec.shape)}")

    if attention_mask is None:
        real = torch.ones(batch, length, dtype=torch.bool, device=device)
    else:
        if attention_mask.shape != (batch, length):
            raise ValueError(
                f"attention_mask must have shape [B={batch}, L={length}], "
                f"got {list(attention_mask.shape)}"
            )
        real = attention_mask.bool()
    counts = real.sum(1, keepdim=True)  # [B, 1] real tokens per row
    text = torch.where(spec < 0, spec + counts, spec)  # index among each row's real tokens
    bad = (text < 0) | (text >= counts)
    if bool(bad.any()):
        row, slot = (int(i) for i in bad.nonzero()[0])
        n = int(counts[row])
        raise ValueError(
            f"{name}[{row}, {slot}] = {int(spec[row, slot])} is outside row {row}, which has "
            f"{n} real tokens (positions -{n} .. {n - 1})"
        )
    # The k-th real token of a row sits at the index where the running count of real tokens
    # first reaches k + 1.
    running = real.long().cumsum(1)  # [B, L]
    return torch.searchsorted(running, text + 1)
