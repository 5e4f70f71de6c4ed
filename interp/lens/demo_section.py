"""The lens section of ``statetap demo``: tuned lens against logit lens on a zoo text model.

:func:`lens_section` trains a tuned lens on a model's training stream with a scaled recipe
(default :data:`~statetap.interp.lens.config.DEMO_RECIPE`: seconds on a CPU for the zoo's
models), evaluates both lenses on held-out windows, saves the lens, and plots bits per byte
against depth and the prediction trajectory of one held-out prompt. :func:`markdown` and
:func:`as_dicts` turn the reports of one or more models into the report's section and
``summary.json`` rows.

    train_stream, eval_stream, _ = zoo_corpus(recipe)
    report = lens_section(name, model, tokenizer, train_stream, eval_stream, out)
    lines = markdown([report])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from statetap.interp.lens.config import DEMO_RECIPE, TrainConfig
from statetap.interp.lens.evaluate import LensEvaluation, evaluate
from statetap.interp.lens.lens import TunedLens
from statetap.interp.lens.plots import plot_bits_per_byte, plot_trajectory
from statetap.interp.lens.train import train


@dataclass
class LensReport:
    """What the lens section found for one model (figure paths relative to the report)."""

    model: str
    evaluation: LensEvaluation
    train_seconds: float
    config: TrainConfig
    lens_folder: Path
    figures: list[Path]


def lens_section(
    name: str,
    model: torch.nn.Module,
    tokenizer,
    train_stream: torch.Tensor,
    eval_stream: torch.Tensor,
    out: str | Path,
    config: TrainConfig = DEMO_RECIPE,
    eval_windows: int = 64,
    bytes_per_token: float = 1.0,
    prompt_tokens: int = 24,
) -> LensReport:
    """Train, evaluate and plot the tuned lens of ``model`` (zoo model ``name``).

    Writes ``out / f"lens-{name}.png"`` (bits per byte against layer, tuned and logit lens),
    ``out / f"lens-trajectory-{name}.png"`` (the tuned lens's predictions on the first
    ``prompt_tokens`` held-out tokens) and the lens itself under ``out / "lens" / name``.

    Args:
        train_stream, eval_stream: token ids ``[T]`` (training and held-out documents).
        eval_windows: held-out windows of ``config.seq_len`` tokens scored.
        bytes_per_token: of ``eval_stream`` (1 for the zoo's byte-level models).
    """
    out = Path(out)
    lens = TunedLens(model, meta=dict(model=name))
    start = time.perf_counter()
    train(lens, train_stream, config, progress=False)
    seconds = time.perf_counter() - start
    evaluation = evaluate(
        lens,
        eval_stream,
        seq_len=config.seq_len,
        max_windows=eval_windows,
        batch_size=config.batch_size,
        bytes_per_token=bytes_per_token,
    )
    folder = lens.save(out / "lens" / name)
    figures = [
        plot_bits_per_byte(evaluation, out / f"lens-{name}.png", title=f"{name}: lenses"),
        plot_trajectory(
            lens,
            eval_stream[:prompt_tokens],
            tokenizer,
            out / f"lens-trajectory-{name}.png",
            title=f"{name}: tuned lens, top token per layer",
        ),
    ]
    figures = [path.relative_to(out) for path in figures]
    return LensReport(name, evaluation, seconds, config, folder, figures)


def markdown(reports: Sequence[LensReport]) -> list[str]:
    """The section's lines for ``report.md``: the recipe, then per model its per-layer table,
    the final-layer check and the figures."""
    if not reports:
        return []
    config = reports[0].config
    lines = [
        "## Tuned lens",
        "",
        "One affine translator per layer (identity at initialisation), read through the model's "
        "own final norm and unembedding and trained to minimise KL(p_final || p_lens) with the "
        f"model frozen: SGD (Nesterov momentum {config.momentum}, lr {config.lr} decayed "
        f"linearly to 0, weight decay {config.weight_decay}), {config.steps} steps of "
        f"{config.tokens_per_step} tokens in windows of {config.seq_len}. The logit lens is the "
        "baseline; both are scored on held-out windows.",
        "",
    ]
    for r in reports:
        e = r.evaluation
        lines += [
            f"### {r.model}",
            "",
            f"Trained in {r.train_seconds:.1f} s; saved to `{r.lens_folder}`.",
            "",
            e.markdown(),
            "",
        ]
        lines += [f"![{r.model}: {path.stem}]({path})" for path in r.figures]
        lines.append("")
    return lines


def as_dicts(reports: Sequence[LensReport]) -> list[dict]:
    """Rows for ``summary.json``: one per (model, lens, layer), with the model's figures."""
    return [
        dict(
            model=r.model,
            **row,
            model_bits_per_byte=r.evaluation.model_bits_per_byte,
            final_layer_error=r.evaluation.final_layer_error,
            train_seconds=r.train_seconds,
        )
        for r in reports
        for row in r.evaluation.as_dicts()
    ]
