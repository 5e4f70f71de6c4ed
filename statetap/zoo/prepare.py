"""Train several zoo models at once: one process per model, the cores shared between them.

The zoo's models are small and train on one thread (:func:`statetap.zoo.train.train`; a
second thread would give them only 1.3-1.4x), so on a machine with ``C`` cores, ``C`` models
trained side by side finish much sooner than the same models one after another.
:func:`as_trained` does that for the recipes missing from the cache and hands each recipe back
as soon as it is ready, so that the caller can use the first models while the others train;
:func:`prepare` waits for all of them. Each process
goes through :func:`statetap.zoo.path`, so the cache's per-entry lock and atomic rename apply
as for a single call.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm.auto import tqdm

from statetap.zoo import cache
from statetap.zoo.recipes import Recipe


def as_trained(
    recipes: Sequence[Recipe], processes: int | None = None, progress: bool = True
) -> Iterator[Recipe]:
    """Yield every recipe once it is in the cache: the cached ones first, then the missing ones
    as their trainings finish.

    Args:
        recipes: the recipes.
        processes: training processes (default: one per missing recipe, at most one per CPU
            core). With one, each missing recipe trains here when its turn comes.
        progress: a bar over the trainings (or each training's own bar when run here).

    While trainings run in other processes this process computes on one thread (the cores are
    theirs); its thread count is restored when they are done.
    """
    from statetap import zoo

    if processes is not None and (not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be a positive int or None, got {processes!r}")
    missing = [r for r in recipes if cache.lookup(r) is None]
    yield from (r for r in recipes if r not in missing)
    cores = os.cpu_count() or 1
    workers = min(len(missing), processes or cores)
    if workers <= 1:
        for recipe in missing:
            zoo.path(recipe, progress=progress)
            yield recipe
        return
    threads = torch.get_num_threads()
    context = multiprocessing.get_context("spawn")  # no fork of a threaded torch
    try:
        torch.set_num_threads(1)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_train_one, recipe): recipe for recipe in missing}
            bar = tqdm(
                total=len(futures),
                desc=f"statetap.zoo: training {len(missing)} models in {workers} processes",
                disable=not progress,
            )
            for future in as_completed(futures):
                future.result()
                bar.update()
                if bar.n == bar.total:
                    bar.close()
                    torch.set_num_threads(threads)
                yield futures[future]
    finally:
        torch.set_num_threads(threads)


def prepare(
    recipes: Sequence[Recipe], processes: int | None = None, progress: bool = True
) -> dict[str, Path]:
    """Make sure every recipe is in the cache (see :func:`as_trained`); returns
    ``{recipe name: cache folder}``."""
    from statetap import zoo

    for _ in as_trained(recipes, processes, progress):
        pass
    return {r.name: zoo.path(r, progress=progress) for r in recipes}


def _train_one(recipe: Recipe) -> Path:
    """Worker: train (or find) ``recipe`` (training runs on one thread)."""
    from statetap import zoo

    return zoo.path(recipe, progress=False)
