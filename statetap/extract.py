"""The main job: extract residuals and recurrent states of a model over a text file.

Texts go through the model in batches (one instrumented pass each); the emitted tensors are
written as safetensors shards, ``shard-00000.safetensors`` …, each holding for its rows every
requested ``"{site}.{layer}"`` tensor ``[rows, P, *shape]`` plus ``row`` (the text's index in
the input) and ``positions`` (the padded token index of each emitted position).  A shard is
written to a temporary file and renamed into place, so it is complete or absent; the
manifest (``manifest.json``: model, revision, sites, layers, positions, dtype, tokenizer,
statetap version, shards, and how many texts were cut at ``max_length``) is rewritten the
same way after every shard.  A cut text is never silent: it is counted, recorded and warned
about (its position ``-1`` is then token ``max_length - 1``, not the text's last).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import statetap
from statetap.positions import resolve_positions
from statetap.tap import STATE_GROUP, Emit, Tap

MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ExtractConfig:
    """What to extract, from which texts, and where to write it.

    Attributes:
        out: output folder (created; an existing manifest there is refused).
        sites: site names, or ``"state"`` for every state component.
        layers: layer indices (negative from the last), or None for all.
        positions: token positions per text (``statetap.positions``); ``"all"`` is refused
            here (rows have different lengths): name positions.
        batch_size: texts per forward pass.
        max_length: texts are cut to this many tokens (counted in the manifest, with a
            warning).
        shard_rows: texts per shard (a multiple of ``batch_size`` is best).
        dtype: dtype of the stored tensors.
    """

    out: Path
    sites: Sequence[str] = ("residual", STATE_GROUP)
    layers: Sequence[int] | None = None
    positions: Sequence[int] = (-1,)
    batch_size: int = 16
    max_length: int = 256
    shard_rows: int = 1024
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "max_length", "shard_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.positions, str) or not all(isinstance(p, int) for p in self.positions):
            raise ValueError(f"positions must be a list of ints, got {self.positions!r}")


@dataclass
class Manifest:
    """The description of an extraction, written beside its shards."""

    model: str
    model_class: str
    revision: str | None
    tokenizer: str
    sites: list[str]
    layers: list[int]
    positions: list[int]
    dtype: str
    max_length: int
    statetap_version: str = statetap.__version__
    shards: list[dict] = field(default_factory=list)
    truncated_texts: int = 0  # texts longer than max_length tokens, cut there
    complete: bool = False


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and move the result to ``path``; never leave a partial
    ``path`` behind (the temporary file is removed when ``write`` fails)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 is for the temporary file only
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json_atomically(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` (its folder is created) with
    :func:`write_atomically`; the JSON is serialised first, so data that is not JSON writes
    nothing. Returns the path."""
    path = Path(path)
    text = json.dumps(data, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    return path


def _batches(texts: Sequence[str], size: int) -> Iterator[tuple[int, Sequence[str]]]:
    for start in range(0, len(texts), size):
        yield start, texts[start : start + size]


def extract(
    model, tokenizer, texts: Sequence[str], config: ExtractConfig, model_name: str
) -> Manifest:
    """Run the extraction; return the manifest written to ``config.out``."""
    if not texts:
        raise ValueError("no texts to extract from")
    config.out.mkdir(parents=True, exist_ok=True)
    if (config.out / MANIFEST).exists():
        raise FileExistsError(f"{config.out / MANIFEST} exists; choose a new output folder")
    tap = Tap(model)
    n_layers = tap.adapter.n_layers
    layers = (
        list(range(n_layers))
        if config.layers is None
        else [layer % n_layers for layer in config.layers]
    )
    requests = [Emit(site, layers, list(config.positions)) for site in config.sites]
    manifest = Manifest(
        model=model_name,
        model_class=type(model).__name__,
        revision=getattr(model.config, "_commit_hash", None),
        tokenizer=getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        sites=list(config.sites),
        layers=layers,
        positions=list(config.positions),
        dtype=config.dtype,
        max_length=config.max_length,
    )
    tokenizer.padding_side = "right"  # causal models: padding after the text touches nothing
    device = tap.device
    pending: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad(), tqdm(total=len(texts), desc="extract", unit="text") as progress:
        for start, batch in _batches(texts, config.batch_size):
            tokens = tokenizer(list(batch), add_special_tokens=False)["input_ids"]
            manifest.truncated_texts += sum(len(row) > config.max_length for row in tokens)
            encoded = tokenizer.pad(
                {"input_ids": [row[: config.max_length] for row in tokens]}, return_tensors="pt"
            )
            ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
            if bool((mask.sum(1) == 0).any()):
                raise ValueError(
                    f"a text among rows {start}..{start + len(batch) - 1} has no tokens"
                )
            result = tap.run(ids, attention_mask=mask, emit=requests, offload=True)
            for (site, layer), tensor in result.activations.items():
                pending.setdefault(f"{site}.{layer}", []).append(
                    tensor.to("cpu", DTYPES[config.dtype])
                )
            pending.setdefault("row", []).append(torch.arange(start, start + len(batch)))
            pending.setdefault("positions", []).append(
                resolve_positions(list(config.positions), *ids.shape, mask).cpu()
            )
            progress.update(len(batch))
            if sum(len(r) for r in pending["row"]) >= config.shard_rows:
                _write_shard(config.out, manifest, pending)
                pending = {}
        if pending:
            _write_shard(config.out, manifest, pending)
    if manifest.truncated_texts:
        warnings.warn(
            f"statetap extract: {manifest.truncated_texts} of {len(texts)} texts are longer than "
            f"max_length={config.max_length} tokens and were cut there (their position -1 is "
            f"token {config.max_length - 1}); recorded in the manifest as truncated_texts",
            stacklevel=2,
        )
    manifest.complete = True
    _write_manifest(config.out, manifest)
    return manifest


def _write_shard(out: Path, manifest: Manifest, pending: dict[str, list[torch.Tensor]]) -> None:
    tensors = {name: torch.cat(parts).contiguous() for name, parts in pending.items()}
    name = f"shard-{len(manifest.shards):05d}.safetensors"
    write_atomically(out / name, lambda path: save_file(tensors, path))
    rows = tensors["row"]
    manifest.shards.append({"file": name, "rows": [int(rows[0]), int(rows[-1]) + 1]})
    _write_manifest(out, manifest)


def _write_manifest(out: Path, manifest: Manifest) -> None:
    def write(path: str) -> None:
        with open(path, "w") as handle:
            json.dump(asdict(manifest), handle, indent=2)

    write_atomically(out / MANIFEST, write)


def load_extraction(out: Path | str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a finished extraction: its manifest and every tensor, rows concatenated."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    if not manifest["complete"]:
        raise ValueError(
            f"the extraction in {out} did not finish; its manifest lists the shards written"
        )
    shards = [load_file(out / shard["file"]) for shard in manifest["shards"]]
    return manifest, {name: torch.cat([s[name] for s in shards]) for name in shards[0]}
