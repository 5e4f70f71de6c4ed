"""ELK on a quirky model, end to end: prompts -> features -> probes -> results and figure.

:func:`elk_experiment` takes a model, the prompts whose features fit the probes (Alice's are
used) and the prompts to score (both characters): the arithmetic's
(:class:`~statetap.zoo.quirky.QuirkyExample`) or a quirky dataset's
(:class:`~statetap.interp.elk.dataset.QuirkyPrompt`). It extracts the features in large batches
(:func:`.features.quirky_features`), runs :func:`.experiments.run_experiments` (each probe's
rows written to ``probes/`` as it finishes, so a killed run resumes), and writes ``elk.json``
and ``elk-auroc.png`` to a folder. Beside every run it runs the **random-model control**: the
same probes on the same prompts, on a model of the same architecture and config with random
weights (:func:`random_twin`), in ``control/``; the results carry it (``results.control``) and
every table shows its AUROC beside the model's. A probe on a random network's residual stream
or state still reads whatever the prompt's tokens say linearly (the shown result, the names),
so only what a trained model adds over the control is the model's knowledge.

:func:`zoo_elk` does it for a quirky zoo model: the probes are fitted on Alice's prompts of
equations the model was trained on and scored on its held-out equations, which it never saw.
There difficulty is Mallen et al.'s v2 definition, ``min(a, b)``: with the zoo's two-digit
operands the v1 definition (digits of the smaller summand) takes two values only, too few for
quartiles. Elsewhere it is each example's ``difficulty``.

    statetap elk run --model quirky-mamba --out runs/elk-quirky-mamba
    statetap elk run --model path/to/model --dataset quirky_rows.jsonl --out runs/elk
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

import statetap
from statetap import zoo
from statetap.interp.elk.experiments import DEFAULT_CONFIG, ElkConfig, Example, run_experiments
from statetap.interp.elk.features import quirky_features
from statetap.interp.elk.plots import plot_auroc_by_layer
from statetap.interp.elk.results import ElkResults
from statetap.interp.provenance import model_identity
from statetap.zoo.quirky_operations import quantiles

FIGURE = "elk-auroc.png"
CONTROL = "control"  # the random-model control's folder under a run's
PROBES_FOLDER = "probes"  # each finished probe's rows (run_experiments' checkpoint)


def random_twin(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A model of ``model``'s class and config with freshly initialised (random) weights, drawn
    from a private generator seeded with ``seed``, on ``model``'s device and dtype, in eval
    mode."""
    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = type(model)(copy.deepcopy(model.config))
    return twin.to(device=parameter.device, dtype=parameter.dtype).eval()


def elk_experiment(
    model: torch.nn.Module,
    tokenizer,
    fit_examples: Sequence[Example],
    scored_examples: Sequence[Example],
    out: str | Path,
    config: ElkConfig = DEFAULT_CONFIG,
    meta: dict | None = None,
    batch_size: int = 256,
    progress: bool = True,
    difficulty: Sequence[float] | None = None,
    control: bool = True,
    resume: bool = True,
) -> ElkResults:
    """Fit the probes of ``config`` on ``fit_examples`` and score them on ``scored_examples``,
    and the same on :func:`random_twin` of ``model`` (with ``control``).

    Args:
        model: a quirky transformers model statetap instruments (``statetap.attach``).
        tokenizer: its tokenizer (each example's two ``choices`` one token each).
        fit_examples: prompts the probes are fitted on (only Alice's are used by the default
            training sets).
        scored_examples: prompts the probes and the model are scored on.
        out: folder for ``elk.json``, ``elk-auroc.png``, ``probes/`` (each finished probe's
            rows; a rerun with the same folder resumes from them) and ``control/``.
        batch_size: sequences per forward pass.
        difficulty: per example of ``fit_examples + scored_examples``, the number whose
            quantiles make the easy and hard subsets (default: each example's ``difficulty``).
        control: also run the random-model control (module docstring).
        resume: reuse the probe rows a previous run with the same prompts, features and config
            left in ``out`` (another run's are refused, naming what differs); False deletes
            them first.

    Returns:
        The saved :class:`ElkResults`, the control's in ``results.control``.
    """
    if not fit_examples or not scored_examples:
        raise ValueError("fit_examples and scored_examples must both be non-empty")
    examples = [*fit_examples, *scored_examples]
    if difficulty is None:
        difficulty = [e.difficulty for e in examples]
    elif len(difficulty) != len(examples):
        raise ValueError(f"difficulty has {len(difficulty)} values for {len(examples)} examples")
    out = Path(out)
    meta = dict(
        meta or {},
        identity=model_identity(model, tokenizer),
        fit_examples=len(fit_examples),
        scored=len(scored_examples),
    )
    fit_mask = torch.arange(len(examples)) < len(fit_examples)
    if not resume:
        for folder in (out / PROBES_FOLDER, out / CONTROL / PROBES_FOLDER):
            shutil.rmtree(folder, ignore_errors=True)

    def probe(each: torch.nn.Module, folder: Path, meta: dict) -> ElkResults:
        features = quirky_features(
            statetap.attach(each), tokenizer, examples, batch_size=batch_size, progress=progress
        )
        return run_experiments(
            features,
            examples,
            quantiles(list(difficulty)),
            fit_mask=fit_mask,
            config=config,
            meta=meta,
            progress=progress,
            checkpoint=folder / PROBES_FOLDER,
        )

    results = probe(model, out, meta)
    if control:
        twin_meta = dict(meta, random_weights=dict(seed=config.seed))
        twin = probe(random_twin(model, config.seed), out / CONTROL, twin_meta)
        twin.save(out / CONTROL)
        results.control = asdict(twin)
    results.save(out)
    plot_auroc_by_layer(results, out / FIGURE, title=str(meta.get("model", "")))
    return results


def zoo_elk(
    name: str,
    out: str | Path,
    config: ElkConfig = DEFAULT_CONFIG,
    fit_equations: int = 2000,
    batch_size: int = 256,
    progress: bool = True,
    control: bool = True,
) -> ElkResults:
    """:func:`elk_experiment` on quirky zoo model ``name`` (trained on first use), on its own
    training (fit) and held-out (scored) equations, difficulty ``min(a, b)``.

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
    alice, test, difficulty = zoo_examples(recipe, fit_equations)
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
        difficulty=difficulty,
        control=control,
    )


def zoo_examples(recipe: zoo.Recipe, fit_equations: int) -> tuple[list, list, list[int]]:
    """A quirky zoo recipe's Alice prompts of its first ``fit_equations`` training equations,
    its held-out prompts, and the difficulty ``min(a, b)`` of each (module docstring)."""
    train, test = zoo.quirky_split(recipe)
    alice = [e for e in train[: 2 * fit_equations] if e.character == "Alice"]
    return alice, test, [min(e.a, e.b) for e in [*alice, *test]]
