"""The lens figures, with matplotlib (``Figure`` objects, no pyplot state; files written
atomically, the format following the path's suffix):

* :func:`plot_bits_per_byte`: held-out bits per byte against depth, one line per lens, the
  model's own figure dashed;
* :func:`plot_trajectory`: the prediction trajectory of one prompt: layers x positions, each
  cell coloured by the entropy (bits) of the lens's distribution and labelled with its top
  token.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from statetap.interp.figures import save_figure
from statetap.interp.lens.evaluate import LensEvaluation
from statetap.interp.lens.lens import LogitLens


def plot_bits_per_byte(evaluation: LensEvaluation, path: str | Path, title: str = "") -> Path:
    """Bits per byte against layer for each lens of ``evaluation``; written to ``path``."""
    layers = list(range(evaluation.n_layers))
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, row in zip(evaluation.lenses, evaluation.bits_per_byte):
        axes.plot(layers, row, marker="o", label=f"{name} lens")
    axes.axhline(evaluation.model_bits_per_byte, color="grey", ls="--", label="model")
    axes.set_xticks(layers)
    axes.set(xlabel="layer", ylabel="bits per byte (held out)", title=title)
    axes.legend()
    return save_figure(figure, path)


def plot_trajectory(
    lens: LogitLens,
    input_ids: torch.Tensor,
    tokenizer,
    path: str | Path,
    title: str = "",
) -> Path:
    """The prediction trajectory of one prompt ``input_ids`` ``[L]`` under ``lens``: for each
    layer (rows, last on top) and position (columns, labelled with the input token) the lens's
    top next-token prediction, on a colour scale of the distribution's entropy in bits."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 1:
        raise ValueError(
            f"input_ids must be one prompt [L], got {list(getattr(input_ids, 'shape', []))}"
        )
    log_probs = lens.predictions(input_ids[None].to(lens.tap.device))[:, 0].log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1) / math.log(2)  # [layers, L] bits
    top = log_probs.argmax(-1).tolist()
    n_layers, length = entropy.shape
    figure = Figure(figsize=(max(4, 0.6 * length + 2), 0.5 * n_layers + 1.8), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(entropy.cpu().numpy(), origin="lower", aspect="auto", cmap="viridis")
    middle = (entropy.min() + entropy.max()).item() / 2
    for layer in range(n_layers):
        for position in range(length):
            axes.text(
                position,
                layer,
                _label(tokenizer, top[layer][position]),
                ha="center",
                va="center",
                fontsize=7,
                color="black" if entropy[layer, position] > middle else "white",  # viridis
            )
    inputs = [_label(tokenizer, token) for token in input_ids.tolist()]
    rotation = 90 if max(map(len, inputs)) > 2 else 0
    axes.set_xticks(range(length), inputs, fontsize=7, rotation=rotation)
    axes.set_yticks(range(n_layers))
    axes.set(
        xlabel="input token (each cell: the predicted next token)",
        ylabel="layer",
        title=title or f"{lens.name} lens predictions",
    )
    figure.colorbar(image, ax=axes, label="entropy (bits)")
    return save_figure(figure, path)


def _label(tokenizer, token: int) -> str:
    """A token as a short readable label: control characters escaped (``\\n``), spaces
    shown as ``\u2423``."""
    text = tokenizer.decode([token])
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text.replace(" ", "\u2423").replace("$", r"\$") or "''"  # "$" would start mathtext
