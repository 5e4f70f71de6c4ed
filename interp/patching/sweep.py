"""The layer x position patching sweep, batched: one row per patch, many patches per pass.

A patch puts the *clean* run's value of one site at one (layer, position) into the *corrupted*
run and reads a metric at the last token.  Nothing before the patched token changes, and no
layer below the patched one: the corrupted run is run once, emitting every recurrent-state
component of every layer after every token and the residual stream entering every layer, and
each patch continues from there, running only the tokens after its first changed one and only
the layers from the patched one up (``Tap.run``'s ``start_at``), with the corrupted state just
before that token (a :class:`statetap.RecurrentState` per row, built with ``select`` and
``edit``) and the corrupted residual stream entering that layer:

* a state site at ``(layer, t)``: the state after ``t`` with that layer's component (or every
  component, site ``"state"``) set to the clean one (``set`` between ``t`` and ``t + 1``,
  exactly editing the model's cache), continued over tokens ``t + 1 ..`` from ``layer``;
* ``mixer`` at ``(layer, t)``: the state after ``t - 1``, continued over tokens ``t ..`` from
  ``layer`` with the clean activation ``set`` at the first of them (``Inject``);
* ``residual`` at ``(layer, t)`` (the output of block ``layer``): the same from ``layer + 1``
  (the final norm alone after the last layer), the clean value in place of the corrupted
  residual stream at token ``t``.

The logits are computed at each row's last token only (``logits_at``).  Rows of a pass share
their first layer; within that, any mix of prompts, positions and sites (the patch is in each
row's own state or input), except that ``mixer`` passes hold one layer each (its ``Inject``).
Rows are sorted by how many tokens they continue over and cut into passes of at most
``batch_tokens`` padded tokens (the memory budget), right-padded.  A state patch after the
last token changes nothing the metric reads: it is the corrupted run's metric, with no pass.

A hybrid (attention layers beside the recurrent ones) runs every layer of each patch: its
rows start from the corrupted prefix re-run (the attention layers' cached keys and values
cannot be rebuilt from the recurrent state), with ``residual`` and ``mixer`` patches as
``Inject``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from statetap import Emit, Inject, Tap, TapResult
from statetap.interp.patching.metrics import Metric
from statetap.interp.patching.result import PatchingResult
from statetap.interp.steering.vectors import layer_indices

STATE = "state"  # every recurrent-state component of a layer at once
ACTIVATIONS = ("residual", "mixer")


@dataclass
class SweepMetrics:
    """The metric of the clean, the corrupted and every patched run.

    Attributes:
        sites: the patched sites.
        layers: per site, its layers (state sites: the layers with a recurrent state).
        positions: the patched token positions (``0 .. L-1``).
        clean, corrupt: ``[N]`` per prompt pair.
        patched: per site, ``[N, len(layers[site]), len(positions)]``.
    """

    sites: list[str]
    layers: dict[str, list[int]]
    positions: list[int]
    clean: torch.Tensor
    corrupt: torch.Tensor
    patched: dict[str, torch.Tensor]

    def to_result(
        self,
        method: str,
        effect: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        samples: int = 1,
        meta: dict | None = None,
    ) -> PatchingResult:
        """The :class:`PatchingResult` of ``method``, on the CPU: each run of ``samples``
        consecutive pairs averaged into one prompt (causal tracing's noise samples), and
        ``effect(patched [N, layers, positions], clean [N], corrupt [N])`` per site."""

        def per_prompt(value: torch.Tensor) -> torch.Tensor:
            return value.view(-1, samples, *value.shape[1:]).mean(1).cpu()

        clean, corrupt = per_prompt(self.clean), per_prompt(self.corrupt)
        patched = {site: per_prompt(value) for site, value in self.patched.items()}
        return PatchingResult(
            method=method,
            sites=self.sites,
            layers=self.layers,
            positions=self.positions,
            clean=clean,
            corrupt=corrupt,
            patched=patched,
            effect={site: effect(value, clean, corrupt) for site, value in patched.items()},
            meta=meta or {},
        )


@dataclass(frozen=True)
class _Row:
    site: str
    layer: int
    pair: int
    position: int
    start: int  # tokens of the corrupted prompt consumed before the continuation
    first_layer: int  # the first block the continuation runs (n_layers: the final norm alone)

    @property
    def injected(self) -> bool:
        """The patch is an ``Inject`` of the clean activation (else it is in the row's state,
        or, for ``residual`` from the next layer, in its input)."""
        return self.site in ACTIVATIONS and self.first_layer <= self.layer


def default_sites(tap: Tap) -> list[str]:
    """``residual``, ``mixer`` and each recurrent-state component of the model."""
    return [*ACTIVATIONS, *tap.adapter.state_sites]


def site_layers(tap: Tap, site: str, layers: Sequence[int] | str) -> list[int]:
    """``layers`` (``"all"`` or ints) of ``site``; a state site keeps its stateful layers.

    Raises:
        ValueError: an unknown site, or a state site asked for at a layer without state.
    """
    known = [*tap.adapter.sites, STATE]
    if site not in known:
        raise ValueError(f"sites: {type(tap.model).__name__} has no site {site!r}; it has {known}")
    chosen = layer_indices(tap, layers)
    if site in ACTIVATIONS:
        return chosen
    stateful = tap.state_layers
    if layers == "all":
        return [layer for layer in chosen if layer in stateful]
    missing = [layer for layer in chosen if layer not in stateful]
    if missing:
        raise ValueError(f"layers {missing} have no recurrent state to patch at site {site!r}")
    return chosen


def check_prompts(clean: torch.Tensor, corrupt: torch.Tensor) -> None:
    """Raise ValueError unless ``clean`` and ``corrupt`` are token ids of one shape ``[N, L]``."""
    for name, ids in (("clean", clean), ("corrupt", corrupt)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"{name} must be a [N, L] tensor of token ids")
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean and corrupt prompts must be aligned token by token (one shape [N, L]), got "
            f"{list(clean.shape)} and {list(corrupt.shape)}"
        )


@contextlib.contextmanager
def embedding_offset(tap: Tap, offset: torch.Tensor | None) -> Iterator[None]:
    """Within the block, the model's input embeddings ``[B, L, d]`` have ``offset`` added
    (nothing with None): causal tracing's noised subject tokens."""
    if offset is None:
        yield
        return

    def add(module, args, output):
        return output + offset.to(output.device, output.dtype)

    handle = tap.model.get_input_embeddings().register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def patch_sweep(
    tap: Tap,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | str = "all",
    positions: Sequence[int] | None = None,
    corrupt_offset: torch.Tensor | None = None,
    batch_tokens: int = 2048,
    same_length: bool = False,
) -> SweepMetrics:
    """The metric of every patch of the clean run's sites into the corrupted run.

    Args:
        tap: the model's :class:`statetap.Tap`.
        clean, corrupt: ``[N, L]`` token ids, aligned position by position.
        metric: ``metric(logits [B, V], pairs [B]) -> [B]`` on the last token's logits
            (:mod:`statetap.interp.patching.metrics`).
        sites: ``residual``, ``mixer``, state components, or ``"state"`` (every component of
            a layer at once); default :func:`default_sites`.
        layers: ``"all"`` or a list of ints (negative from the last).
        positions: token positions to patch (negative from the end); default all.
        corrupt_offset: ``[N, L, d]`` added to the corrupted run's input embeddings (causal
            tracing's noise); the clean run has none.
        batch_tokens: the memory budget: at most this many (padded) tokens per pass.
        same_length: batch only continuations of one length (models that take no attention
            mask, such as mamba-ssm's ``MambaLMHeadModel``).

    Raises:
        ValueError: misaligned prompts, an unknown site, a bad layer, position or budget.
    """
    check_prompts(clean, corrupt)
    n_pairs, length = corrupt.shape
    if not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
    sites = default_sites(tap) if sites is None else list(sites)
    if not sites:
        raise ValueError("sites must name at least one site")
    layers_of = {site: site_layers(tap, site, layers) for site in sites}
    positions = _positions(positions, length)
    if corrupt_offset is not None and tuple(corrupt_offset.shape[:2]) != (n_pairs, length):
        raise ValueError(
            f"corrupt_offset must be [N={n_pairs}, L={length}, d], got {list(corrupt_offset.shape)}"
        )
    device = tap.device
    clean, corrupt = clean.to(device), corrupt.to(device)
    pairs = torch.arange(n_pairs, device=device)
    components = list(tap.adapter.state_sites)
    stateful = list(tap.state_layers)

    clean_run = tap.run(clean, emit=_clean_emissions(sites, layers_of, components, positions))
    hybrid = tap.adapter.takes_cache_mask  # continuations start from re-run prefixes
    n_layers = tap.adapter.n_layers
    # RWKV-7 and mamba-ssm's blocks hand later ones more than the residual stream
    from_layer_0 = hybrid or tap.adapter.start_refusal(n_layers) is not None

    def first_layer(site: str, layer: int) -> int:
        if from_layer_0:
            return 0
        return layer + 1 if site == "residual" else layer

    rows = [
        _Row(site, layer, pair, t, t if site in ACTIVATIONS else t + 1, first_layer(site, layer))
        for site in sites
        for layer in layers_of[site]
        for pair in range(n_pairs)
        for t in positions
    ]
    rows = [row for row in rows if row.start < length]
    # the residual stream entering each first layer but 0, at every token
    entering = sorted({row.first_layer - 1 for row in rows if row.first_layer > 0})
    emit = [] if hybrid else [Emit(STATE, stateful, positions=list(range(length)))]
    if entering:
        emit.append(Emit("residual", entering, positions="all"))
    with embedding_offset(tap, corrupt_offset):
        corrupt_run = tap.run(corrupt, emit=emit, keep_state=length > 1 and not hybrid)
    clean_metric = metric(clean_run.logits[:, -1], pairs)
    corrupt_metric = metric(corrupt_run.logits[:, -1], pairs)

    patched = {
        site: corrupt_metric[:, None, None].repeat(1, len(layers_of[site]), len(positions))
        for site in sites
    }
    context = _Context(
        tap,
        clean_run,
        corrupt_run,
        corrupt,
        corrupt_offset,
        positions,
        components,
        stateful,
        n_layers,
        pad_one_token_rows=not same_length,
    )
    for batch in _batches(rows, length, batch_tokens, same_length):
        values = metric(context.run(batch), torch.tensor([row.pair for row in batch]))
        for row, value in zip(batch, values.tolist()):
            index = layers_of[row.site].index(row.layer), positions.index(row.position)
            patched[row.site][row.pair, index[0], index[1]] = value
    return SweepMetrics(sites, layers_of, positions, clean_metric, corrupt_metric, patched)


def _positions(positions: Sequence[int] | None, length: int) -> list[int]:
    if positions is None:
        return list(range(length))
    if isinstance(positions, (str, bytes)) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in positions
    ):
        raise TypeError(f"positions must be a list of ints, got {positions!r}")
    bad = [p for p in positions if not -length <= p < length]
    if bad or not positions:
        raise ValueError(
            f"positions must be a non-empty list in -{length} .. {length - 1}, "
            f"got {list(positions)}"
        )
    return sorted({p % length for p in positions})


