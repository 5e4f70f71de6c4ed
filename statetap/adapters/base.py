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
import functools
import importlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from statetap.adapters.upstream import drift, package_version
from statetap.plan import Pass, gather_positions
from statetap.sites import COMMON_SITES


def describe_layout(layout: tuple[int | str, ...]) -> str:
    """A hidden-states layout as text: ``"(embeddings, layer 0, layer 1, final norm)"``."""
    return "(" + ", ".join(f"layer {e}" if isinstance(e, int) else e for e in layout) + ")"


class ForwardStopped(Exception):
    """Raised by the hook of :meth:`Adapter.stopping_after` to end a forward pass early."""


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


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; its training flags are restored after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def replaced_forward(module: nn.Module, forward: Callable) -> Iterator[None]:
    """``module`` runs ``forward`` instead of its own forward within the block (its hooks still
    run around it)."""
    own = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden-states input of a block's forward call: its first positional argument, or
    the keyword ``hidden_states``."""
    return args[0] if args else kwargs["hidden_states"]


def stop_forward(*args) -> None:
    """A hook (any signature) that ends the forward pass: raises :class:`ForwardStopped`."""
    raise ForwardStopped


def recording(called: set[str], name: str, function: Callable) -> Callable:
    """``function``, adding ``name`` to ``called`` whenever it runs."""

    def record(*args, **kwargs):
        called.add(name)
        return function(*args, **kwargs)

    return record


class Adapter:
    """Structure of one model family; subclasses fill in the architecture-specific parts."""

    #: model class names this adapter serves (the registry keys), set by subclasses
    model_classes: tuple[str, ...] = ()
    #: recurrent-state components, in the order of the ``"state"`` group
    state_sites: tuple[str, ...] = ()
    #: the package whose modeling code the adapter instruments, and the module whose
    #: functions it substitutes (:meth:`substitutions`)
    package: str = "transformers"
    modeling_module: str = ""
    #: the probe pass of :meth:`verify`: per forward call, its number of tokens and the
    #: substitutions it must run; the first call starts from the empty state, the others
    #: continue from the cache the previous one left
    probe_calls: tuple[tuple[int, tuple[str, ...]], ...] = ()
    #: the mixer's forward returns a tuple whose first element is its output tensor
    mixer_returns_tuple: bool = False
    #: the model's forward takes ``output_hidden_states`` (:attr:`hidden_states_layout`)
    records_hidden_states: bool = True
    #: the model reads the attention mask of the tokens its cache holds as well as the new ones
    #: (a hybrid: its attention layers cache keys and values, padding included), so a pass that
    #: continues from a state hands the model the state's mask followed by its own
    takes_cache_mask: bool = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._hidden_states_layout: tuple[int | str, ...] | None = None

    # ------------------------------------------------------------------ structure
    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    @property
    def output_embedding(self) -> nn.Module:
        """The module the model calls on the final norm's output ``[..., H]`` for its logits."""
        return self.model.get_output_embeddings()

    @property
    def unembedding(self) -> nn.Module:
        """The output embedding: maps the final norm's output ``[..., H]`` to logits (with any
        factor the model applies after :attr:`output_embedding`)."""
        return self.output_embedding

    def mixer(self, layer: int) -> nn.Module:
        raise NotImplementedError

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def state_layers(self) -> tuple[int, ...]:
        """The layers whose mixer holds a recurrent state, ascending: the only layers with the
        :attr:`state_sites`.  Every layer here; hybrids (attention or MLP layers between the
        recurrent ones) list their recurrent layers."""
        return tuple(range(self.n_layers))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def hidden_states_index(self, layer: int) -> int:
        """Index of the model's ``output_hidden_states`` that holds the residual stream after
        ``layer``, exactly as the ``"residual"`` site reads it.

        The layout differs between models and transformers releases (5.25's Mamba-2 starts with
        the embeddings and ends with the final norm's output, so it holds no entry for the last
        layer; 5.24's starts with block 0's output): :meth:`verify` reads it off the model at
        ``attach`` (:attr:`hidden_states_layout`) instead of assuming one.

        Raises:
            NotImplementedError: the model has no ``output_hidden_states``.
            ValueError: no entry holds the residual stream after ``layer``.
        """
        layout = self.hidden_states_layout
        if layer in layout:
            return layout.index(layer)
        raise ValueError(
            f"{type(self.model).__name__}'s output_hidden_states holds no residual stream after "
            f"layer {layer} (transformers {package_version('transformers')}; its entries are "
            f"{describe_layout(layout)}); emit it with statetap.Emit('residual', layers={layer})"
        )

    @property
    def hidden_states_layout(self) -> tuple[int | str, ...]:
        """What each entry of the model's ``output_hidden_states`` holds, read off the model by
        :meth:`verify`: a layer ``l`` (the residual stream after block ``l``), ``"embeddings"``
        (the input of block 0), ``"final norm"`` (the final norm's output) or ``"other"``."""
        if not self.records_hidden_states:
            raise NotImplementedError(f"{type(self.model).__name__} has no output_hidden_states")
        if self._hidden_states_layout is None:
            raise RuntimeError("the hidden-states layout is read by verify(): use statetap.attach")
        return self._hidden_states_layout

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
        return output[0] if self.mixer_returns_tuple else output

    def with_mixer_output(self, output: object, tensor: torch.Tensor) -> object:
        """What the mixer's forward returned, with its output tensor replaced."""
        return (tensor, *output[1:]) if self.mixer_returns_tuple else tensor

    def output_cache(self, output: object) -> object:
        """The cache object in what the model's forward returned (None without one)."""
        raise NotImplementedError

    def check_run(self, batch: int, length: int, continues: bool) -> None:
        """Refuse a pass the model itself would get wrong (``continues``: from a state)."""

    def check_padding(self, attention_mask: torch.Tensor | None, keeps_state: bool) -> None:
        """Refuse padding the model cannot run exactly; ``keeps_state``: the state after each
        row's last token is wanted (``keep_state``, generation), not only the outputs."""

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
    def substitutions(self, pass_: Pass) -> dict[str, Callable]:
        """``{name: replacement}``: the functions of :attr:`modeling_module` that point at
        statetap's for the length of ``pass_``."""
        raise NotImplementedError

    def modeling_attribute(self, name: str) -> object:
        """``name`` (a function or class) of :attr:`modeling_module`.

        Raises:
            UpstreamDrift: the modeling module has no ``name`` any more.
        """
        module = importlib.import_module(self.modeling_module)
        if not hasattr(module, name):
            raise drift(self.package, f"{self.modeling_module}.{name}", "does not exist any more")
        return getattr(module, name)

    def instrument(self, pass_: Pass, called: set[str] | None = None) -> contextlib.ExitStack:
        """Hooks and patches that carry out ``pass_``; remove them by closing the stack.

        The hooks read ``pass_.ops`` when they run, so one installation serves a sequence of
        forward calls (generation) whose work changes from call to call.  With ``called``, each
        substitution adds its name to that set when it runs (:meth:`verify`).

        Raises:
            UpstreamDrift: the modeling module lacks a function statetap substitutes.
        """
        module = importlib.import_module(self.modeling_module)
        replacements = self.substitutions(pass_)
        for name in replacements:
            self.modeling_attribute(name)
        stack = contextlib.ExitStack()
        for name, replacement in replacements.items():
            if called is not None:
                replacement = recording(called, name, replacement)
            stack.enter_context(patched(module, name, replacement))
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

    def following(self, layer: int) -> nn.Module:
        """The module whose input is the residual stream after block ``layer``: the next block,
        or the final norm after the last block."""
        return self.blocks[layer + 1] if layer + 1 < self.n_layers else self.final_norm

    def hook_residual(self, pass_: Pass, layer: int):
        """Install the ``"residual"`` hook of ``layer``; returns its handle.  Here: on the input
        of :meth:`following`."""
        return self.following(layer).register_forward_pre_hook(self._residual_hook(pass_, layer))

    def stop_hook(self, layer: int):
        """Install a hook that raises :class:`ForwardStopped` once block ``layer`` and its
        ``"residual"`` hook are done; returns its handle.  Here: on the input of
        :meth:`following`, after :meth:`hook_residual`'s hook there."""
        return self.following(layer).register_forward_pre_hook(stop_forward)

    @contextlib.contextmanager
    def stopping_after(self, layer: int) -> Iterator[None]:
        """Within the block, a forward pass raises :class:`ForwardStopped` after block
        ``layer``: no later block, final norm or unembedding runs.  Enter it after
        :meth:`instrument`, so that the hooks of ``layer`` run first."""
        with hooked([self.stop_hook(layer)]):
            yield

    @contextlib.contextmanager
    def unembedding_at(self, positions: torch.Tensor, calls: list) -> Iterator[None]:
        """Within the block, the input ``[B, L, H]`` of :attr:`output_embedding` is cut to
        ``positions`` ``[B, P]`` (:func:`gather_positions`), so it computes ``[B, P]`` logits
        only; each cut appends to ``calls`` (so that a caller can check it happened)."""

        def gather(module, args):
            calls.append(positions.shape)
            return (gather_positions(args[0], positions), *args[1:])

        with hooked([self.output_embedding.register_forward_pre_hook(gather)]):
            yield

    def start_module(self, layer: int) -> nn.Module:
        """The module whose input is the residual stream entering block ``layer``: block 0 for
        layer 0, else :meth:`following` ``(layer - 1)`` (the final norm for ``n_layers``)."""
        return self.blocks[0] if layer == 0 else self.following(layer - 1)

    def start_refusal(self, layer: int) -> str | None:
        """Why a pass cannot start at block ``layer`` (:meth:`starting_at`), or None where it
        can: the blocks before it hand later blocks more than the residual stream.  Here every
        start is possible."""
        return None

    def skipped_block(self, layer: int, args: tuple, kwargs: dict) -> object:
        """What block ``layer`` returns, without running, in a pass that starts after it
        (:meth:`starting_at`): its hidden-states input passed through, in the form the model's
        loop over blocks unpacks.  Here the tensor itself; adapters whose blocks return tuples
        override it."""
        return block_input(args, kwargs)

    @contextlib.contextmanager
    def starting_at(self, layer: int, residual: torch.Tensor) -> Iterator[None]:
        """Within the block, a forward pass runs only blocks ``layer ..`` (``layer`` may be
        :attr:`n_layers`: the final norm alone), from ``residual`` ``[B, L, H]``, the residual
        stream entering block ``layer`` (what the ``"residual"`` site of ``layer - 1`` reads).

        The blocks before it return their input without running (:meth:`skipped_block`), so
        their mixers, caches and hooks are not touched; the input of :meth:`start_module` is
        replaced by ``residual`` before any other hook there sees it.  The embeddings still run
        (the model's forward takes the token ids, its masks and positions from them).

        Raises:
            ValueError: the adapter cannot start there (:meth:`start_refusal`).
        """
        refusal = self.start_refusal(layer)
        if refusal is not None:
            raise ValueError(refusal)

        def swap(module, args, kwargs):
            if args:
                return (residual, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": residual}

        with contextlib.ExitStack() as stack:
            for skipped in range(layer):
                stack.enter_context(
                    replaced_forward(
                        self.blocks[skipped],
                        functools.partial(self._skip_block, skipped),
                    )
                )
            handle = self.start_module(layer).register_forward_pre_hook(
                swap, with_kwargs=True, prepend=True
            )
            stack.enter_context(hooked([handle]))
            yield

    def _skip_block(self, layer: int, *args, **kwargs) -> object:
        return self.skipped_block(layer, args, kwargs)

    def instrument_state(self, pass_: Pass, stack: contextlib.ExitStack) -> None:
        """Whatever else, beyond :meth:`substitutions`, routes the side states through
        statetap for ``pass_`` (hooks, switches), entered into ``stack``."""

    def enter_layer(self, pass_: Pass, layer: int, kwargs: dict) -> None:
        """Called as ``layer``'s mixer starts, with the mixer's keyword arguments; sets
        ``pass_.layer`` and ``pass_.cache`` (the model's cache handed to the mixer, or None)."""
        pass_.layer = layer
        name = self.layer_cache_argument(layer)
        pass_.cache = None if name is None else kwargs.get(name)

    @property
    def mixer_cache_argument(self) -> str:
        """The keyword under which a block hands its mixer the model's cache."""
        raise NotImplementedError

    def layer_cache_argument(self, layer: int) -> str | None:
        """The keyword under which block ``layer`` hands its mixer the model's cache (None: that
        mixer takes no cache, as an MLP layer of a hybrid).  Here :attr:`mixer_cache_argument`
        for every layer; hybrids, whose attention and recurrent mixers differ, read each."""
        return self.mixer_cache_argument

    @property
    def probe_passes(self) -> int:
        """The number of forward passes :meth:`verify` runs over the whole model."""
        return len(self.probe_calls) + self.records_hidden_states

    def verify(self) -> None:
        """Check that the model still calls what statetap substitutes, the way it reads it.

        A probe pass (one row, :attr:`probe_calls`: a prefill, then continuations from the
        cache, in eval mode without gradients; the model and its cache are left as they were)
        records which substitutions ran and whether every mixer that takes the cache
        (:meth:`layer_cache_argument`) was handed it.  One more
        pass with ``output_hidden_states`` reads :attr:`hidden_states_layout` off the model.

        Raises:
            UpstreamDrift: a substitution never ran, the model returned no cache, a mixer was
                not handed the cache, or a substitution received arguments it does not know;
                the message names the package version, the function and the tested range.
        """
        called: set[str] = set()
        handed: set[int] = set()
        pass_ = Pass(batch=1, length=1)

        def note_cache(layer: int):
            def hook(module, args, kwargs):
                if pass_.cache is not None:
                    handed.add(layer)

            return hook

        device = next(self.model.parameters()).device
        cache = None
        with contextlib.ExitStack() as stack:
            stack.enter_context(evaluating(self.model))
            stack.enter_context(torch.no_grad())
            stack.enter_context(self.instrument(pass_, called))
            stack.enter_context(
                hooked(
                    [
                        self.mixer(layer).register_forward_pre_hook(
                            note_cache(layer), with_kwargs=True
                        )
                        for layer in range(self.n_layers)
                    ]
                )
            )
            for call, (length, expected) in enumerate(self.probe_calls):
                called.clear()
                handed.clear()
                pass_.length = length
                ids = torch.zeros(1, length, dtype=torch.long, device=device)
                what = "a prefill" if call == 0 else f"a {length}-token continuation from a cache"
                _, cache = self.forward(ids, None, cache, keep_state=True)
                if cache is None:
                    raise drift(
                        self.package,
                        f"{type(self.model).__name__}.forward",
                        f"returned no cache after {what}",
                    )
                for name in expected:
                    if name not in called:
                        raise drift(
                            self.package,
                            f"{self.modeling_module}.{name}",
                            f"was not called during {what}",
                        )
                unhanded = [
                    layer
                    for layer in range(self.n_layers)
                    if layer not in handed and self.layer_cache_argument(layer) is not None
                ]
                if call > 0 and unhanded:
                    layer = unhanded[0]
                    raise drift(
                        self.package,
                        f"{type(self.mixer(layer)).__name__}.forward",
                        f"was not handed the cache as {self.layer_cache_argument(layer)!r} "
                        f"during {what} (layer {layer})",
                    )
            if self.records_hidden_states:
                pass_.length = 3
                self._hidden_states_layout = self._read_hidden_states_layout(device)

    def _read_hidden_states_layout(self, device: torch.device) -> tuple[int | str, ...]:
        """:attr:`hidden_states_layout` of one forward of a 3-token row: each entry of the
        model's ``output_hidden_states`` matched exactly against the residual stream of every
        layer as the ``"residual"`` site reads it, the embeddings and the final norm's output."""
        known: dict[int | str, torch.Tensor] = {}

        def keep(key: int | str, output: bool):
            def hook(module, args, *result):
                known[key] = result[0] if output else args[0]

            return hook

        handles = [self.blocks[0].register_forward_pre_hook(keep("embeddings", False))]
        handles += [
            self.following(layer).register_forward_pre_hook(keep(layer, False))
            for layer in range(self.n_layers)
        ]
        handles.append(self.final_norm.register_forward_hook(keep("final norm", True)))
        ids = torch.arange(3, device=device)[None] % self.model.config.vocab_size
        with hooked(handles):
            hidden_states = self.model(ids, output_hidden_states=True).hidden_states
        return tuple(
            next(
                (key for key, value in known.items() if torch.equal(value, entry)),
                "other",
            )
            for entry in hidden_states
        )

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
