"""The extraction job: windows of input rows -> sorted batches -> passes -> one shard each.

Under ``torchrun`` (any number of processes and nodes; ranks from ``torch.distributed``), window
``k`` belongs to rank ``k % world_size``: every rank reads the input stream, tokenises and runs
only its own windows and writes their shards; rank 0 writes the manifest, listing every shard,
once all ranks are done.  The windows and the batches inside them depend only on the input and
the settings, so any number of ranks, and any resumed run, writes the same shards as one
uninterrupted process.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch.distributed as dist
from tqdm.auto import tqdm

from statetap.extract.batching import Tokenized, batches, pad_id, tokenize
from statetap.extract.config import DTYPES, ExtractConfig
from statetap.extract.forward import LOGITS, run_batch
from statetap.extract.inputs import TextSource, texts_source
from statetap.extract.manifest import (
    MANIFEST,
    Manifest,
    check_resumable,
    read_manifest,
    versions,
)
from statetap.extract.shards import (
    assemble,
    finished_shards,
    remove_temporaries,
    shard_name,
    write_shard,
)
from statetap.tap import Emit, Tap


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``0, 1`` outside ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def windows(rows: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    """Consecutive groups of ``size`` ``(index, text)`` rows (the last may be shorter)."""
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def extract(
    model,
    tokenizer,
    texts: TextSource | Sequence[str],
    config: ExtractConfig,
    model_name: str,
    skip: int = 0,
    limit: int | None = None,
) -> Manifest:
    """Extract ``config.sites`` from ``texts`` into ``config.out``; return the manifest.

    Args:
        model, tokenizer: an eval-mode model statetap has an adapter for, and its tokenizer.
        texts: a :class:`statetap.extract.inputs.TextSource` or a list of texts.
        config: what to extract (:class:`ExtractConfig`).
        model_name: how the manifest names the model.
        skip, limit: start at input text ``skip``; stop after ``limit`` texts.

    A folder that already holds this extraction (same settings and input) is resumed after
    its last complete shard, or returned as it is when complete.

    Raises:
        ValueError: bad settings, another extraction in ``config.out`` (differences named), a
            position outside a text, or no texts at all.
    """
    source = texts if isinstance(texts, TextSource) else texts_source(texts)
    if not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be an int >= 0, got {skip!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    rank, world = rank_and_world()
    tap = Tap(model)
    manifest = _new_manifest(tap, tokenizer, source, config, model_name, skip, limit)
    existing = _existing(config.out, manifest)
    if existing is not None and existing["complete"]:
        return Manifest(**existing)
    if rank == 0:
        config.out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(config.out)
        manifest.shards = _listing(config.out, manifest)
        manifest.write(config.out)
    _barrier()
    done = set(_listed(config.out, manifest))
    count = source.count(skip, limit)
    started, tokens = time.perf_counter(), 0
    with tqdm(
        total=count, desc="extract", unit="text", disable=rank != 0 or not config.progress
    ) as progress:
        n_windows = 0
        for window, chunk in enumerate(windows(source.rows(skip, limit), config.shard_rows)):
            n_windows = window + 1
            if window % world != rank or window in done:
                progress.update(len(chunk))
                continue
            tokenized = _extract_window(tap, tokenizer, config, manifest, window, chunk, rank)
            tokens += tokenized.tokens
            progress.update(len(chunk))
            progress.set_postfix_str(f"{tokens / (time.perf_counter() - started):.0f} tok/s")
            if rank == 0:
                manifest.shards = _listing(config.out, manifest)
                manifest.write(config.out)
    if n_windows == 0:
        raise ValueError(f"no texts to extract from (input {source.description}, skip={skip})")
    _barrier()
    if rank == 0:
        _finish(config.out, manifest, n_windows)
    _barrier()
    return Manifest(**read_manifest(config.out))


def _new_manifest(
    tap: Tap,
    tokenizer,
    source: TextSource,
    config: ExtractConfig,
    model_name: str,
    skip: int,
    limit: int | None,
) -> Manifest:
    """The manifest of this extraction before any shard: settings (the layers resolved),
    input, versions, layout and the per-token shape of every stored tensor."""
    model = tap.model
    layers = _layers(tap, config.layers)
    shapes = {
        f"{site}.{layer}": tap.site_shape(site)
        for site_group in config.sites
        for site, layer in tap.emission_keys(Emit(site_group, layers))
    }
    if config.logits:
        shapes[LOGITS] = (model.get_output_embeddings().weight.shape[0],)
    return Manifest(
        config={
            "model": model_name,
            "model_class": type(model).__name__,
            "revision": getattr(model.config, "_commit_hash", None),
            "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
            "layers": layers,
            **config.record(),
        },
        input={
            **source.description,
            "fingerprint": source.fingerprint,
            "skip": skip,
            "limit": limit,
        },
        versions=versions(tap.device),
        layout="fixed" if config.span is None else "ragged",
        tensors={
            name: {"shape": list(shape), "dtype": config.dtype} for name, shape in shapes.items()
        },
    )


def _extract_window(
    tap: Tap,
    tokenizer,
    config: ExtractConfig,
    manifest: Manifest,
    window: int,
    chunk: list[tuple[int, str]],
    rank: int,
) -> Tokenized:
    """Run window ``window`` (its ``(index, text)`` rows) and write its shard; returns the
    window's tokens."""
    rows, texts = zip(*chunk)
    tokenized = tokenize(tokenizer, rows, texts, config.max_length)
    layers = manifest.layers
    stop_after = None if config.logits else max(layers)
    padding = pad_id(tokenizer)
    passes = batches(tokenized, config.batch_size, config.max_tokens, padding, tap.device)
    parts = [run_batch(tap, batch, config, layers, stop_after) for batch in passes]
    slots = None if config.span is not None else len(config.positions)
    shapes = {name: tuple(entry["shape"]) for name, entry in manifest.tensors.items()}
    tensors = assemble(parts, shapes, slots, DTYPES[config.dtype])
    metadata = {
        "window": window,
        "first_row": rows[0],
        "stop_row": rows[-1] + 1,
        "rows": len(tokenized.rows),
        "tokens": tokenized.tokens,
        "truncated": tokenized.truncated,
        "empty": tokenized.empty,
        "settings": manifest.settings_hash(),
        "rank": rank,
    }
    write_shard(config.out, window, tensors, metadata)
    return tokenized


