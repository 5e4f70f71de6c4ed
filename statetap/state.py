"""Snapshots of a model's recurrent state: read, edit, fork into branches, resume.

A :class:`RecurrentState` is the model's own cache after some tokens (every layer, every
component, side states included), with the logits of the last token.  ``fork(n)`` branches
each row into ``n`` rows without re-running the prefix — a multiplier sweep from one prompt —
and ``Tap.run(..., state=...)`` continues from it.  Edits act on the model's own cache, so an
edit is exactly the paper's "edit the cache between two tokens".

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> prompt = tap.run(torch.randint(0, 64, (2, 9)), keep_state=True).state
    >>> sweep = prompt.fork(3)                      # rows: 0, 0, 0, 1, 1, 1
    >>> sweep.edit("ssm", 1, torch.randn(64, 4), scale=torch.tensor([0.0, 1.0, 2.0] * 2))
    >>> tap.run(torch.randint(0, 64, (6, 4)), state=sweep).logits.shape
    torch.Size([6, 4, 64])
"""

from __future__ import annotations

import torch

from statetap.adapters import Adapter


class RecurrentState:
    """The model's cache after a pass, the logits of its last token ``[B, V]``, and the
    attention mask ``[B, T]`` of the ``T`` tokens the cache has read (1: real, 0: padding), which
    a hybrid's attention layers need to continue (their keys and values include the padding)."""

    def __init__(
        self, adapter: Adapter, cache: object, logits: torch.Tensor, mask: torch.Tensor
    ) -> None:
        self.adapter, self.cache, self.logits, self.mask = adapter, cache, logits, mask

    @property
    def batch(self) -> int:
        return self.logits.shape[0]

    def get(self, site: str, layer: int) -> torch.Tensor:
        """A float32 copy of ``site`` of ``layer``, ``[B, *shape]``."""
        self._check(site, layer)
        return self.adapter.cached_state(self.cache, site, layer).float().clone()

    def edit(
        self,
        site: str,
        layer: int,
        value: torch.Tensor,
        mode: str = "add",
        scale: float | torch.Tensor | None = None,
    ) -> None:
        """Change ``site`` of ``layer`` in place: ``add`` (``+= scale * value``) or ``set``.

        Args:
            value: ``[*shape]`` for every row, or ``[B, *shape]``.
            scale: for ``add``, a float or a ``[B]`` tensor (one multiplier per row).
        """
        self._check(site, layer)
        current = self.get(site, layer)
        shape = tuple(current.shape[1:])
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(
                f"value must be a floating-point tensor of shape {list(shape)} or [B, ...]"
            )
        if tuple(value.shape) not in (shape, (self.batch, *shape)):
            raise ValueError(
                f"value for {site!r} must have shape {list(shape)} or {[self.batch, *shape]}, "
                f"got {list(value.shape)}"
            )
        value = value.to(current.device, torch.float32).expand_as(current)
        if mode == "set":
            if scale is not None:
                raise ValueError("scale applies to mode='add' only")
            updated = value
        elif mode == "add":
            factor = torch.as_tensor(
                1.0 if scale is None else scale, dtype=torch.float32, device=current.device
            )
            if factor.dim() == 1 and factor.shape[0] != self.batch or factor.dim() > 1:
                raise ValueError(
                    f"scale must be a float or a [B={self.batch}] tensor, got {list(factor.shape)}"
                )
            updated = current + factor.view(-1, *[1] * len(shape)) * value
        else:
            raise ValueError(f"mode must be 'add' or 'set', got {mode!r}")
        self.adapter.write_state(self.cache, site, layer, updated)

    def fork(self, n: int) -> RecurrentState:
        """A new state with every row repeated ``n`` times (rows ``0, .., 0, 1, .., 1, ..``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        rows = torch.arange(self.batch, device=self.logits.device).repeat_interleave(n)
        return self.select(rows)

    def select(self, rows: torch.Tensor) -> RecurrentState:
        """A new state made of the given rows ``[B']`` (repeats allowed)."""
        cache = self.adapter.select_rows(self.cache, rows)
        return RecurrentState(
            self.adapter,
            cache,
            self.logits.index_select(0, rows),
            self.mask.index_select(0, rows.to(self.mask.device)),
        )

    def clone(self) -> RecurrentState:
        """An independent copy."""
        return self.select(torch.arange(self.batch, device=self.logits.device))

    def _check(self, site: str, layer: int) -> None:
        if site not in self.adapter.state_sites:
            components = ", ".join(self.adapter.state_sites)
            raise ValueError(f"{site!r} is not a state component; this model's are {components}")
        if not isinstance(layer, int) or not 0 <= layer < self.adapter.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.adapter.n_layers}), got {layer!r}")
        if layer not in self.adapter.state_layers:
            raise ValueError(
                f"layer {layer} holds no recurrent state; the layers with one are "
                f"state_layers = {list(self.adapter.state_layers)}"
            )
