"""The paper's steering figures, with matplotlib (no pyplot state; files written atomically).

* :func:`plot_layers`: mean ``p_match`` (%) against layer (whole-number ticks), one line per
  multiplier, the unsteered model dashed; beside it the mean "nonsense" probability (%), the
  mass on neither answer, on the same axes (the paper's matching and nonsense panels);
* :func:`plot_modes`: "maximum behaviour % difference" bars, one group per behaviour, one bar
  per mode (matplotlib's first colours are the paper's: residual / state / both in blue /
  orange / green).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from statetap.interp.figures import save_figure
from statetap.interp.steering.sweeps import SweepResult


def plot_layers(result: SweepResult, mode: str, path: str | Path, title: str = "") -> Path:
    """``p_match`` (left) and the nonsense probability (right) against layer for each
    multiplier of ``mode``; written to ``path`` (the format follows its suffix: ``.png``,
    ``.svg``, ``.pdf``)."""
    index = result.mode_index(mode)
    figure = Figure(figsize=(12, 4), layout="constrained")
    figure.suptitle(title or mode)
    panels = (
        (result.p_match, result.baseline_p_match, "p(answer matching behaviour) %"),
        (result.nonsense, result.baseline_nonsense, "nonsense: p(neither answer) %"),
    )
    for axes, (values, baseline, label) in zip(figure.subplots(1, 2), panels):
        means = 100 * values[index].mean(-1)  # [layers, M]
        for j, multiplier in enumerate(result.multipliers):
            axes.plot(result.layers, means[:, j].tolist(), marker="o", label=f"{multiplier:+g}")
        axes.axhline(100 * baseline.mean().item(), color="grey", ls="--", label="none")
        axes.set(xlabel="layer", ylabel=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    axes.legend(title="multiplier", fontsize="small")
    return save_figure(figure, path)


def plot_modes(
    ranges: Mapping[str, Mapping[str, float]], path: str | Path, title: str = ""
) -> Path:
    """Bars of ``ranges[behaviour][mode]`` (fractions, from ``SweepResult.behaviour_range``,
    shown in percentage points); written to ``path``."""
    behaviours = list(ranges)
    modes = list(dict.fromkeys(mode for values in ranges.values() for mode in values))
    width = 0.8 / max(len(modes), 1)
    figure = Figure(figsize=(max(4, 1.5 * len(behaviours) + 2), 4), layout="constrained")
    axes = figure.add_subplot()
    for j, mode in enumerate(modes):
        heights = [100 * ranges[b].get(mode, float("nan")) for b in behaviours]
        offsets = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(behaviours))]
        axes.bar(offsets, heights, width, label=mode)
    axes.set_xticks(range(len(behaviours)), behaviours)
    axes.set(ylabel="maximum behaviour % difference", title=title)
    axes.legend(title="steering")
    return save_figure(figure, path)
