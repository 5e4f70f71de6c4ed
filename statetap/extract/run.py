"""The extraction job: windows of input rows -> sorted batches -> passes -> one shard each.

Under ``torchrun`` (any number of processes and nodes; ranks from ``torch.distributed``), window
``k`` belongs to rank ``k % world_size``: every rank reads the input stream, tokenises and runs
only its own windows and writes their shards; rank 0 writes the manifest, listing every shard,
once all ranks are done.  The windows and the batches inside them depend only on the input and
the settings, so any number of ranks, and any resumed run, writes the same shards as one
uninterrupted process.

Nothing finished is lost and nothing is claimed that was not done: before any work rank 0
checks every shard already in the folder against the SHA-256 its manifest records (a damaged or
missing one is said so and computed again), a manifest that does not read is rebuilt from the
shards made with the same settings, and one left by a run that wrote no shard is replaced.  The
output size is estimated, printed and held against ``max_bytes`` before the first batch.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from statetap.extract.batching import Tokenized, batches, pad_id, tokenize
from statetap.extract.config import ExtractConfig
from statetap.extract.forward import LOGITS, run_batch, span_positions
from statetap.extract.inputs import TextSource, texts_source
from statetap.extract.manifest import (
    MANIFEST,
    DamagedManifest,
    Manifest,
    check_resumable,
    read_manifest,
    setting_differences,
    versions,
)
from statetap.extract.shards import (
    assemble,
    file_sha256,
    read_header,
    remove_temporaries,
    shard_files,
    shard_name,
    write_shard,
)
from statetap.extract.size import estimate_bytes, format_size
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

    A folder that already holds this extraction (same settings and input) is resumed after its
    finished shards, each checked against its SHA-256 first (module docstring); a complete one
    is returned once its shards check out.  Texts with no tokens, and with
    ``short_texts="skip"`` texts too short for the positions, are left out, counted and warned
    about: stored row ``i`` is then not input row ``i`` (``Extraction.index_of`` maps them).

    Raises:
        ValueError: bad settings, another extraction in ``config.out`` (differences named), an
            output estimated above ``config.max_bytes``, a text too short for the positions
            with ``short_texts="error"``, or no texts at all.
    """
    source = texts if isinstance(texts, TextSource) else texts_source(texts)
    if not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be an int >= 0, got {skip!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    rank, world = rank_and_world()
    tap = Tap(model)
    manifest = _new_manifest(tap, tokenizer, source, config, model_name, skip, limit)
    existing = _existing(config.out, manifest, speak=rank == 0)
    if existing is not None and existing["complete"]:
        manifest.estimated_bytes = existing.get("estimated_bytes")
    else:
        manifest.estimated_bytes = _estimate(tokenizer, source, config, manifest, skip, limit, rank)
    hashes: dict[str, str] = {}  # the shards kept from earlier runs (rank 0)
    if rank == 0:
        config.out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(config.out)
        hashes, recomputed = _check_shards(config.out, manifest, existing)
        if existing is not None and existing["complete"] and not recomputed:
            manifest = Manifest(**existing)
        manifest.shards = _listing(config.out, hashes)
        manifest.complete = manifest.complete and not recomputed
        manifest.last_run = {"written": [], "reused": len(hashes), "recomputed": recomputed}
        manifest.write(config.out)
    _barrier()
    current = read_manifest(config.out)
    if current["complete"]:
        return Manifest(**current)
    done = set(shard_files(config.out))  # rank 0 checked each one above
    written: dict[str, str] = {}
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
            tokenized, digest = _extract_window(
                tap, tokenizer, config, manifest, window, chunk, rank
            )
            written[shard_name(window)] = digest
            tokens += tokenized.tokens
            progress.update(len(chunk))
            progress.set_postfix_str(f"{tokens / (time.perf_counter() - started):.0f} tok/s")
            if rank == 0:
                manifest.shards = _listing(config.out, hashes | written)
                manifest.write(config.out)
    if n_windows == 0:
        raise ValueError(f"no texts to extract from (input {source.description}, skip={skip})")
    written = _gathered(written, world)
    if rank == 0:
        manifest.last_run["written"] = sorted(written)
        manifest.last_run["reused"] = len(hashes.keys() - written.keys())
        _finish(config.out, manifest, n_windows, hashes | written)
    _barrier()
    return Manifest(**read_manifest(config.out))


def _gathered(written: dict[str, str], world: int) -> dict[str, str]:
    """Every rank's ``{shard file: SHA-256}`` written in this run, on every rank."""
    if world == 1:
        return written
    everyone: list[dict[str, str]] = [{} for _ in range(world)]
    dist.all_gather_object(everyone, written)
    return {name: digest for part in everyone for name, digest in part.items()}


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
    for site_group in config.sites:
        if not tap.layers_with(site_group, layers):
            raise ValueError(
                f"site {site_group!r} exists on tap.state_layers = {list(tap.state_layers)} only, "
                f"and none of layers {layers} is one of them"
            )
    shapes = {
        f"{site}.{layer}": tap.site_shape(site)
        for site_group in config.sites
        for site, layer in tap.emission_keys(Emit(site_group, tap.layers_with(site_group, layers)))
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


def _estimate(
    tokenizer,
    source: TextSource,
    config: ExtractConfig,
    manifest: Manifest,
    skip: int,
    limit: int | None,
    rank: int,
) -> int | None:
    """The output size (:func:`~statetap.extract.size.estimate_bytes`), printed on rank 0 and
    held against ``config.max_bytes``: fixed positions take ``P`` slots per text (every text
    stored: an upper bound), a span the tokens per text of the first window of texts."""
    if config.span is None:
        slots, basis = len(config.positions), f"{len(config.positions)} position(s)"
    else:
        first = next(windows(source.rows(skip, limit), config.shard_rows), [])
        rows, texts = zip(*first) if first else ((), ())
        window = tokenize(tokenizer, rows, texts, config.max_length)
        lengths = [len(ids) for ids in window.ids]
        if lengths:
            _, counts = span_positions(config.span, torch.tensor(lengths))
            slots = float(counts.sum()) / len(first)
        else:
            slots = 0.0
        basis = f"{slots:.1f} token(s) in the span per text, over the first {len(first)} texts"
    count = source.count(skip, limit)
    ragged = config.span is not None
    per_text = estimate_bytes(manifest.tensors, 1, slots, ragged)
    if count is None:
        if config.max_bytes is not None:
            raise ValueError(
                "max_bytes needs the number of texts, which this input does not say: give a "
                "limit (--limit)"
            )
        if rank == 0:
            print(
                f"statetap extract: output about {format_size(per_text)} per text ({basis}); "
                "the input does not say how many texts it has",
                file=sys.stderr,
            )
        return None
    total = estimate_bytes(manifest.tensors, count, slots, ragged)
    said = f"{format_size(total)} for {count} texts ({format_size(per_text)} per text: {basis})"
    if config.max_bytes is not None and total > config.max_bytes:
        raise ValueError(
            f"the output is estimated at {said}, over max_bytes={config.max_bytes} "
            f"({format_size(config.max_bytes)}; --max-output); store fewer sites, layers or "
            "positions, a smaller dtype, fewer texts, or raise the budget"
        )
    if rank == 0:
        print(f"statetap extract: output about {said}", file=sys.stderr)
    return total


def _extract_window(
    tap: Tap,
    tokenizer,
    config: ExtractConfig,
    manifest: Manifest,
    window: int,
    chunk: list[tuple[int, str]],
    rank: int,
) -> tuple[Tokenized, str]:
    """Run window ``window`` (its ``(index, text)`` rows) and write its shard; returns the
    window's tokens and the shard's SHA-256."""
    rows, texts = zip(*chunk)
    tokenized = tokenize(
        tokenizer, rows, texts, config.max_length, config.min_tokens, config.short_texts
    )
    layers = manifest.layers
    stop_after = None if config.logits else max(layers)
    padding = pad_id(tokenizer)
    passes = batches(tokenized, config.batch_size, config.max_tokens, padding, tap.device)
    parts = [run_batch(tap, batch, config, layers, stop_after) for batch in passes]
    slots = None if config.span is not None else len(config.positions)
    shapes = {name: tuple(entry["shape"]) for name, entry in manifest.tensors.items()}
    tensors = assemble(parts, shapes, slots, config.torch_dtype)
    metadata = {
        "window": window,
        "first_row": rows[0],
        "stop_row": rows[-1] + 1,
        "rows": len(tokenized.rows),
        "tokens": tokenized.tokens,
        "truncated": tokenized.truncated,
        "left_out": json.dumps({"empty": tokenized.empty, "short": tokenized.short}),
        "batch_size": config.batch_size,
        "max_tokens": json.dumps(config.max_tokens),
        "settings": manifest.settings_hash(),
        "rank": rank,
    }
    return tokenized, write_shard(config.out, window, tensors, metadata)


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


def _existing(out: Path, manifest: Manifest, speak: bool) -> dict | None:
    """The manifest already in ``out``, checked against ``manifest``; None when there is none
    to continue: no manifest, one that does not read (the shards made with these settings are
    then reused), or one of a run that wrote no shard (replaced, whatever its settings).
    ``speak``: warn about what is replaced (rank 0)."""
    say = warnings.warn if speak else lambda *args, **kwargs: None
    if not (out / MANIFEST).exists():
        if out.exists() and shard_files(out):
            say(f"{out} holds shards but no {MANIFEST}: it is rebuilt from them", stacklevel=3)
        return None
    try:
        existing = read_manifest(out)
    except DamagedManifest as error:
        say(f"{error}. Rebuilding it now", stacklevel=3)
        return None
    if not existing.get("shards") and not shard_files(out):
        changed = setting_differences(existing, manifest)
        if changed:
            say(
                f"replacing the manifest in {out} of an earlier run that wrote no shard "
                f"(differences there -> now: {'; '.join(changed)})",
                stacklevel=3,
            )
        return None
    check_resumable(out, existing, manifest)
    if speak and existing.get("versions") != manifest.versions:
        warnings.warn(
            f"resuming {out}, written with other versions: {existing.get('versions')} "
            f"(now {manifest.versions}); the manifest records the versions of this run",
            stacklevel=3,
        )
    return existing


def _check_shards(
    out: Path, manifest: Manifest, existing: dict | None
) -> tuple[dict[str, str], list[str]]:
    """Rank 0, before any work: every shard file in ``out`` checked.  One whose header does not
    read, or whose SHA-256 differs from the manifest's, is damaged and removed; one the manifest
    lists but the folder lacks is missing; both are said (a warning) and returned, to be
    computed again.  One the manifest does not record (its run was killed before recording it;
    atomic writes make it complete) is hashed now.

    Returns:
        ``{file: SHA-256}`` of the shards kept, and the names to compute again.

    Raises:
        ValueError: a shard made with other settings (the folder holds another extraction).
    """
    recorded = {shard["file"]: shard.get("sha256") for shard in (existing or {}).get("shards", [])}
    hashes, damaged, foreign = {}, [], []
    for path in shard_files(out).values():
        header = read_header(path)
        if header is not None and header.get("settings") != manifest.settings_hash():
            foreign.append(path.name)
            continue
        digest = None if header is None else file_sha256(path)
        if digest is None or recorded.get(path.name) not in (None, digest):
            damaged.append(path.name)
            path.unlink()
        else:
            hashes[path.name] = digest
    if foreign:
        raise ValueError(
            f"{out} holds shards made with other settings: {foreign}; use the settings that "
            "made them, or another --out"
        )
    missing = sorted(recorded.keys() - hashes.keys() - set(damaged))
    if damaged or missing:
        warnings.warn(
            f"statetap extract: in {out}, "
            + "; ".join(
                text
                for text in (
                    damaged
                    and f"{damaged} did not match their SHA-256 or header (damaged) "
                    "and were removed",
                    missing and f"{missing} are missing",
                )
                if text
            )
            + ": their windows are computed again",
            stacklevel=3,
        )
    return hashes, sorted(damaged + missing)


def _listing(out: Path, hashes: dict[str, str]) -> list[dict]:
    """The manifest's shard entries: the shards in ``out`` (headers only) with their SHA-256
    from ``hashes`` (None for one another rank wrote and has not reported yet)."""
    listing = []
    for window, path in shard_files(out).items():
        meta = read_header(path)
        if meta is None:
            raise ValueError(f"{path} is damaged (its header does not read) while {out} is written")
        listing.append(
            {
                "file": path.name,
                "window": window,
                "input_rows": [int(meta["first_row"]), int(meta["stop_row"])],
                "rows": int(meta["rows"]),
                "tokens": int(meta["tokens"]),
                "truncated": int(meta["truncated"]),
                "left_out": json.loads(meta["left_out"]),
                "batch_size": int(meta["batch_size"]),
                "max_tokens": json.loads(meta["max_tokens"]),
                "rank": int(meta["rank"]),
                "sha256": hashes.get(path.name),
                "bytes": path.stat().st_size,
            }
        )
    return listing


def _finish(out: Path, manifest: Manifest, n_windows: int, hashes: dict[str, str]) -> None:
    """Rank 0, after every rank is done: the final manifest, with the totals, marked complete."""
    manifest.shards = _listing(out, hashes)
    missing = sorted(set(range(n_windows)) - {shard["window"] for shard in manifest.shards})
    if missing:
        raise RuntimeError(f"windows {missing} of {out} have no shard after every rank finished")
    for shard in manifest.shards:
        if shard["sha256"] is None:  # written by a rank of a run that did not finish
            shard["sha256"] = file_sha256(out / shard["file"])
    manifest.rows = sum(shard["rows"] for shard in manifest.shards)
    manifest.tokens = sum(shard["tokens"] for shard in manifest.shards)
    manifest.truncated_texts = sum(shard["truncated"] for shard in manifest.shards)
    manifest.empty_texts = sum(len(shard["left_out"]["empty"]) for shard in manifest.shards)
    manifest.short_texts = sum(len(shard["left_out"]["short"]) for shard in manifest.shards)
    manifest.bytes = sum(shard["bytes"] for shard in manifest.shards)
    manifest.complete = True
    manifest.write(out)
    texts = manifest.rows + manifest.empty_texts + manifest.short_texts
    notes = {
        "truncated_texts": f"are longer than max_length={manifest.config['max_length']} tokens "
        "and were cut there",
        "empty_texts": "have no tokens and were left out",
        "short_texts": f"are too short for positions {manifest.config['positions']} and were "
        "left out",
    }
    for field, what in notes.items():
        if getattr(manifest, field):
            warnings.warn(
                f"statetap extract: {getattr(manifest, field)} of {texts} texts {what} "
                f"(recorded as {field})",
                stacklevel=3,
            )
    if manifest.empty_texts or manifest.short_texts:
        warnings.warn(
            "statetap extract: texts were left out, so stored row i is not input row i: read "
            "each row's 'row', or open_extraction(out).index_of(input_row)",
            stacklevel=3,
        )
