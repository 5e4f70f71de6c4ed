"""What every model adapter provides, and the hooks every architecture shares.

An adapter knows one model family's structure: its blocks, mixers and final norm, the
components of its recurrent state and their shapes, and how to route each layer's
recurrence through :mod:`statetap.kernels` for the length of one instrumented pass
(:meth:`Adapter.instrument`).  Two sites exist on every architecture:

* ``"residual"`` at layer ``l``: the residual stream after block ``l``, i.e. the input of the
  next block (of the final norm after the last block), captured and edited there;
* ``"mixer"`` at layer ``l``: the output of block ``l``'s sequence mixer, before it is added
  to the residual stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from statetap.plan import Pass

COMMON_SITES = ("residual", "mixer")


def gather_positions(sequence: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``sequence`` ``[B, L, ...]`` at ``positions`` ``[B, P]`` -> ``[B, P, ...]``; slots
    holding ``-1`` (nothing at this call) come back as zeros."""
    positions = positions.to(sequence.device)
    rows = torch.arange(sequence.shape[0], device=sequence.device)[:, None]
    gathered = sequence[rows, positions.clamp_min(0)]
    unused = (positions < 0).view(*positions.shape, *[1] * (sequence.dim() - 2))
    return gathered.masked_fill(unused, 0)


@contextlib.contextmanager
def patched(module: object, name: str, replacement: object) -> Iterator[None]:
    """Replace ``module.name`` for the duration of the block."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def hooked(handles: list) -> Iterator[None]:
    """Remove the given hook handles when the block ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Adapter:
    """Structure of one model family; subclasses fill in the architecture-specific parts."""

    #: model class names this adapter serves (the registry keys), set by subclasses
    model_classes: tuple[str, ...] = ()
    #: recurrent-state components, in the order of the ``"state"`` group
    state_sites: tuple[str, ...] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # ------------------------------------------------------------------ structure
    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    @property
    def unembedding(self) -> nn.Module:
        """The output embedding: maps the final norm's output ``[..., H]`` to logits."""
        return self.model.get_output_embeddings()

    def mixer(self, layer: int) -> nn.Module:
        raise NotImplementedError

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def hidden_states_index(self, layer: int) -> int:
        """Index of ``output_hidden_states`` that holds the residual stream after ``layer``.

        transformers' Mamba, Mamba-2 and RWKV models record each block's output (there is no
        embedding entry), and replace the last one with the final norm's output.
        """
        return layer

    def site_shape(self, site: str) -> tuple[int, ...]:
        """Per-token shape of ``site`` (``[H]`` for the residual and mixer sites)."""
        if site in COMMON_SITES:
            return (self.hidden_size,)
        raise NotImplementedError

    @property
    def sites(self) -> tuple[str, ...]:
        return COMMON_SITES + self.state_sites

    def mixer_output(self, output: object) -> torch.Tensor:
        """The mixer's output tensor ``[B, L, H]`` from what its forward returned."""
        return output

    def with_mixer_output(self, output: object, tensor: torch.Tensor) -> object:
        """What the mixer's forward returned, with its output tensor replaced."""
        return tensor

    def output_cache(self, output: object) -> object:
        """The cache object in what the model's forward returned (None without one)."""
        raise NotImplementedError

    def check_run(self, batch: int, length: int, continues: bool) -> None:
        """Refuse a pass the model itself would get wrong (``continues``: from a state)."""

    def cache_kwargs(self, cache: object) -> dict:
        """Keyword arguments that make the model's forward continue from ``cache``."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: object,
        keep_state: bool,
        **kwargs,
    ) -> tuple[object, object]:
        """The model's forward over ``input_ids`` ``[B, L]``, continuing from ``cache`` (None:
        from the empty state).  Returns the model's output and, with ``keep_state``, the cache
        after the last token (else None)."""
        if cache is not None:
            kwargs |= self.cache_kwargs(cache)
        elif keep_state:
            kwargs["use_cache"] = True
        output = self.model(input_ids, attention_mask=attention_mask, **kwargs)
        return output, (self.output_cache(output) if keep_state else None)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
        """The model's own ``generate`` on the prompts ``input_ids`` ``[B, L]``."""
        return self.model.generate(input_ids, attention_mask=attention_mask, **kwargs)

    def select_rows(self, cache: object, rows: torch.Tensor) -> object:
        """A new cache holding rows ``rows`` ``[B']`` of ``cache`` (``cache`` is untouched)."""
        raise NotImplementedError

    def cached_state(self, cache: object, site: str, layer: int) -> torch.Tensor:
        """``site`` of ``layer`` as the model's own cache holds it, ``[B, *shape]``."""
        raise NotImplementedError

    def write_state(self, cache: object, site: str, layer: int, value: torch.Tensor) -> None:
        """Overwrite ``site`` of ``layer`` in ``cache`` with ``value`` ``[B, *shape]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ one pass
    def instrument(self, pass_: Pass) -> contextlib.ExitStack:
        """Hooks and patches that carry out ``pass_``; remove them by closing the stack.

        The hooks read ``pass_.ops`` when they run, so one installation serves a sequence of
        forward calls (generation) whose work changes from call to call.
        """
        stack = contextlib.ExitStack()
        handles = []
        for layer in range(self.n_layers):
            mixer = self.mixer(layer)
            handles.append(self.hook_residual(pass_, layer))
            handles.append(mixer.register_forward_hook(self._mixer_hook(pass_, layer)))
            handles.append(
                mixer.register_forward_pre_hook(self._enter_layer(pass_, layer), with_kwargs=True)
            )
        stack.enter_context(hooked(handles))
        self.instrument_state(pass_, stack)
        return stack

    def hook_residual(self, pass_: Pass, layer: int):
        """Install the ``"residual"`` hook of ``layer``; returns its handle.  Here: on the input
        of the next block (of the final norm after the last block)."""
        following = self.blocks[layer + 1] if layer + 1 < self.n_layers else self.final_norm
        return following.register_forward_pre_hook(self._residual_hook(pass_, layer))

    def instrument_state(self, pass_: Pass, stack: contextlib.ExitStack) -> None:
        """Route the recurrence (and the side states) through statetap for ``pass_``."""
        raise NotImplementedError

    def enter_layer(self, pass_: Pass, layer: int, kwargs: dict) -> None:
        """Called as ``layer``'s mixer starts, with the mixer's keyword arguments."""
        pass_.layer = layer

    def _enter_layer(self, pass_: Pass, layer: int):
        def hook(module, args, kwargs):
            self.enter_layer(pass_, layer, kwargs)
            return None

        return hook

    @staticmethod
    def _residual_hook(pass_: Pass, layer: int):
        def hook(module, args):
            ops = pass_.at("residual", layer)
            if ops is None:
                return None
            hidden = args[0]
            if ops.injection is not None:
                hidden = ops.injection.apply(hidden)
            if ops.emit_at is not None:
                pass_.store("residual", layer, gather_positions(hidden, ops.emit_at))
            return (hidden, *args[1:])

        return hook

    def _mixer_hook(self, pass_: Pass, layer: int):
        def hook(module, args, output):
            ops = pass_.at("mixer", layer)
            if ops is None:
                return None
            tensor = self.mixer_output(output)
            if ops.injection is not None:
                tensor = ops.injection.apply(tensor)
                output = self.with_mixer_output(output, tensor)
            if ops.emit_at is not None:
                pass_.store("mixer", layer, gather_positions(tensor, ops.emit_at))
            return output

        return hook
