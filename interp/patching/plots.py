"""Heatmaps of a patching sweep: layer x position, one figure per site (matplotlib, no pyplot
state; files written atomically)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from statetap.interp.figures import save_figure
from statetap.interp.patching.result import PatchingResult

EFFECT_LABEL = {
    "activation patching": "fraction of the gap recovered",
    "causal tracing": "indirect effect on p(answer)",
}


def plot_site(result: PatchingResult, site: str, path: str | Path, title: str = "") -> Path:
    """The prompts' mean effect at ``site`` ``[layers, positions]`` as a heatmap (layers up,
    positions across, labelled with the first prompt's tokens when the result has them),
    diverging colours centred on 0; written to ``path`` (format from its suffix)."""
    mean = result.mean_effect(site)
    layers = result.layers[site]
    limit = float(mean.nan_to_num(0).abs().max()) or 1.0
    figure = Figure(
        figsize=(max(5.0, 0.45 * len(result.positions) + 2), 1 + 0.4 * len(layers) + 1),
        layout="constrained",
    )
    axes = figure.add_subplot()
    image = axes.imshow(
        mean.numpy(),
        aspect="auto",
        origin="lower",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
    )
    labels = [str(p) for p in result.positions]
    if result.tokens:
        labels = [f"{result.tokens[0][p]!r} {p}" for p in result.positions]
    axes.set_xticks(range(len(result.positions)), labels, rotation=90, fontsize="small")
    axes.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    axes.set(
        xlabel="position (first prompt's token)" if result.tokens else "position",
        ylabel="layer",
        title=title or f"{result.method}: {site}",
    )
    figure.colorbar(image, ax=axes, label=EFFECT_LABEL.get(result.method, "effect"))
    return save_figure(figure, path)


def plot_all(result: PatchingResult, folder: str | Path, title: str = "") -> list[Path]:
    """:func:`plot_site` for every site, as ``<folder>/<method>-<site>.png``."""
    stem = result.method.replace(" ", "-")
    return [
        plot_site(
            result, site, Path(folder) / f"{stem}-{site}.png", f"{title}: {site}" if title else ""
        )
        for site in result.sites
    ]
