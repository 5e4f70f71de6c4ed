"""The recurrent state of a statetap RWKV-5/6/7 model: what one token leaves for the next.

Per layer ``l`` and row ``b`` (all float32, whatever the model's dtype):

* ``att_shift[l]`` ``[B, C]``: the attention's token shift, i.e. the layer-normed input
  (``ln1``) of the last real token, which the next token mixes in;
* ``wkv[l]`` ``[B, H, K, V]``: the WKV matrix state (statetap's layout; BlinkDL's ``rwkv``
  package keeps RWKV-7's transposed, ``[H, V, K]``);
* ``ffn_shift[l]`` ``[B, C]``: the feed-forward's token shift (the ``ln2`` input).

The models update a cache in place as they consume tokens, like transformers' caches.
"""

from __future__ import annotations

import torch


class RwkvCache:
    """Token shifts and WKV states of every layer, for a batch of ``B`` rows.

    Example:
        >>> cache = RwkvCache.empty(layers=2, batch=3, hidden_size=8, heads=2, head_size=4)
        >>> cache.wkv[1].shape, cache.att_shift[0].dtype
        (torch.Size([3, 2, 4, 4]), torch.float32)
    """

    def __init__(
        self,
        att_shift: list[torch.Tensor],
        wkv: list[torch.Tensor],
        ffn_shift: list[torch.Tensor],
    ) -> None:
        if not len(att_shift) == len(wkv) == len(ffn_shift):
            raise ValueError(
                f"att_shift, wkv and ffn_shift must hold one tensor per layer, got "
                f"{len(att_shift)}, {len(wkv)} and {len(ffn_shift)}"
            )
        self.att_shift, self.wkv, self.ffn_shift = att_shift, wkv, ffn_shift

    @classmethod
    def empty(
        cls,
        layers: int,
        batch: int,
        hidden_size: int,
        heads: int,
        head_size: int,
        device: torch.device | str | None = None,
    ) -> RwkvCache:
        """The zero state (before any token) of a model with these sizes."""

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float32, device=device)

        return cls(
            [zeros(batch, hidden_size) for _ in range(layers)],
            [zeros(batch, heads, head_size, head_size) for _ in range(layers)],
            [zeros(batch, hidden_size) for _ in range(layers)],
        )

    @property
    def layers(self) -> int:
        return len(self.wkv)

    @property
    def batch(self) -> int:
        return self.wkv[0].shape[0]

    def select_rows(self, rows: torch.Tensor) -> RwkvCache:
        """A new cache made of rows ``rows`` ``[B']`` (repeats allowed); this one is untouched."""

        def pick(parts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [part.index_select(0, rows.to(part.device)) for part in parts]

        return RwkvCache(pick(self.att_shift), pick(self.wkv), pick(self.ffn_shift))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows in place (beam search)."""
        selected = self.select_rows(beam_idx)
        self.att_shift, self.wkv, self.ffn_shift = (
            selected.att_shift,
            selected.wkv,
            selected.ffn_shift,
        )

    def clone(self) -> RwkvCache:
        """An independent copy."""
        return self.select_rows(torch.arange(self.batch, device=self.wkv[0].device))
