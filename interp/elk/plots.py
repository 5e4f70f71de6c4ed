"""The ELK figure: AUROC against layer, one line per probe, one column per feature site.

The top row is AUROC against the truth on Bob's prompts (the transfer Mallen et al. measure),
the bottom row against Bob's labels; probes trained on Alice's prompts. Dashed lines are the
model's own log-odds on Alice's and on Bob's prompts, for reference.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from statetap.interp.elk.results import ElkResults
from statetap.interp.figures import save_figure


def plot_auroc_by_layer(
    results: ElkResults,
    path: str | Path,
    train: str = "A",
    test: str = "B",
    title: str = "",
) -> Path:
    """AUROC on ``test`` against layer for every probe and site of ``results`` trained on
    ``train``; written to ``path`` (format from the suffix)."""
    sites = results.sites
    figure = Figure(figsize=(3.2 * len(sites) + 1.5, 6), layout="constrained")
    grid = figure.subplots(2, len(sites), squeeze=False, sharey=True)
    for column, site in enumerate(sites):
        for row, against in enumerate(("truth", "bob")):
            axes = grid[row, column]
            for probe in results.probe_names:
                points = results.rows(probe=probe, site=site, train=train, test=test)
                points = [p for p in points if p[f"auroc_{against}"] is not None]
                axes.plot(
                    [str(p["layer"]) for p in points],
                    [p[f"auroc_{against}"] for p in points],
                    marker="o",
                    label=probe,
                )
            model_rows = {r["test"]: r for r in results.model}
            for reference, style in (("A", ":"), (test, "--")):
                value = model_rows.get(reference, {}).get(f"auroc_{against}")
                if value is not None:
                    axes.axhline(value, color="grey", ls=style, label=f"model on {reference}")
            axes.axhline(0.5, color="black", lw=0.5)
            axes.set_ylim(0, 1.02)
            axes.set(xlabel="layer", title=f"{site}: vs {against}")
            if column == 0:
                axes.set_ylabel(f"AUROC on {test} (trained on {train})")
    handles, labels = grid[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize="small")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
