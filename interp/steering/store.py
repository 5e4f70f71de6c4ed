"""Steering vectors and sweep results on disk: safetensors beside a JSON file.

A folder holds ``vectors.safetensors`` (tensors ``"{site}.{layer}"``) and ``vectors.json``, or
``sweep.safetensors`` (``p_match``, ``nonsense`` ``[modes, layers, M, N]``,
``baseline_p_match``, ``baseline_nonsense`` ``[N]``) and ``sweep.json`` (axes, metadata and
the summary of :meth:`SweepResult.summary`).  Each file is written to a temporary file and
renamed into place, tensors first; the JSON records the sha256 of its tensor file, so a
folder whose two files do not belong together (an interrupted overwrite) is refused on load.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from statetap.interp.steering.modes import Mode
from statetap.interp.steering.sweeps import SweepResult
from statetap.interp.steering.vectors import SteeringVectors
from statetap.interp.tensor_files import read_tensors, require_files, write_pair

VECTORS, SWEEP = "vectors", "sweep"
DIGEST = "tensors_sha256"  # the record's key for its tensor file's sha256
SWEEP_TENSORS = ("p_match", "nonsense", "baseline_p_match", "baseline_nonsense")


def save_vectors(vectors: SteeringVectors, folder: str | Path) -> Path:
    """Write ``vectors`` to ``folder`` (created); returns the folder."""
    tensors = {f"{site}.{layer}": value for (site, layer), value in vectors.vectors.items()}
    return _save(Path(folder), VECTORS, tensors, dict(kind=VECTORS, meta=vectors.meta))


def load_vectors(folder: str | Path) -> SteeringVectors:
    """The vectors saved in ``folder``."""
    tensors, record = _load(Path(folder), VECTORS)
    vectors = {}
    for name, value in tensors.items():
        site, layer = name.rsplit(".", 1)
        vectors[site, int(layer)] = value
    return SteeringVectors(vectors, record["meta"])


def save_sweep(result: SweepResult, folder: str | Path) -> Path:
    """Write ``result`` to ``folder`` (created); returns the folder."""
    tensors = {name: getattr(result, name) for name in SWEEP_TENSORS}
    record = dict(
        kind=SWEEP,
        modes=[asdict(mode) for mode in result.modes],
        layers=result.layers,
        multipliers=result.multipliers,
        meta=result.meta,
        summary=result.summary(),
    )
    return _save(Path(folder), SWEEP, tensors, record)


def load_sweep(folder: str | Path) -> SweepResult:
    """The sweep saved in ``folder``."""
    tensors, record = _load(Path(folder), SWEEP)
    return SweepResult(
        [Mode(**mode) for mode in record["modes"]],
        record["layers"],
        record["multipliers"],
        *(tensors[name] for name in SWEEP_TENSORS),
        meta=record["meta"],
    )


def _save(folder: Path, stem: str, tensors: dict[str, torch.Tensor], record: dict) -> Path:
    tensor_file, record_file = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    write_pair(tensor_file, record_file, tensors, record, DIGEST)
    return folder


def _load(folder: Path, stem: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensor_file, record_file = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    require_files(f"{stem} folder", tensor_file, record_file)
    record = json.loads(record_file.read_text())
    if record.get("kind") != stem:
        raise ValueError(f"{record_file} holds {record.get('kind')!r}, not {stem!r}")
    return read_tensors(tensor_file, record_file, record, DIGEST), record
