"""The ELK transfer experiments of Mallen et al. on a quirky model's features.

Probes are fitted on one part of the examples and scored on the other: the caller says which
(``fit_mask``; the zoo pipeline fits on equations the model was trained on and scores the
held-out ones), or the equations are split at random (:func:`probe_split`, by equation, so no
equation's Alice and Bob prompts straddle the split). Subsets
are named as in the paper: ``A`` / ``B`` (Alice's / Bob's prompts), with ``E`` (easy:
difficulty quantile <= 0.25) or ``H`` (hard: >= 0.75) appended.

For every probe, feature site (``"residual"``, a state component, or ``"state"``: every
component of the layer), layer (each one the site is read at, named by its index in the model:
on a hybrid the state sites only at its recurrent layers; and ``"all"``: the site of every such
layer side by side, for the state the model's whole recurrent memory) and training set
(``A`` or ``AE``; trained on Alice's labels, which are the truth), each test set gets two
AUROCs: against the truth (``alice_label``) and against Bob's labels. A probe that reports what
the model *knows* keeps a high truth AUROC on ``B``, where the model's own output follows Bob.

The model itself is scored the same way from its log-odds ``log p(" True") - log p(" False")``.
The **gap recovered** of a probe on a Bob test set is::

    (AUROC_probe(B, truth) - AUROC_model(B, truth))
    / (AUROC_model(A, truth) - AUROC_model(B, truth))

with ``AH`` in place of ``A`` for ``BH``: 0 when the probe is no more truthful on Bob's prompts
than the model's output, 1 when it is as truthful as the model is on Alice's.

The **anomaly detector** (:mod:`.anomaly`) is fitted on the credences, at every layer, of the
``lr`` probe trained on ``AE``, over the scored part's ``AE`` examples; it scores ``AH``
(normal) against ``BH`` (anomalous).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from statetap.extract import write_json_atomically
from statetap.interp.elk.anomaly import MahalanobisDetector
from statetap.interp.elk.dataset import QuirkyPrompt
from statetap.interp.elk.metrics import auroc
from statetap.interp.elk.probes import (
    CcsProbe,
    CrcProbe,
    LdaProbe,
    LogisticProbe,
    MeanDiffProbe,
    Probe,
    RandomProbe,
)
from statetap.interp.elk.results import ElkResults
from statetap.interp.provenance import check_same
from statetap.zoo.quirky import QuirkyExample
from statetap.zoo.quirky_operations import EASY_QUANTILE, HARD_QUANTILE

if TYPE_CHECKING:  # features load the model adapters: not needed to name a config
    from statetap.interp.elk.features import QuirkyFeatures

# name -> (probe class, fitted on contrast pairs)
PROBES: dict[str, tuple[type[Probe], bool]] = {
    "lr": (LogisticProbe, False),
    "lr-on-pair": (LogisticProbe, True),
    "mean-diff": (MeanDiffProbe, False),
    "mean-diff-on-pair": (MeanDiffProbe, True),
    "lda": (LdaProbe, False),
    "ccs": (CcsProbe, True),
    "crc": (CrcProbe, True),
    "random": (RandomProbe, False),
}
Example = QuirkyExample | QuirkyPrompt  # the arithmetic's prompts, or a dataset's
SUBSETS = ("A", "B", "AE", "AH", "BE", "BH")
ALL_LAYERS = "all"
ANOMALY_PROBE = "lr"


@dataclass(frozen=True)
class ElkConfig:
    """What to run.

    Attributes:
        probes: names from :data:`PROBES`.
        sites: feature sites to probe (None: every site of the features).
        all_layers: also probe each site of every layer side by side (layer ``"all"``).
        train_sets: subsets the probes are fitted on (Alice's only: they use her labels).
        test_sets: subsets every probe is scored on.
        probe_fraction: without a ``fit_mask``, the fraction of the equations that fit the
            probes (the rest are scored).
        seed: of the split and of the random probes.
        max_iter: L-BFGS iterations of the logistic probes (``lr``, ``lr-on-pair``); None:
            :class:`LogisticProbe`'s default.
    """

    probes: tuple[str, ...] = tuple(PROBES)
    sites: tuple[str, ...] | None = None
    all_layers: bool = True
    train_sets: tuple[str, ...] = ("A", "AE")
    test_sets: tuple[str, ...] = ("A", "B", "AH", "BH")
    probe_fraction: float = 0.5
    seed: int = 0
    max_iter: int | None = None

    def __post_init__(self) -> None:
        for name in ("probes", "train_sets", "test_sets"):
            value = getattr(self, name)
            if isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty sequence of names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.sites is not None:
            if isinstance(self.sites, str) or not self.sites:
                raise ValueError(f"sites must be None or a non-empty sequence, got {self.sites!r}")
            object.__setattr__(self, "sites", tuple(self.sites))
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ValueError(f"probes: unknown {unknown}; known: {list(PROBES)}")
        for name in ("train_sets", "test_sets"):
            bad = [s for s in getattr(self, name) if s not in SUBSETS]
            if bad:
                raise ValueError(f"{name}: unknown subsets {bad}; known: {list(SUBSETS)}")
        if any(not s.startswith("A") for s in self.train_sets):
            raise ValueError(f"train_sets must be Alice's subsets, got {self.train_sets}")
        if self.max_iter is not None and (not isinstance(self.max_iter, int) or self.max_iter < 1):
            raise ValueError(f"max_iter must be a positive int or None, got {self.max_iter!r}")
        if not 0.0 < self.probe_fraction < 1.0:
            raise ValueError(f"probe_fraction must be in (0, 1), got {self.probe_fraction}")


DEFAULT_CONFIG = ElkConfig()


def probe_split(examples: Sequence[Example], fraction: float, seed: int) -> torch.Tensor:
    """``[N]`` bool: True for the examples whose group (``example.group``: the equation
    ``(a, b, shown)``, or a dataset statement without the character) fits the probes.

    ``round(fraction * E)`` of the ``E`` distinct groups, drawn with ``random.Random(seed)``;
    Alice's and Bob's prompt of a group land on the same side.
    """
    keys = list(dict.fromkeys(e.group for e in examples))
    chosen = set(random.Random(seed).sample(keys, round(fraction * len(keys))))
    return torch.tensor([e.group in chosen for e in examples])


def subset_masks(examples: Sequence[Example], quantiles: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[N]`` bool masks of every subset in :data:`SUBSETS`.

    Args:
        quantiles: ``[N]`` difficulty quantiles in [0, 1].
    """
    if quantiles.shape != (len(examples),):
        raise ValueError(
            f"quantiles must have shape [{len(examples)}] like examples, "
            f"got {list(quantiles.shape)}"
        )
    character = {c: torch.tensor([e.character == c for e in examples]) for c in ("Alice", "Bob")}
    level = {"": torch.ones(len(examples), dtype=torch.bool), "E": quantiles <= EASY_QUANTILE}
    level["H"] = quantiles >= HARD_QUANTILE
    return {s: character[{"A": "Alice", "B": "Bob"}[s[0]]] & level[s[1:]] for s in SUBSETS}


def run_experiments(
    features: QuirkyFeatures,
    examples: Sequence[Example],
    quantiles: torch.Tensor,
    fit_mask: torch.Tensor | None = None,
    config: ElkConfig = DEFAULT_CONFIG,
    meta: dict | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> ElkResults:
    """Fit and score every probe of ``config`` on every site and layer of ``features``.

    Args:
        features: of ``examples``, in the same order (:func:`.features.quirky_features`).
        examples: the ``N`` quirky prompts.
        quantiles: ``[N]`` difficulty quantiles of the examples.
        fit_mask: ``[N]`` bool, True for the examples that fit the probes (the others are
            scored); None: :func:`probe_split` with ``config.probe_fraction``.
        config: probes, subsets, split.
        meta: recorded in the results (model name and identity, recipe, ...).
        checkpoint: a folder where each (probe, site, layer, training set) writes its rows as
            it finishes (one JSON file each, written atomically), beside ``run.json``, what
            the run is (:func:`_run_record`). Run again with the same folder, a run reuses
            the files it finds and fits only the rest: a killed run resumes.

    Returns:
        :class:`~statetap.interp.elk.results.ElkResults`.

    Raises:
        ValueError: ``features``, ``examples`` or ``fit_mask`` differ in length, a site is
            unknown, a subset a probe is fitted on is empty or lacks a class, or
            ``checkpoint`` holds the files of another run (what differs is named).
    """
    if len(features) != len(examples):
        raise ValueError(f"features hold {len(features)} rows for {len(examples)} examples")
    masks = subset_masks(examples, quantiles)
    if fit_mask is None:
        fits = probe_split(examples, config.probe_fraction, config.seed)
    elif not isinstance(fit_mask, torch.Tensor) or fit_mask.dtype != torch.bool:
        raise TypeError("fit_mask must be a bool torch.Tensor")
    elif fit_mask.shape != (len(examples),):
        raise ValueError(f"fit_mask must have shape [{len(examples)}], got {list(fit_mask.shape)}")
    else:
        fits = fit_mask
    sites = features.sites if config.sites is None else list(config.sites)
    unknown = [s for s in sites if s not in features.sites]
    if unknown:
        raise ValueError(f"sites: {unknown} are not among the features' {features.sites}")
    layers: dict[str, list[int | str]] = {site: list(features.layers[site]) for site in sites}
    for each in layers.values():
        if config.all_layers and len(each) > 1:
            each.append(ALL_LAYERS)
    truth = torch.tensor([e.alice_label for e in examples])
    bob = torch.tensor([e.bob_label for e in examples])
    train = {s: _rows(masks[s] & fits, f"training set {s}") for s in config.train_sets}
    test = {s: _rows(masks[s] & ~fits, f"test set {s}") for s in config.test_sets}

    def aurocs(scores: torch.Tensor, rows: torch.Tensor) -> dict:
        return dict(
            auroc_truth=_auroc(scores, truth[rows]),
            auroc_bob=_auroc(scores, bob[rows]),
            n=len(rows),
        )

    model_rows = [dict(test=s, **aurocs(features.log_odds[rows], rows)) for s, rows in test.items()]
    model_auroc = {r["test"]: r["auroc_truth"] for r in model_rows}
    rows_out, credences = [], {}
    jobs = [
        (probe, site, layer, trained)
        for site in sites
        for layer in layers[site]
        for probe in config.probes
        for trained in config.train_sets
    ]
    folder = None
    if checkpoint is not None:
        folder = Path(checkpoint)
        record = _run_record(features, examples, quantiles, fits, config, meta)
        _start_checkpoint(folder, record)
    for probe, site, layer, trained in tqdm(jobs, desc="probes", disable=not progress):
        done = None if folder is None else folder / f"{probe}.{site}.{layer}.{trained}.json"
        if done is not None and done.is_file():
            found = json.loads(done.read_text(encoding="utf-8"))
        else:
            found = dict(rows=[], credences=None)
            fitted = _fit(probe, features, site, layer, train[trained], truth, config)
            for tested, rows in test.items():
                row = dict(probe=probe, site=site, layer=layer, train=trained, test=tested)
                row.update(aurocs(_score(fitted, probe, features, site, layer, rows), rows))
                row["gap_recovered"] = _gap_recovered(row["auroc_truth"], tested, model_auroc)
                found["rows"].append(row)
            if probe == ANOMALY_PROBE and trained == "AE" and layer != ALL_LAYERS:
                every = torch.arange(len(examples))
                found["credences"] = _score(fitted, probe, features, site, layer, every).tolist()
            if done is not None:
                write_json_atomically(done, found)
        rows_out += found["rows"]
        if found["credences"] is not None:
            credences[site, layer] = torch.tensor(found["credences"], dtype=torch.float64)
    anomaly = _anomaly(credences, {s: m & ~fits for s, m in masks.items()})
    return ElkResults(
        probes=rows_out,
        model=model_rows,
        anomaly=anomaly,
        meta=dict(meta or {}, config=_config_dict(config), examples=len(examples)),
    )


RUN_RECORD = "run.json"


def _run_record(
    features: QuirkyFeatures,
    examples: Sequence[Example],
    quantiles: torch.Tensor,
    fits: torch.Tensor,
    config: ElkConfig,
    meta: dict | None,
) -> dict:
    """What a checkpoint folder's files are the results of: sha256s of the examples (text,
    character, labels, choices), of the model's log-odds on them rounded to 1e-4 (the weights:
    the same config with other weights is another model; the rounding forgives the last bits a
    different thread count changes), of their difficulty quantiles and of the fit/score split,
    the config, and the model's identity (``meta["identity"]``, when given)."""
    described = [
        [e.text, e.character, e.alice_label, e.bob_label, list(e.choices)] for e in examples
    ]
    return dict(
        examples_sha256=_sha256(described),
        log_odds_sha256=_sha256(features.log_odds.double().round(decimals=4).tolist()),
        quantiles_sha256=_sha256(quantiles.tolist()),
        fit_sha256=_sha256(fits.tolist()),
        config=_config_dict(config),
        identity=(meta or {}).get("identity"),
    )


def _start_checkpoint(folder: Path, record: dict) -> None:
    """Create ``folder`` with ``run.json`` holding ``record``, or check the record it holds."""
    path = folder / RUN_RECORD
    if path.is_file():
        check_same(
            json.loads(path.read_text(encoding="utf-8")),
            record,
            f"the probe results in {folder} (give a new folder for another run)",
        )
    else:
        write_json_atomically(path, record)


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _rows(mask: torch.Tensor, what: str) -> torch.Tensor:
    rows = mask.nonzero().flatten()
    if len(rows) < 2:
        raise ValueError(f"the {what} holds {len(rows)} examples; ask for more equations")
    return rows


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AUROC, or None when ``labels`` hold one class only (then it is undefined)."""
    return auroc(scores, labels) if 0 < int(labels.sum()) < len(labels) else None


def _fit(
    probe: str,
    features: QuirkyFeatures,
    site: str,
    layer: int | str,
    rows: torch.Tensor,
    truth: torch.Tensor,
    config: ElkConfig,
) -> Probe:
    kind, paired = PROBES[probe]
    if kind in (CcsProbe, RandomProbe):
        fitted = kind(seed=config.seed)
    elif kind is LogisticProbe and config.max_iter is not None:
        fitted = kind(max_iter=config.max_iter)
    else:
        fitted = kind()
    if paired:
        return fitted.fit(
            _at(features, "statement", site, layer, rows),
            truth[rows],
            negation=_at(features, "negation", site, layer, rows),
        )
    return fitted.fit(_at(features, "prompt", site, layer, rows), truth[rows])


def _score(
    fitted: Probe,
    probe: str,
    features: QuirkyFeatures,
    site: str,
    layer: int | str,
    rows: torch.Tensor,
) -> torch.Tensor:
    if PROBES[probe][1]:
        return fitted.score(
            _at(features, "statement", site, layer, rows),
            negation=_at(features, "negation", site, layer, rows),
        )
    return fitted.score(_at(features, "prompt", site, layer, rows))


def _at(
    features: QuirkyFeatures, side: str, site: str, layer: int | str, rows: torch.Tensor
) -> torch.Tensor:
    """``[R, D]`` of ``side`` (``"prompt"``, ``"statement"`` or ``"negation"``) at model layer
    ``layer``, or ``[R, layers(site) * D]`` for :data:`ALL_LAYERS`."""
    found = getattr(features, side)[site][rows]
    return found.flatten(1) if layer == ALL_LAYERS else found[:, features.at(site, layer)]


def _gap_recovered(probe_auroc: float | None, tested: str, model_auroc: dict) -> float | None:
    """See the module docstring; None off Bob's test sets or without the Alice reference."""
    alice = "A" + tested[1:]
    if not tested.startswith("B") or probe_auroc is None:
        return None
    bob_model, alice_model = model_auroc.get(tested), model_auroc.get(alice)
    if bob_model is None or alice_model is None or alice_model == bob_model:
        return None
    return (probe_auroc - bob_model) / (alice_model - bob_model)


def _anomaly(
    credences: dict[tuple[str, int | str], torch.Tensor], scored: dict[str, torch.Tensor]
) -> list[dict]:
    """Detector rows per site and for every site together (module docstring); ``scored``
    are the subset masks restricted to the scored part."""
    if not credences or not all(scored[s].sum() >= 2 for s in ("AE", "AH", "BH")):
        return []
    sites = list(dict.fromkeys(site for site, _ in credences))
    groups = {site: [k for k in credences if k[0] == site] for site in sites}
    if len(sites) > 1:
        groups["all"] = list(credences)
    rows = []
    for name, keys in groups.items():
        x = torch.stack([credences[k] for k in keys], dim=1)
        detector = MahalanobisDetector().fit(x[scored["AE"]])
        normal, anomalous = detector.score(x[scored["AH"]]), detector.score(x[scored["BH"]])
        labels = torch.cat([torch.zeros(len(normal)), torch.ones(len(anomalous))])
        rows.append(
            dict(
                site=name,
                probe=ANOMALY_PROBE,
                auroc=auroc(torch.cat([normal, anomalous]), labels),
                n_fit=int(scored["AE"].sum()),
                n_normal=len(normal),
                n_anomalous=len(anomalous),
            )
        )
    return rows


def _config_dict(config: ElkConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}
