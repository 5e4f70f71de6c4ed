"""The on-disk cache of trained zoo models.

Root: ``$STATETAP_CACHE`` if set, else ``$XDG_CACHE_HOME/statetap``, else ``~/.cache/statetap``.
One folder per recipe, ``<name>-<key>``, where ``key`` hashes the recipe's fields and
``ZOO_FORMAT`` (bump it when what an entry holds or how training works changes). A folder holds
what ``save_pretrained`` writes for the model (``config.json``, ``model.safetensors``) and the
tokenizer, and ``manifest.json``: the recipe, the held-out metrics, library versions and the
sha256 of every other file.

Entries are built in a temporary folder beside the final one and renamed into place, so a
reader sees a whole entry or none. On every lookup the manifest and all hashes are checked; an
entry that fails (a missing manifest, a missing, extra or altered file, another recipe) is
deleted with a warning and rebuilt, never loaded. A per-entry lock file serialises builders
of the same recipe across processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from statetap.zoo.recipes import Recipe

ZOO_FORMAT = 2
MANIFEST = "manifest.json"


def cache_root() -> Path:
    """The cache folder (not created here)."""
    if os.environ.get("STATETAP_CACHE"):
        return Path(os.environ["STATETAP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "statetap"


def recipe_fields(recipe: Recipe) -> dict:
    """The recipe as JSON-ready fields (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def recipe_key(recipe: Recipe) -> str:
    """16 hex digits of the sha256 of ``ZOO_FORMAT`` and every recipe field."""
    payload = json.dumps({"format": ZOO_FORMAT, "recipe": recipe_fields(recipe)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def entry_path(recipe: Recipe) -> Path:
    """Where the recipe's entry lives (whether or not it exists)."""
    return cache_root() / f"{recipe.name}-{recipe_key(recipe)}"


def read_manifest(entry: Path) -> dict:
    """The parsed ``manifest.json`` of an entry folder."""
    return json.loads((Path(entry) / MANIFEST).read_text())


def problem(entry: Path, recipe: Recipe) -> str | None:
    """Why ``entry`` cannot be trusted for ``recipe``, or None when it checks out."""
    try:
        manifest = read_manifest(entry)
    except FileNotFoundError:
        return "no manifest (partial entry)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "malformed manifest"
    if manifest.get("format") != ZOO_FORMAT or manifest.get("key") != recipe_key(recipe):
        return "manifest of another format or recipe"
    if manifest.get("recipe") != recipe_fields(recipe):
        return "manifest of another recipe"
    present = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()}
    listed = set(manifest["files"])
    if present - {MANIFEST} != listed:
        missing, extra = sorted(listed - present), sorted(present - listed - {MANIFEST})
        return f"files differ from the manifest (missing {missing}, unlisted {extra})"
    for name, digest in sorted(manifest["files"].items()):
        if _sha256(entry / name) != digest:
            return f"sha256 mismatch in {name}"
    return None


def lookup(recipe: Recipe) -> Path | None:
    """The verified entry of ``recipe``, or None. A failing entry is removed (with a warning)."""
    entry = entry_path(recipe)
    if not entry.exists():
        return None
    reason = problem(entry, recipe)
    if reason is None:
        return entry
    warnings.warn(f"statetap.zoo: removing bad cache entry {entry}: {reason}", stacklevel=2)
    shutil.rmtree(entry)
    return None


def ensure(recipe: Recipe, build: Callable[[Path], dict]) -> Path:
    """The verified entry of ``recipe``, built first if missing or bad.

    ``build(folder)`` writes the model and tokenizer files into the empty ``folder`` and returns
    the metrics dict for the manifest. It runs under the entry's lock, at most once per call.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{recipe.name}-{recipe_key(recipe)}.lock"):
        entry = lookup(recipe)
        if entry is not None:
            return entry
        entry = entry_path(recipe)
        for stale in root.glob(f".{entry.name}.tmp*"):  # left by a crash; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp", dir=root))
        staging.chmod(0o755)  # mkdtemp makes it private; the entry is an ordinary folder
        try:
            metrics = build(staging)
            files = {
                p.relative_to(staging).as_posix(): _sha256(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "format": ZOO_FORMAT,
                "key": recipe_key(recipe),
                "recipe": recipe_fields(recipe),
                "metrics": metrics,
                "versions": _versions(),
                "files": files,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            os.replace(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict:
    import platform

    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builders are not serialised
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
