"""Files that are complete or absent: written to a temporary file beside the target and moved
into place with ``os.replace``, so a job killed at any moment leaves no partial file that the
next run could take for finished work."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and move the result to ``path``; never leave a partial
    ``path`` behind (the temporary file is removed when ``write`` fails; one left by a killed
    process is named ``.{name}.*.tmp``)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX
    )
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
