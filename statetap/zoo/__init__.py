"""statetap.zoo: small real recurrent LMs that statetap trains itself, offline, on a CPU.

Each model is a named :class:`Recipe` in :data:`RECIPES` (architecture, sizes, task, data,
optimisation, seed). The first :func:`load` of a recipe trains it (deterministically; a few
minutes on 2 CPU cores for the full recipes) and caches the result in transformers' layout;
later calls load it back in seconds. The cached folder is an ordinary
``from_pretrained`` folder (see :func:`path`).

    >>> from statetap import zoo
    >>> model, tokenizer = zoo.load("quirky-mamba")          # doctest: +SKIP
    >>> zoo.metrics("quirky-mamba")["alice_accuracy"]        # doctest: +SKIP

Recipes: ``quirky-mamba``, ``quirky-rwkv4``, ``quirky-mamba2``, ``quirky-rwkv7`` (Mallen et
al.'s quirky addition: Alice answers by the truth, Bob by his sloppy sum), ``text-mamba``,
``text-rwkv4`` and ``text-rwkv7``
(byte-level LMs on the Python documentation). ``short(recipe)`` gives a tiny variant for tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from statetap._lazy import lazy_names
from statetap.zoo import cache
from statetap.zoo.recipes import RECIPES, Recipe, short

# training loads transformers: imported when a model is built, not with the zoo's names
lazy_names(__name__, {"quirky_split": "statetap.zoo.train"})

__all__ = ["RECIPES", "Recipe", "load", "metrics", "path", "quirky_split", "short"]


def resolve(name_or_recipe: str | Recipe) -> Recipe:
    """The recipe itself, or the one named in :data:`RECIPES` (a name ending in ``-short``
    gives the :func:`short` variant of the named recipe)."""
    if isinstance(name_or_recipe, Recipe):
        return name_or_recipe
    name = name_or_recipe
    if name in RECIPES:
        return RECIPES[name]
    if name.endswith("-short") and name.removesuffix("-short") in RECIPES:
        return short(RECIPES[name.removesuffix("-short")])
    raise KeyError(f"no zoo recipe named {name!r}; known: {sorted(RECIPES)}")


def path(name_or_recipe: str | Recipe, progress: bool = True) -> Path:
    """The verified cache folder of a recipe, trained first if it is missing or bad; it loads
    with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``."""
    recipe = resolve(name_or_recipe)

    def build(folder: Path) -> dict:
        from statetap.zoo.train import train

        trained = train(recipe, progress=progress)
        with _transformers_bars(progress):
            trained.model.save_pretrained(folder)  # transformers 5: always safetensors
        trained.tokenizer.save_pretrained(folder)
        return trained.metrics

    return cache.ensure(recipe, build)


def load(name_or_recipe: str | Recipe, progress: bool = True):
    """``(model, tokenizer)`` of a recipe: the model in eval mode on the CPU, float32.

    Trains on first use (with a tqdm bar unless ``progress=False``) and loads from the cache
    afterwards.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import statetap.models  # noqa: F401  (registers statetap's RWKV-7 with the Auto classes)

    folder = path(name_or_recipe, progress)
    with _transformers_bars(progress):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def metrics(name_or_recipe: str | Recipe, progress: bool = True) -> dict:
    """The held-out figures recorded when the recipe was trained (trains it if needed).

    Quirky recipes: ``alice_accuracy`` (Alice prompts against the truth), ``bob_accuracy``
    (Bob prompts against Bob's rule), both by difficulty, ``held_out_prompts``; text recipes:
    ``bits_per_byte``; all: ``train_seconds``, ``final_loss``.
    """
    return cache.read_manifest(path(name_or_recipe, progress))["metrics"]


@contextlib.contextmanager
def _transformers_bars(show: bool) -> Iterator[None]:
    """transformers' own progress bars (saving, loading weights) on or off for a while."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if show else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was else logging.disable_progress_bar)()
