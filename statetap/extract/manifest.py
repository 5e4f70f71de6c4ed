"""``manifest.json``: what an extraction holds, how it was made, and whether it finished.

The manifest records the full settings (model, sites, layers, positions, batching, dtype) and
the input (its description, fingerprint, ``skip`` and ``limit``); a run on a folder that holds a
manifest resumes only when both are the same, and otherwise is refused with the differences
named (settings that change no stored tensor, such as the batch size, may change).  It also
records the versions of statetap, torch, transformers and the kernel backend of each op, the
shards with their SHA-256, the counts of texts cut at ``max_length`` and of texts left out
(empty, or too short for the positions), and what the last run did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

import statetap
from statetap.extract.atomic import write_json_atomically

MANIFEST = "manifest.json"
FORMAT = "statetap-extraction/3"


@dataclass
class Manifest:
    """The description of an extraction, written beside its shards.

    Attributes:
        config: the model and the settings that decide the stored tensors.
        input: the input's description and fingerprint, with ``skip`` and ``limit``.
        versions: statetap, torch, transformers, and the kernel backend of each op.
        layout: ``"fixed"`` (``[rows, P, *shape]``) or ``"ragged"`` (``[tokens, *shape]`` plus
            ``offsets``).
        tensors: per stored name, its per-token ``shape`` and ``dtype``.
        shards: per shard file, its window, ``input_rows`` range, row and token counts, the
            input rows it left out (``left_out``: ``empty`` and ``short``), the batching it
            was made with, and its ``sha256`` (None while a rank's shard is not yet recorded).
        rows, tokens: stored rows and tokens run through the model.
        truncated_texts: texts longer than ``max_length`` tokens, cut there.
        empty_texts: texts with no tokens, left out.
        short_texts: texts shorter than the fixed positions need, left out.
        estimated_bytes: the output size estimated before the first batch.
        bytes: the size of the shard files.
        last_run: what the last call did: shards ``written``, ``reused`` and ``recomputed``
            (found damaged or missing).
        complete: every window has its shard.

    Stored rows are the input's texts minus those left out, so row ``i`` is input row ``i``
    only when nothing was left out: each row's ``row`` tensor, and
    :meth:`~statetap.extract.reader.Extraction.index_of`, map the two.
    """

    config: dict
    input: dict
    versions: dict
    layout: str
    tensors: dict[str, dict]
    shards: list[dict] = field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    truncated_texts: int = 0
    empty_texts: int = 0
    short_texts: int = 0
    estimated_bytes: int | None = None
    bytes: int = 0
    last_run: dict = field(default_factory=dict)
    complete: bool = False
    format: str = FORMAT

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def sites(self) -> list[str]:
        return self.config["sites"]

    @property
    def layers(self) -> list[int]:
        return self.config["layers"]

    def settings_hash(self) -> str:
        """A short hash of :attr:`config` and :attr:`input` (stamped on every shard)."""
        text = json.dumps([self.config, self.input], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def write(self, out: Path) -> Path:
        return write_json_atomically(Path(out) / MANIFEST, asdict(self))


class DamagedManifest(ValueError):
    """A ``manifest.json`` that does not read as one (truncated, edited, another format)."""


def read_manifest(out: str | Path) -> dict:
    """The manifest of the extraction in ``out``, as a dict.

    Raises:
        FileNotFoundError: ``out`` holds no manifest.
        DamagedManifest: it does not read as a manifest of this format; the message names the
            file and the way out.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no {MANIFEST}: not a statetap extraction")
    way_out = (
        "run the same extract command again: it rebuilds the manifest from the shards made "
        "with its settings, checks them, and computes the rest"
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedManifest(f"{path} is damaged ({error}); {way_out}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DamagedManifest(
            f"{path} is not a {FORMAT} manifest (format {found!r}); {way_out}, or read it with "
            "the statetap version that wrote it"
        )
    return manifest


def versions(device: torch.device) -> dict:
    """The versions that made the tensors, with each op's kernel backend on ``device``."""
    from statetap import kernels
    from statetap.kernels._backend import choose_backend

    backends = {
        op: choose_backend(op, device, getattr(kernels, op).implementations) for op in kernels.OPS
    }
    return {
        "statetap": statetap.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "kernel_backends": backends,
    }


def differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """``"key: before -> now"`` for every entry that differs (nested dicts walked)."""
    lines = []
    for key in sorted(set(before) | set(now), key=str):
        old, new = before.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            lines += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            lines.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return lines


def setting_differences(existing: dict, manifest: Manifest) -> list[str]:
    """``"key: there -> now"`` for every setting or input entry in which ``existing`` (a
    manifest found on disk) differs from ``manifest``."""
    found = {
        "format": existing.get("format"),
        "config": existing.get("config", {}),
        "input": existing.get("input", {}),
    }
    wanted = {"format": manifest.format, "config": manifest.config, "input": manifest.input}
    return differences(found, wanted)


def check_resumable(out: Path, existing: dict, manifest: Manifest) -> None:
    """Refuse to continue ``existing`` (the manifest found in ``out``) with other settings.

    Raises:
        ValueError: the format, config or input differ; the message names each difference.
    """
    changed = setting_differences(existing, manifest)
    if changed:
        raise ValueError(
            f"{out} holds an extraction made with other settings, so it cannot be resumed; "
            f"differences (there -> now): {'; '.join(changed)}. Use the same settings and "
            "input, or another --out"
        )


def manifest_table(manifest: dict) -> str:
    """The manifest as a two-column text table (nested entries as dotted keys), then one line
    per stored tensor and per shard."""

    def flat(data: dict, prefix: str = "") -> list[tuple[str, str]]:
        items = []
        for key, value in data.items():
            if isinstance(value, dict) and key != "tensors":
                items += flat(value, f"{prefix}{key}.")
            elif key not in ("tensors", "shards"):
                items.append((f"{prefix}{key}", json.dumps(value)))
        return items

    items = flat(manifest) + [("shards", str(len(manifest.get("shards", []))))]
    width = max(len(key) for key, _ in items)
    lines = [f"{'key':<{width}}  value", f"{'-' * width}  {'-' * 5}"]
    lines += [f"{key:<{width}}  {value}" for key, value in items]
    tensors = manifest.get("tensors", {})
    if tensors:
        name_width = max(len(name) for name in tensors)
        lines += ["", f"{'tensor':<{name_width}}  {'per-token shape':<16} dtype"]
        lines += [
            f"{name:<{name_width}}  {str(entry['shape']):<16} {entry['dtype']}"
            for name, entry in tensors.items()
        ]
    shards = manifest.get("shards", [])
    if shards:
        lines += ["", f"{'shard':<24} {'input rows':<16} {'rows':>7} {'tokens':>9}"]
        lines += [
            f"{s['file']:<24} {str(s['input_rows']):<16} {s['rows']:>7} {s['tokens']:>9}"
            for s in shards
        ]
    return "\n".join(lines)