def _layers(tap: Tap, layers: Sequence[int] | None) -> list[int]:
    n = tap.adapter.n_layers
    if layers is None:
        return list(range(n))
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty list of ints or None, got {layers!r}")
    bad = [layer for layer in layers if not isinstance(layer, int) or not -n <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} are out of range for a model with {n} layers")
    return sorted({layer % n for layer in layers})


def _existing(out: Path, manifest: Manifest) -> dict | None:
    """The manifest already in ``out`` (checked against ``manifest``), or None."""
    if not (out / MANIFEST).exists():
        if out.exists() and finished_shards(out):
            raise ValueError(f"{out} holds shards but no {MANIFEST}; choose another folder")
        return None
    existing = read_manifest(out)
    check_resumable(out, existing, manifest)
    if existing.get("versions") != manifest.versions:
        warnings.warn(
            f"resuming {out}, written with other versions: {existing.get('versions')} "
            f"(now {manifest.versions}); the manifest records the versions of this run",
            stacklevel=3,
        )
    return existing


def _listed(out: Path, manifest: Manifest) -> dict[int, dict[str, str]]:
    """The finished shards in ``out``, each checked to be this extraction's."""
    found = finished_shards(out)
    foreign = [
        shard_name(w)
        for w, meta in found.items()
        if meta.get("settings") != manifest.settings_hash()
    ]
    if foreign:
        raise ValueError(f"{out} holds shards made with other settings: {foreign}")
    return found


def _listing(out: Path, manifest: Manifest) -> list[dict]:
    return [
        {
            "file": shard_name(window),
            "window": window,
            "input_rows": [int(meta["first_row"]), int(meta["stop_row"])],
            "rows": int(meta["rows"]),
            "tokens": int(meta["tokens"]),
            "truncated": int(meta["truncated"]),
            "empty": int(meta["empty"]),
            "rank": int(meta["rank"]),
        }
        for window, meta in sorted(_listed(out, manifest).items())
    ]


def _finish(out: Path, manifest: Manifest, n_windows: int) -> None:
    """Rank 0, after every rank is done: the final manifest, with the totals, marked complete."""
    manifest.shards = _listing(out, manifest)
    missing = sorted(set(range(n_windows)) - {shard["window"] for shard in manifest.shards})
    if missing:
        raise RuntimeError(f"windows {missing} of {out} have no shard after every rank finished")
    for total, key in (
        ("rows", "rows"),
        ("tokens", "tokens"),
        ("truncated_texts", "truncated"),
        ("empty_texts", "empty"),
    ):
        setattr(manifest, total, sum(shard[key] for shard in manifest.shards))
    manifest.complete = True
    manifest.write(out)
    max_length = manifest.config["max_length"]
    for count, what in (
        (
            manifest.truncated_texts,
            f"are longer than max_length={max_length} "
            "tokens and were cut there (recorded as truncated_texts)",
        ),
        (manifest.empty_texts, "have no tokens and were left out (recorded as empty_texts)"),
    ):
        if count:
            warnings.warn(
                f"statetap extract: {count} of {manifest.rows + manifest.empty_texts} texts {what}",
                stacklevel=3,
            )
