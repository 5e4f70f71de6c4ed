"""Figures on disk: every plot of ``statetap.interp`` is written through :func:`save_figure`."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from statetap.extract import write_atomically


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` atomically (folder created; format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: figure.savefig(temporary, format=path.suffix[1:]))
    return path
