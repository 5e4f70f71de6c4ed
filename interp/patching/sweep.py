"""The layer x position patching sweep, batched: one row per patch, many patches per pass.

A patch puts the *clean* run's value of one site at one (layer, position) into the *corrupted*
run and reads a metric at the last token.  Nothing before the patched token changes, so no
patch re-runs the prefix: the corrupted run is run once, emitting every recurrent-state
component of every layer after every token, and each patch continues from the corrupted
state just before its first changed token (a :class:`statetap.RecurrentState` per row, built
with ``select`` and ``edit``):

* a state site at ``(layer, t)``: the state after ``t`` with that layer's component (or every
  component, site ``"state"``) set to the clean one (``set`` between ``t`` and ``t + 1``,
  exactly editing the model's cache), continued over tokens ``t + 1 ..``;
* ``residual`` / ``mixer`` at ``(layer, t)``: the state after ``t - 1``, continued over
  tokens ``t ..`` with the clean activation ``set`` at the first of them (``Inject``).

Rows of a pass are any mix of prompts, positions and state sites (the patch is in each row's
own state); ``residual`` / ``mixer`` passes hold one (site, layer) each (its ``Inject``).
Rows are sorted by how many tokens they continue over and cut into passes of at most
``batch_tokens`` padded tokens (the memory budget), right-padded.  A state patch after the
last token changes nothing the metric reads: it is the corrupted run's metric, with no pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from statetap import Emit, Inject, Tap, TapResult
from statetap.interp.batches import last_logits
from statetap.interp.patching.metrics import Metric
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


@dataclass(frozen=True)
class _Row:
    site: str
    layer: int
    pair: int
    position: int
    start: int  # tokens of the corrupted prompt consumed before the continuation


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
    with embedding_offset(tap, corrupt_offset):
        corrupt_run = tap.run(
            corrupt,
            emit=[] if hybrid else [Emit(STATE, stateful, positions=list(range(length)))],
            keep_state=length > 1 and not hybrid,
        )
    clean_metric = metric(clean_run.logits[:, -1], pairs)
    corrupt_metric = metric(corrupt_run.logits[:, -1], pairs)

    rows = [
        _Row(site, layer, pair, t, t if site in ACTIVATIONS else t + 1)
        for site in sites
        for layer in layers_of[site]
        for pair in range(n_pairs)
        for t in positions
    ]
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
        pad_one_token_rows=not same_length,
    )
    for batch in _batches(
        [row for row in rows if row.start < length], length, batch_tokens, same_length
    ):
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
    """Rows cut into passes: activation patches by (site, layer, from the start or not), state
    patches together; longest continuation first, at most ``batch_tokens`` padded tokens."""
    groups: dict[tuple, list[_Row]] = {}
    for row in rows:
        key = (row.site, row.layer, row.start == 0) if row.site in ACTIVATIONS else (STATE,)
        groups.setdefault(key, []).append(row)
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
    # transformers' RWKV-4 refuses one-token steps from a state when B > 1: such passes get a
    # pad column (not with same_length: the models it serves take no mask)
    pad_one_token_rows: bool

    def run(self, batch: list[_Row]) -> torch.Tensor:
        """The last-token logits ``[B, V]`` of one pass of patched continuations."""
        length = self.corrupt.shape[1]
        width = length - min(row.start for row in batch)
        if len(batch) > 1 and self.pad_one_token_rows:
            width = max(width, 2)
        ids, mask, offset = self._padded(batch, [slice(row.start, length) for row in batch], width)
        state = None if batch[0].start == 0 else self._state(batch)
        inject = []
        if batch[0].site in ACTIVATIONS:
            site, layer = batch[0].site, batch[0].layer
            emitted = self.clean_run[site, layer]  # [N, P, d] at the patched positions
            slots = [self.positions.index(row.position) for row in batch]
            value = emitted[[row.pair for row in batch], slots][:, None]
            inject = [Inject(site, layer, value, positions=0, mode="set")]
        with embedding_offset(self.tap, offset):
            result = self.tap.run(ids, attention_mask=mask, inject=inject, state=state)
        return last_logits(result.logits, mask)

    def _state(self, batch: list[_Row]):
        """Every row's corrupted state after its token ``start - 1``, with a state patch's
        component(s) set to the clean run's."""
        pairs = torch.tensor([row.pair for row in batch], device=self.corrupt.device)
        before = torch.tensor([row.start - 1 for row in batch], device=self.corrupt.device)
        rebuilt = self.tap.adapter.takes_cache_mask
        state = self._prefixes(batch) if rebuilt else self.corrupt_run.state.select(pairs)
        for component in self.components:
            for layer in self.stateful:
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
                for i in patched:
                    slot = self.positions.index(batch[i].position)
                    value[i] = self.clean_run[component, layer][batch[i].pair, slot]
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
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=self.corrupt.device)
        mask = torch.zeros_like(ids)
        offset = None
        if self.corrupt_offset is not None:
            offset = self.corrupt_offset.new_zeros(len(batch), width, self.corrupt_offset.shape[2])
        for i, (row, span) in enumerate(zip(batch, spans)):
            n = span.stop - span.start
            where = slice(width - n, width) if left else slice(0, n)
            ids[i, where], mask[i, where] = self.corrupt[row.pair, span], 1
            if offset is not None:
                offset[i, where] = self.corrupt_offset[row.pair, span]
        return ids, (None if bool(mask.all()) else mask), offset
