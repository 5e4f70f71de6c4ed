"""The steering section of ``statetap demo``: the Bob vector on a quirky zoo model's Alice prompts.

For each quirky model the section builds the Bob vectors from training equations (Bob minus
Alice prompt of each equation), sweeps them over the held-out Alice prompts on which the two
characters disagree in residual, state and both modes (:func:`steer_alice_to_bob`), and
reports, per mode, the best layer and multiplier with the rate of Bob-consistent answers before
and after. Plots: ``p_match`` against layer per multiplier (residual mode) for each model, and
the per-mode shift of every model side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import statetap
from statetap import zoo
from statetap.interp.steering.plots import plot_layers, plot_modes
from statetap.interp.steering.quirky import steer_alice_to_bob

MODES = ("residual", "state", "both")
MULTIPLIERS = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class SteeringRow:
    """The best setting of one mode on one model (rates are fractions of steered prompts)."""

    model: str
    mode: str
    layer: int
    multiplier: float
    baseline_rate: float
    rate: float

    @property
    def shift(self) -> float:
        return self.rate - self.baseline_rate


def steer_quirky_model(
    name: str,
    model,
    tokenizer,
    recipe,
    out: Path,
    vector_equations: int = 512,
    multipliers: Sequence[float] = MULTIPLIERS,
) -> list[SteeringRow]:
    """Steer ``model`` (the zoo's quirky ``recipe``) and plot its residual-mode sweep to
    ``out / f"steering-{name}.png"``.

    Args:
        vector_equations: training equations (each an Alice and a Bob prompt) the Bob vectors
            are averaged over.

    Returns:
        One :class:`SteeringRow` per mode of :data:`MODES`.
    """
    if vector_equations < 1:
        raise ValueError(f"vector_equations must be >= 1, got {vector_equations}")
    train, test = zoo.quirky_split(recipe)
    found = steer_alice_to_bob(
        statetap.attach(model),
        tokenizer,
        train[: 2 * vector_equations],
        test,
        multipliers=multipliers,
        modes=MODES,
        progress=False,
    )
    plot_layers(
        found.result,
        "residual",
        out / f"steering-{name}.png",
        title=f"{name}: Bob vector, residual",
    )
    rows = []
    for mode in MODES:
        best = found.best(mode)
        rows.append(
            SteeringRow(name, mode, best.layer, best.multiplier, best.baseline_rate, best.rate)
        )
    return rows


def plot_shifts(rows: Sequence[SteeringRow], path: Path) -> Path:
    """Bars of the best shift (percentage points) per mode, one group per model."""
    ranges: dict[str, dict[str, float]] = {}
    for row in rows:
        ranges.setdefault(row.model, {})[row.mode] = row.shift
    return plot_modes(ranges, path, title="Bob-consistent answers on Alice prompts: best shift")


def markdown(rows: Sequence[SteeringRow]) -> list[str]:
    """The section's lines for ``report.md``."""
    lines = [
        "## Steering: the Bob vector on Alice prompts",
        "",
        "Bob vector of each layer: the mean difference between Bob and Alice prompts of the same "
        "training equations (residual stream at the last token; every state component after "
        "it). Applied to the held-out Alice prompts on which Alice and Bob disagree; the rate "
        "is the fraction answered by Bob's rule (`p_match > 1/2`). Best layer and multiplier "
        f"per mode over multipliers {list(MULTIPLIERS)}.",
        "",
        "| model | mode | layer | multiplier | Bob-consistent, unsteered | steered | shift (pp) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.mode} | {r.layer} | {r.multiplier:g} | {r.baseline_rate:.1%} "
            f"| {r.rate:.1%} | {100 * r.shift:+.1f} |"
        )
    models = list(dict.fromkeys(r.model for r in rows))
    lines += ["", "![steering shift per mode](steering-modes.png)", ""]
    lines += [f"![{m}: residual sweep](steering-{m}.png)" for m in models]
    return lines + [""]


def as_dicts(rows: Sequence[SteeringRow]) -> list[dict]:
    """Rows for ``summary.json`` (with the shift)."""
    return [{**asdict(r), "shift": r.shift} for r in rows]
