"""Train several zoo models at once: one process per model, the cores shared between them.

The zoo's models are small and train on one thread (:func:`statetap.zoo.train.train`; a
second thread would give them only 1.3-1.4x), so on a machine with ``C`` cores, ``C`` models
trained side by side finish much sooner than the same models one after another.
:func:`as_trained` does that for the recipes missing from the cache and hands each recipe back
as soon as it is ready, so that the caller can use the first models while the others train;
:func:`prepare` waits for all of them. Each process
goes through :func:`statetap.zoo.path`, so the cache's per-entry lock and atomic rename apply
as for a single call. A training killed with its parent leaves no partial entry behind.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from statetap.signals import die_with_parent
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
    torch.set_num_threads(1)
    # Workers die with this process (even by SIGKILL); if it stops early (an exception, SIGTERM
    # through statetap.signals.exit_on_sigterm, the caller dropping the generator) they are
    # terminated, and each one's SIGTERM removes its half-built cache entry.
    pool = context.Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        bar = tqdm(
            total=len(missing),
            desc=f"statetap.zoo: training {len(missing)} models in {workers} processes",
            disable=not progress,
        )
        for index in pool.imap_unordered(_train_one, list(enumerate(missing))):
            bar.update()
            if bar.n == bar.total:
                bar.close()
                torch.set_num_threads(threads)
            yield missing[index]
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
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


def _train_one(item: tuple[int, Recipe]) -> int:
    """Worker: train (or find) the recipe of ``(index, recipe)`` (training runs on one
    thread); returns the index."""
    from statetap import zoo

    index, recipe = item
    zoo.path(recipe, progress=False)
    return index
