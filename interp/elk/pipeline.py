"""ELK on a quirky model, end to end: prompts -> features -> probes -> results and figure.

:func:`elk_experiment` takes a model, the Alice prompts whose features fit the probes and the
prompts to score (both characters); it extracts the features in large batches
(:func:`.features.quirky_features`), runs :func:`.experiments.run_experiments`, and writes
``elk.json`` and ``elk-auroc.png`` to a folder. :func:`zoo_elk` does it for a quirky zoo
model: the probes are fitted on Alice's prompts of equations the model was trained on and
scored on its held-out equations, which it never saw.

Difficulty is Mallen et al.'s v2 definition, ``min(a, b)``, for every operation: with the zoo's
two-digit operands the v1 definition (digits of the smaller summand) takes two values only, too
few for quartiles.

    statetap elk run --model quirky-mamba --out runs/elk-quirky-mamba
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

import statetap
from statetap import zoo
from statetap.interp.elk.experiments import DEFAULT_CONFIG, ElkConfig, run_experiments
from statetap.interp.elk.features import quirky_features
from statetap.interp.elk.plots import plot_auroc_by_layer
from statetap.interp.elk.results import ElkResults
from statetap.zoo.quirky import QuirkyExample
from statetap.zoo.quirky_operations import quantiles

FIGURE = "elk-auroc.png"


def elk_experiment(
    model: torch.nn.Module,
    tokenizer,
    fit_examples: Sequence[QuirkyExample],
    scored_examples: Sequence[QuirkyExample],
    out: str | Path,
    config: ElkConfig = DEFAULT_CONFIG,
    meta: dict | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> ElkResults:
    """Fit the probes of ``config`` on ``fit_examples`` and score them on ``scored_examples``.

    Args:
        model: a quirky transformers model statetap instruments (``statetap.attach``).
        tokenizer: its tokenizer (``" True"`` and ``" False"`` one token each).
        fit_examples: prompts the probes are fitted on (only Alice's are used by the default
            training sets).
        scored_examples: prompts the probes and the model are scored on.
        out: folder for ``elk.json`` and ``elk-auroc.png``.
        batch_size: sequences per forward pass.

    Returns:
        The saved :class:`ElkResults`.
    """
    if not fit_examples or not scored_examples:
        raise ValueError("fit_examples and scored_examples must both be non-empty")
    examples = [*fit_examples, *scored_examples]
    features = quirky_features(
        statetap.attach(model), tokenizer, examples, batch_size=batch_size, progress=progress
    )
    fit_mask = torch.arange(len(examples)) < len(fit_examples)
    difficulty = quantiles([min(e.a, e.b) for e in examples])
    results = run_experiments(
        features,
        examples,
        difficulty,
        fit_mask=fit_mask,
        config=config,
        meta=dict(meta or {}, fit_examples=len(fit_examples), scored=len(scored_examples)),
        progress=progress,
    )
    out = Path(out)
    results.save(out)
    plot_auroc_by_layer(results, out / FIGURE, title=str((meta or {}).get("model", "")))
    return results


def zoo_elk(
    name: str,
    out: str | Path,
    config: ElkConfig = DEFAULT_CONFIG,
    fit_equations: int = 2000,
    batch_size: int = 256,
    progress: bool = True,
) -> ElkResults:
    """:func:`elk_experiment` on quirky zoo model ``name`` (trained on first use).

    Args:
        fit_equations: training equations whose Alice prompts fit the probes (at most the
            recipe's ``train_equations``).
    """
    recipe = zoo.resolve(name)
    if not 1 <= fit_equations <= recipe.train_equations:
        raise ValueError(
            f"fit_equations must be in [1, {recipe.train_equations}] for {recipe.name}, "
            f"got {fit_equations}"
        )
    model, tokenizer = zoo.load(recipe, progress=progress)
    train, test = zoo.quirky_split(recipe)
    alice = [e for e in train[: 2 * fit_equations] if e.character == "Alice"]
    return elk_experiment(
        model,
        tokenizer,
        alice,
        test,
        out,
        config=config,
        meta=dict(model=recipe.name, recipe_key=zoo.cache.recipe_key(recipe)),
        batch_size=batch_size,
        progress=progress,
    )