def _clean_emissions(sites, layers_of, components, positions) -> list[Emit]:
    """What the clean run emits: each patched site (each component for ``"state"``) at its
    layers and positions, one request per site."""
    wanted: dict[str, set[int]] = {}
    for site in sites:
        for component in components if site == STATE else [site]:
            wanted.setdefault(component, set()).update(layers_of[site])
    return [Emit(site, sorted(layers), positions=positions) for site, layers in wanted.items()]


def _batches(
    rows: list[_Row], length: int, batch_tokens: int, same_length: bool
) -> Iterator[list[_Row]]:
    """Rows cut into passes: by first layer, from the start or not, and the (site, layer) of an
    ``Inject``; longest continuation first, at most ``batch_tokens`` padded tokens."""
    groups: dict[tuple, list[_Row]] = {}
    for row in rows:
        injected = (row.site, row.layer) if row.injected else None
        groups.setdefault((row.first_layer, row.start == 0, injected), []).append(row)
    for group in groups.values():
        group.sort(key=lambda row: row.start)
        batch: list[_Row] = []
        for row in group:
            width = length - (batch[0].start if batch else row.start)
            full = (len(batch) + 1) * max(width, 2) > batch_tokens
            if batch and (full or same_length and row.start != batch[0].start):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch


@dataclass
class _Context:
    """What every patch pass reads: the clean run's emissions at ``positions``, the corrupted
    run's states after each token and its kept state (each pass's state is selected from it),
    the corrupted prompts and their embedding offset."""

    tap: Tap
    clean_run: TapResult
    corrupt_run: TapResult
    corrupt: torch.Tensor
    corrupt_offset: torch.Tensor | None
    positions: list[int]
    components: list[str]
    stateful: list[int]
    n_layers: int
    # transformers' RWKV-4 refuses one-token steps from a state when B > 1: such passes get a
    # pad column (not with same_length: the models it serves take no mask)
    pad_one_token_rows: bool

    def run(self, batch: list[_Row]) -> torch.Tensor:
        """The last-token logits ``[B, V]`` of one pass of patched continuations."""
        length = self.corrupt.shape[1]
        width = length - min(row.start for row in batch)
        if len(batch) > 1 and self.pad_one_token_rows:
            width = max(width, 2)
        spans = [slice(row.start, length) for row in batch]
        ids, mask, offset = self._padded(batch, spans, width)
        first_layer = batch[0].first_layer
        needs_state = batch[0].start > 0 and first_layer < self.n_layers
        state = self._state(batch, first_layer) if needs_state else None
        inject, start = [], {}
        if batch[0].injected:
            site, layer = batch[0].site, batch[0].layer
            value = self._clean(batch, site, layer)[:, None]
            inject = [Inject(site, layer, value, positions=0, mode="set")]
        if first_layer > 0:
            residual = self._padded_residual(batch, spans, width)
            patched = [i for i, row in enumerate(batch) if row.site == "residual"]
            if patched:  # residual patches from the next layer: the clean value at token t
                rows = [batch[i] for i in patched]
                residual[patched, 0] = self._clean(rows, "residual", first_layer - 1)
            start = dict(start_at=first_layer, start_residual=residual)
        with embedding_offset(self.tap, offset if first_layer == 0 else None):
            result = self.tap.run(
                ids, attention_mask=mask, inject=inject, state=state, logits_at="last", **start
            )
        return result.logits[:, 0]

    def _clean(self, rows: list[_Row], site: str, layer: int) -> torch.Tensor:
        """``[B, *shape]``: the clean run's ``site`` of ``layer`` at each row's pair and
        position."""
        slots = [self.positions.index(row.position) for row in rows]
        return self.clean_run[site, layer][[row.pair for row in rows], slots]

    def _padded_residual(self, batch: list[_Row], spans: list[slice], width: int):
        """``[B, width, d]``: the corrupted run's residual stream entering the batch's first
        layer over each row's ``spans[i]``, padded on the right with zeros."""
        entering = self.corrupt_run["residual", batch[0].first_layer - 1]  # [N, L, d]
        return _spanned(entering, batch, spans, width)

    def _state(self, batch: list[_Row], first_layer: int):
        """Every row's corrupted state after its token ``start - 1``, with a state patch's
        component(s) set to the clean run's (from ``first_layer`` up: the pass runs no
        earlier layer)."""
        pairs = torch.tensor([row.pair for row in batch], device=self.corrupt.device)
        before = torch.tensor([row.start - 1 for row in batch], device=self.corrupt.device)
        rebuilt = self.tap.adapter.takes_cache_mask
        state = self._prefixes(batch) if rebuilt else self.corrupt_run.state.select(pairs)
        for component in self.components:
            for layer in [layer for layer in self.stateful if layer >= first_layer]:
                patched = [
                    i
                    for i, row in enumerate(batch)
                    if row.layer == layer and row.site in (component, STATE)
                ]
                if rebuilt and not patched:
                    continue
                if rebuilt:
                    value = state.get(component, layer)
                else:
                    value = self.corrupt_run[component, layer][pairs, before]
                if patched:
                    value[patched] = self._clean([batch[i] for i in patched], component, layer)
                state.edit(component, layer, value, mode="set")
        return state

    def _prefixes(self, batch: list[_Row]):
        """A hybrid's state after each row's corrupted prefix (tokens before ``start``), by
        running the prefixes, left-padded: its attention layers' cached keys and values cannot
        be rebuilt from the recurrent state."""
        spans = [slice(0, row.start) for row in batch]
        width = max(row.start for row in batch)
        ids, mask, offset = self._padded(batch, spans, width, left=True)
        with embedding_offset(self.tap, offset):
            return self.tap.run(ids, attention_mask=mask, keep_state=True).state

    def _padded(
        self, batch: list[_Row], spans: list[slice], width: int, left: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Each row's corrupted tokens ``spans[i]`` of its pair as ``ids`` ``[B, width]``, the
        attention mask (None without padding) and their embedding offset (None without one),
        padded on the right (``left``: on the left)."""
        ids = _spanned(self.corrupt, batch, spans, width, left)
        mask = _spanned(torch.ones_like(self.corrupt), batch, spans, width, left)
        offset = None
        if self.corrupt_offset is not None:
            offset = _spanned(self.corrupt_offset, batch, spans, width, left)
        return ids, (None if bool(mask.all()) else mask), offset


def _spanned(
    source: torch.Tensor, batch: list[_Row], spans: list[slice], width: int, left: bool = False
) -> torch.Tensor:
    """``[B, width, ...]``: row ``i``'s ``source[pair, spans[i]]`` (``source`` ``[N, L, ...]``),
    zero-padded on the right (``left``: on the left)."""
    out = source.new_zeros(len(batch), width, *source.shape[2:])
    for i, (row, span) in enumerate(zip(batch, spans)):
        n = span.stop - span.start
        where = slice(width - n, width) if left else slice(0, n)
        out[i, where] = source[row.pair, span]
    return out
