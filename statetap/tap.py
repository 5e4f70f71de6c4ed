"""Attach statetap to a model: emit and inject at any site, layer and position in one pass.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> ids = torch.randint(0, 64, (3, 10))
    >>> steer = torch.randn(32)
    >>> result = tap.run(
    ...     ids,
    ...     emit=[statetap.Emit("residual", layers=1),
    ...           statetap.Emit("state", layers=0, positions=[2, -1])],
    ...     inject=[statetap.Inject("residual", layer=0, value=steer, positions=-2,
    ...                             scale=torch.tensor([0.0, 1.0, 4.0]))],
    ... )
    >>> result["residual", 1].shape, result["ssm", 0].shape, result["conv", 0].shape
    (torch.Size([3, 1, 32]), torch.Size([3, 2, 64, 4]), torch.Size([3, 2, 64, 4]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from statetap.adapters import Adapter, adapter_for
from statetap.adapters.base import ForwardStopped
from statetap.adapters.upstream import check_transformers_version
from statetap.kernels import Schedule
from statetap.plan import Injection, Pass, SiteOps, first_occurrences
from statetap.positions import PositionSpec, real_tokens, resolve_positions
from statetap.sites import COMMON_SITES, STATE_GROUP
from statetap.state import RecurrentState


@dataclass(frozen=True)
class Emit:
    """Return ``site`` at ``positions`` of each of ``layers``.

    Attributes:
        site: ``"residual"``, ``"mixer"``, a state component (``tap.adapter.state_sites``) or
            ``"state"`` for all of them.
        layers: an int, a sequence of ints (negative counts from the last layer) or ``"all"``
            (for a state component or ``"state"``: every layer of ``tap.state_layers``, the
            layers with a recurrent state; a hybrid's attention layers have none).
        positions: see :mod:`statetap.positions`; default the last real token of each row.
    """

    site: str
    layers: int | Sequence[int] | str = "all"
    positions: PositionSpec = "last"


@dataclass(frozen=True)
class Inject:
    """Change ``site`` of ``layer`` after the tokens at ``positions``.

    Attributes:
        site: ``"residual"``, ``"mixer"`` or one state component.
        layer: the layer (negative counts from the last).
        value: ``[*shape]`` (the same at every row and position) or ``[B, Q, *shape]`` (per
            row and position; either of ``B`` and ``Q`` may be 1 to broadcast), where
            ``shape`` is the site's per-token shape (``tap.site_shape(site)``) and ``Q`` the
            number of positions.  Nothing in between: a ``[X, *shape]`` value could mean per
            row or per position, so it is refused; write ``value[:, None]`` (per row) or
            ``value[None]`` (per position).
        positions: see :mod:`statetap.positions`; default the last real token.
        mode: ``"add"`` (``x += scale * value``) or ``"set"`` (``x = value``).
        scale: multiplier for ``add``: a float or a ``[B]`` tensor (one per row: a sweep).
    """

    site: str
    layer: int
    value: torch.Tensor
    positions: PositionSpec = "last"
    mode: str = "add"
    scale: float | torch.Tensor | None = None


@dataclass
class TapResult:
    """Logits, the emitted tensors keyed by ``(site, layer)``, and the model's own output
    (``logits`` and ``output`` are None for a pass cut short by ``stop_after``).

    Emitted tensors are ``[B, P, *shape]`` on the model's device (in pinned CPU memory with
    ``offload=True``): state components in float32, the residual and mixer sites in the
    model's dtype.
    """

    logits: torch.Tensor | None
    activations: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    output: object = None
    state: RecurrentState | None = None  # after the last token, with ``keep_state=True``

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor:
        if key not in self.activations:
            raise KeyError(f"nothing was emitted at {key}; emitted: {sorted(self.activations)}")
        return self.activations[key]


def attach(model: nn.Module) -> Tap:
    """A :class:`Tap` on ``model`` (one of ``statetap.adapters.ADAPTERS``).

    Raises:
        TypeError: the model's class has no adapter.
        UpstreamDrift: the installed transformers (or mamba-ssm) no longer calls a function
            statetap substitutes the way statetap reads it (:meth:`Adapter.verify`).
    """
    return Tap(model)


class Tap:
    """Instrumented forward passes of one model.

    Creating one checks, with a probe pass of a few tokens, that the model still calls every
    function statetap substitutes (:meth:`statetap.adapters.Adapter.verify`), and warns when
    transformers is outside the tested range.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter: Adapter = adapter_for(model)
        check_transformers_version()
        self.adapter.verify()

    @property
    def state_layers(self) -> tuple[int, ...]:
        """The layers whose mixer holds a recurrent state (every layer, except on hybrids, whose
        attention and MLP layers have none): the only layers with state sites."""
        return self.adapter.state_layers

    def site_shape(self, site: str) -> tuple[int, ...]:
        """Per-token shape of ``site``."""
        self._check_site(site, allow_group=False)
        return self.adapter.site_shape(site)

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        emit: Sequence[Emit] = (),
        inject: Sequence[Inject] = (),
        state: RecurrentState | None = None,
        keep_state: bool = False,
        offload: bool = False,
        requires_grad: bool = False,
        stop_after: int | None = None,
        start_at: int | None = None,
        start_residual: torch.Tensor | None = None,
        logits_at: PositionSpec | None = None,
        **model_kwargs,
    ) -> TapResult:
        """One forward pass of ``input_ids`` ``[B, L]`` with the given emissions and injections.

        Args:
            input_ids, attention_mask: the batch; positions count each row's real tokens.
            emit, inject: :class:`Emit` / :class:`Inject` requests.
            state: continue from this snapshot (it is not modified: the pass runs on a copy);
                positions then count the new tokens.  Default: the empty state.
            keep_state: return the state after the last token as ``result.state`` (every
                row's last token must be real: pad on the left).
            offload: stream each emitted tensor to pinned CPU memory as its layer finishes
                (for large extractions on a GPU; the results are complete when ``run`` returns).
            requires_grad: run in the caller's autograd mode, so that gradients flow through
                the pass.  By default the pass runs under ``torch.no_grad()``: the fused
                kernels are forward-only, and a pass that autograd records runs the pure-torch
                reference instead (with a warning on every such call).
            stop_after: run the model only through this layer (negative from the last): the
                forward ends where the next block (the final norm after the last block) would
                start, so no later layer and no logits are computed; ``result.logits`` and
                ``result.output`` are then None.  Every emission and injection must be at or
                before it, and ``keep_state`` is refused (there is no cache).
            start_at, start_residual: run the model only from block ``start_at`` (``0 ..
                n_layers``; ``n_layers``: the final norm alone), with ``start_residual``
                ``[B, L, H]`` (the model's dtype) as the residual stream entering it, i.e. what
                the ``"residual"`` site of layer ``start_at - 1`` reads (the embeddings for 0).
                The earlier blocks do not run (their cost is saved): the tokens still go through
                the embedding, but nothing of it reaches the blocks that run except through
                ``start_residual``.  Every emission and injection must be at ``start_at`` or
                later; the states of the later layers are ``state``'s (or empty), so a pass
                fed the full run's residual stream and states gives the full run's logits.
                ``keep_state`` is refused (the earlier layers' states would not advance), and
                so is a model whose blocks hand each other more than the residual stream
                (RWKV-7's ``v_first``, mamba-ssm's split stream) for ``start_at > 0``.
            logits_at: compute the logits only at these positions (see
                :mod:`statetap.positions`; ``"last"``: each row's last real token): the output
                embedding's input is gathered there, so ``result.logits`` is ``[B, P, V]`` and
                the unembedding costs ``P`` tokens a row, not ``L``.  Refused with
                ``keep_state`` and ``stop_after``.
            model_kwargs: passed to the model.

        Raises:
            ValueError: bad input, a model in training mode, or a batch the model cannot run
                exactly (for example a padded batch on transformers' RWKV-4, which ignores
                ``attention_mask``; the message says how to pad instead).
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', input_ids)!r}"
            )
        self.check_eval_mode()
        batch, length = input_ids.shape
        self.adapter.check_run(batch, length, continues=state is not None)
        self.adapter.check_padding(attention_mask, keeps_state=keep_state)
        pass_ = Pass(batch=batch, length=length, offload=offload)

        def positions_of(request: Emit | Inject, name: str) -> torch.Tensor:
            spec = request.positions
            if isinstance(spec, str) and spec == "all" and request.site not in COMMON_SITES:
                raise ValueError(
                    "positions='all' is for the residual and mixer sites; "
                    f"{request.site!r} takes explicit positions"
                )
            return resolve_positions(spec, batch, length, attention_mask, name=name)

        self.plan(pass_, emit, inject, positions_of)
        if stop_after is not None:
            stop_after = self._check_stop(pass_, stop_after, keep_state)
        if start_at is not None or start_residual is not None:
            start_at = self._check_start(
                pass_, start_at, start_residual, keep_state, stop_after, input_ids
            )
        kept_logits = None
        if logits_at is not None:
            if keep_state or stop_after is not None:
                raise ValueError("logits_at cannot go with keep_state or stop_after")
            kept_logits = resolve_positions(logits_at, batch, length, attention_mask, "logits_at")
        cache = None
        mask = real_tokens(batch, length, attention_mask).to(input_ids.device)
        model_mask = attention_mask
        if state is not None:
            if not isinstance(state, RecurrentState) or state.adapter.model is not self.model:
                raise TypeError("state must be a RecurrentState taken from this model's Tap")
            if state.batch != batch:
                raise ValueError(f"state has {state.batch} rows but input_ids has {batch}")
            cache = state.clone().cache
            mask = torch.cat([state.mask.to(mask), mask], dim=1)
            if self.adapter.takes_cache_mask and not bool(mask.all()):
                model_mask = mask.long()  # the cached tokens' and this pass's
        if keep_state and attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError("keep_state needs every row's last token to be real: pad on the left")
        autograd = contextlib.nullcontext() if requires_grad else torch.no_grad()
        stopping = (
            contextlib.nullcontext()
            if stop_after is None
            else self.adapter.stopping_after(stop_after)
        )
        starting = (
            contextlib.nullcontext()
            if start_at is None
            else self.adapter.starting_at(start_at, start_residual)
        )
        cuts: list = []  # one per call of the output embedding that logits_at cut
        gathering = (
            contextlib.nullcontext()
            if kept_logits is None
            else self.adapter.unembedding_at(kept_logits.to(self.device), cuts)
        )
        try:
            with autograd, self.adapter.instrument(pass_), stopping, starting, gathering:
                output, cache = self.adapter.forward(
                    input_ids, model_mask, cache, keep_state, **model_kwargs
                )
        except ForwardStopped:
            output = None
        missing = [
            key
            for key, ops in pass_.ops.items()
            if ops.emit_at is not None and key not in pass_.results
        ]
        if missing:
            raise RuntimeError(
                f"the model never reached {missing} during the pass; nothing was emitted there"
            )
        if offload and torch.cuda.is_available():
            torch.cuda.synchronize()  # the asynchronous copies to pinned memory have landed
        logits = None if output is None else output.logits
        if kept_logits is not None and len(cuts) != 1:
            raise RuntimeError(
                f"logits_at: {type(self.model).__name__} called its output embedding {len(cuts)} "
                "times as the module statetap hooks, not once, so the logits were not cut to the "
                "positions asked for exactly once"
            )
        result = TapResult(logits=logits, activations=pass_.results, output=output)
        if keep_state:
            result.state = RecurrentState(self.adapter, cache, output.logits[:, -1], mask)
        return result

    def check_eval_mode(self) -> None:
        """Refuse a model in training mode: transformers' Mamba mixers then take a fused
        training path (``mamba_inner_fn``) that bypasses statetap, so emissions and injections
        would be ignored."""
        if self.model.training:
            raise ValueError(
                f"{type(self.model).__name__} is in training mode, where its mixers may take a "
                "fused path that bypasses statetap (emissions and injections would be ignored); "
                "call model.eval() first (gradients still flow with requires_grad=True)"
            )

    def _check_stop(self, pass_: Pass, stop_after: object, keep_state: bool) -> int:
        layer = self._layer(stop_after)
        if keep_state:
            raise ValueError("stop_after cuts the pass short, so there is no state to keep")
        beyond = sorted(key for key in pass_.ops if key[1] > layer)
        if beyond:
            raise ValueError(
                f"stop_after={stop_after} ends the pass after layer {layer}, but {beyond} "
                "come later"
            )
        return layer

    def _check_start(
        self,
        pass_: Pass,
        start_at: object,
        residual: object,
        keep_state: bool,
        stop_after: int | None,
        input_ids: torch.Tensor,
    ) -> int:
        n = self.adapter.n_layers
        if start_at is None or residual is None:
            raise ValueError("start_at and start_residual go together: pass both or neither")
        if not isinstance(start_at, int) or isinstance(start_at, bool) or not 0 <= start_at <= n:
            raise ValueError(
                f"start_at must be an int in 0 .. {n} (the model's layers), got {start_at!r}"
            )
        expected = [*input_ids.shape, self.adapter.hidden_size]
        if not isinstance(residual, torch.Tensor) or list(residual.shape) != expected:
            raise ValueError(
                f"start_residual must be a [B, L, H] = {expected} tensor, got "
                f"{getattr(residual, 'shape', type(residual).__name__)!r}"
            )
        dtype = next(self.model.parameters()).dtype
        if residual.dtype != dtype or residual.device != self.device:
            raise TypeError(
                f"start_residual must be {dtype} on {self.device} (the model's), got "
                f"{residual.dtype} on {residual.device}"
            )
        if keep_state:
            raise ValueError(
                "start_at skips the layers before it, whose states then do not advance: there "
                "is no state to keep"
            )
        if stop_after is not None and stop_after < start_at:
            raise ValueError(f"stop_after={stop_after} ends the pass before start_at={start_at}")
        before = sorted(key for key in pass_.ops if key[1] < start_at)
        if before:
            raise ValueError(f"start_at={start_at} skips the layers of {before}")
        return start_at  # the adapter's refusals are raised by ``adapter.starting_at``

    # ------------------------------------------------------------------ planning
    def _check_site(self, site: str, allow_group: bool) -> None:
        names = self.adapter.sites + ((STATE_GROUP,) if allow_group else ())
        if site not in names:
            raise ValueError(
                f"{type(self.model).__name__} has no site {site!r}; "
                f"its sites are {', '.join(names)}"
            )

    def _layer(self, layer: object) -> int:
        n = self.adapter.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"a layer must be an int, got {layer!r}")
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range for a model with {n} layers")
        return layer % n

    def plan(
        self, pass_: Pass, emit: Sequence[Emit], inject: Sequence[Inject], positions_of
    ) -> None:
        """Fill ``pass_.ops`` from the requests; ``positions_of(request, name)`` gives each
        request's padded positions ``[B, P]`` in this pass (``-1``: not in this pass)."""
        for request in emit:
            self._plan_emission(pass_, request, positions_of)
        for request in inject:
            self._plan_injection(pass_, request, positions_of)

    def _state_layer(self, site: str, layer: object) -> int:
        """``layer`` checked, and for a state component one of :attr:`state_layers`."""
        layer = self._layer(layer)
        if site in self.adapter.state_sites and layer not in self.state_layers:
            raise ValueError(
                f"layer {layer} of {type(self.model).__name__} holds no recurrent state (its "
                f"mixer is {type(self.adapter.mixer(layer)).__name__}), so it has no {site!r}; "
                f"the layers with one are tap.state_layers = {list(self.state_layers)}"
            )
        return layer

    def layers_with(self, site: str, layers: Sequence[int] | None = None) -> list[int]:
        """The layers among ``layers`` (default every layer; checked, negative from the last)
        that have ``site``: for a state component or ``"state"`` those in :attr:`state_layers`,
        for the residual and mixer sites all of them.  Sorted, without repeats."""
        self._check_site(site, allow_group=True)
        chosen = range(self.adapter.n_layers) if layers is None else layers
        indices = sorted({self._layer(layer) for layer in chosen})
        if site == STATE_GROUP or site in self.adapter.state_sites:
            return [layer for layer in indices if layer in self.state_layers]
        return indices

    def emission_keys(self, request: Emit) -> list[tuple[str, int]]:
        """The ``(site, layer)`` pairs an :class:`Emit` request covers (checked)."""
        if not isinstance(request, Emit):
            raise TypeError(f"emit takes statetap.Emit requests, got {type(request).__name__}")
        self._check_site(request.site, allow_group=True)
        state = request.site == STATE_GROUP or request.site in self.adapter.state_sites
        sites = self.adapter.state_sites if request.site == STATE_GROUP else (request.site,)
        layers = request.layers
        if layers == "all":
            layers = self.state_layers if state else range(self.adapter.n_layers)
        elif isinstance(layers, int):
            layers = [layers]
        return [(site, self._state_layer(site, layer)) for site in sites for layer in layers]

    def _plan_emission(self, pass_: Pass, request: Emit, positions_of) -> None:
        keys = self.emission_keys(request)
        name = f"Emit({request.site!r}).positions"
        positions = positions_of(request, name)
        # one schedule for every layer's kernel call, checked here (on the host when the
        # positions are there): the layers' instrumented calls then read no device value
        schedule = self._schedule(first_occurrences(positions), pass_, name)
        for site, layer in keys:
            ops = pass_.ops.setdefault((site, layer), SiteOps())
            if ops.emit_at is not None:
                raise ValueError(
                    f"({site!r}, layer {layer}) is emitted by two requests; merge their positions"
                )
            ops.emit_at = positions.to(self.device)
            ops.emit_schedule = schedule

    def _schedule(self, positions: torch.Tensor, pass_: Pass, name: str) -> Schedule:
        return Schedule.build(
            positions, batch=pass_.batch, length=pass_.length, device=self.device, name=name
        )

    def _plan_injection(self, pass_: Pass, request: Inject, positions_of) -> None:
        if not isinstance(request, Inject):
            raise TypeError(f"inject takes statetap.Inject requests, got {type(request).__name__}")
        self._check_site(request.site, allow_group=False)
        layer = self._state_layer(request.site, request.layer)
        name = f"Inject({request.site!r}).positions"
        positions = positions_of(request, name)
        ordered = positions.sort(1).values
        if bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any()):
            raise ValueError(f"{name} names the same token twice in one row: {request.positions!r}")
        batch, queries = positions.shape
        shape = self.adapter.site_shape(request.site)
        target = (batch, queries, *shape)
        value = request.value
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(
                f"Inject({request.site!r}).value must be a floating-point tensor "
                f"of shape {list(shape)}"
            )
        expected = f"{list(shape)} (every row and position) or {list(target)} (B or Q may be 1)"
        if value.dim() == len(shape) + 1:
            raise ValueError(
                f"Inject({request.site!r}).value of shape {list(value.shape)} is ambiguous (per "
                f"row or per position?): expected {expected}; write value[:, None] for one value "
                f"per row or value[None] for one per position"
            )
        try:
            if value.dim() not in (len(shape), len(shape) + 2):
                raise RuntimeError
            value = torch.broadcast_to(value.to(self.device, torch.float32), target)
        except RuntimeError:
            raise ValueError(
                f"Inject({request.site!r}).value of shape {list(value.shape)} does not fit the "
                f"site: expected {expected}"
            ) from None
        if request.mode not in ("add", "set"):
            raise ValueError(f"Inject.mode must be 'add' or 'set', got {request.mode!r}")
        scale = request.scale
        if scale is not None:
            if request.mode == "set":
                raise ValueError("Inject.scale applies to mode='add' only")
            scale = torch.as_tensor(scale, dtype=torch.float32, device=self.device)
            if scale.dim() == 1 and scale.shape[0] == batch:
                scale = scale[:, None]
            elif scale.dim() != 0:
                raise ValueError(
                    f"Inject.scale must be a float or a [B={batch}] tensor, got {list(scale.shape)}"
                )
            scale = scale.expand(batch, queries).contiguous()
        ops = pass_.ops.setdefault((request.site, layer), SiteOps())
        if ops.injection is not None:
            raise ValueError(
                f"({request.site!r}, layer {layer}) has two injections; merge them into one"
            )
        ops.injection = Injection(
            self._schedule(positions, pass_, name), value, request.mode, scale
        )

    def generate(self, input_ids, attention_mask=None, emit=(), inject=(), **generate_kwargs):
        """``model.generate`` with emissions and injections: see :mod:`statetap.generate`."""
        from statetap.generate import generate

        return generate(self, input_ids, attention_mask, emit, inject, **generate_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
