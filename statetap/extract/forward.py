"""One batch through the instrumented model, and the tensors it leaves for the shard.

The pass stops after the last requested layer (``Tap.run(stop_after=...)``), so later layers,
the final norm and the unembedding never run, unless the logits are asked for.  Fixed positions
give ``[B, P, *shape]``; a span gives each row's tokens, flattened to ``[tokens, *shape]``
with the tokens per row beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from statetap.extract.batching import Batch
from statetap.extract.config import ExtractConfig, Span
from statetap.plan import gather_positions
from statetap.positions import resolve_positions
from statetap.tap import Emit, Tap

LOGITS = "logits"


@dataclass
class BatchTensors:
    """What one pass stores: ``rows`` ``[B]``, ``tensors`` by name and ``positions`` (each
    token's index in its text): ``[B, P, ...]`` / ``[B, P]`` for fixed positions; for a span
    ``[T, ...]`` / ``[T]`` with ``counts`` ``[B]`` tokens per row (None for fixed)."""

    rows: torch.Tensor
    tensors: dict[str, torch.Tensor]
    positions: torch.Tensor
    counts: torch.Tensor | None = None


def span_positions(span: Span, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text positions ``[B, P]`` covering ``span`` in rows of ``lengths`` ``[B]`` tokens, and the
    valid slots per row ``[B]``: slot ``j < counts[b]`` is token ``span.start + j``; the slots
    after repeat the row's last token (a valid position whose result is dropped)."""
    stop = lengths if span.stop is None else lengths.clamp(max=span.stop)
    counts = (stop - span.start).clamp(min=0)
    width = max(1, int(counts.max()))
    text = span.start + torch.arange(width)[None, :]
    return torch.minimum(text, lengths[:, None] - 1), counts


def run_batch(
    tap: Tap, batch: Batch, config: ExtractConfig, layers: Sequence[int], stop_after: int | None
) -> BatchTensors:
    """Emit ``config.sites`` at ``layers`` (a state site at those of ``tap.state_layers``) for
    ``batch``; tensors on the CPU in ``config.dtype``."""
    span = config.span
    counts = None
    if span is None:
        spec = list(config.positions)  # every text is long enough (batching.tokenize)
    else:
        spec, counts = span_positions(span, batch.lengths)
    result = tap.run(
        batch.input_ids,
        batch.attention_mask,
        emit=[Emit(site, tap.layers_with(site, layers), spec) for site in config.sites],
        offload=True,
        stop_after=stop_after,
    )
    dtype = config.torch_dtype
    tensors = {
        f"{site}.{layer}": tensor.to("cpu", dtype)
        for (site, layer), tensor in result.activations.items()
    }
    positions = resolve_positions(spec, *batch.input_ids.shape, batch.attention_mask)
    if config.logits:
        tensors[LOGITS] = gather_positions(result.logits, positions).to("cpu", dtype)
    positions = positions.cpu()
    if counts is None:
        return BatchTensors(batch.rows, tensors, positions)
    valid = torch.arange(positions.shape[1])[None, :] < counts[:, None]
    flat = {name: tensor[valid] for name, tensor in tensors.items()}
    return BatchTensors(batch.rows, flat, positions[valid], counts)
