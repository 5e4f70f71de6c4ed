"""Eliciting latent knowledge (ELK): linear probes on hidden states and their evaluation.

The probes of Paulo, Marshall and Belrose's ELK experiments (after Mallen et al.'s quirky
models): supervised logistic regression, difference of means with Platt scaling and Fisher's
LDA; unsupervised CCS and CRC-TPC on contrast pairs (CRC after LEACE erasure of the pair side);
and a random-direction baseline (:mod:`.probes`), all scored by exact rank AUROC
(:mod:`.metrics`). On top: features of quirky prompts, residual stream and recurrent state
(:mod:`.features`), the transfer experiments and the anomaly detector (:mod:`.experiments`,
:mod:`.anomaly`), results and figure (:mod:`.results`, :mod:`.plots`), the end-to-end pipeline
(:mod:`.pipeline`, ``statetap elk``, with the random-model control), quirky datasets in
EleutherAI's columns (:mod:`.dataset`) and LoRA quirky fine-tuning (:mod:`.quirky_lora`, which
imports peft). See docs/elk.md.

Example:
    >>> import torch
    >>> from statetap.interp.elk import LogisticProbe, auroc
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.rand(200, generator=g) < 0.5
    >>> features = torch.randn(200, 8, generator=g) + 3.0 * labels[:, None]
    >>> probe = LogisticProbe().fit(features[:100], labels[:100])
    >>> auroc(probe.score(features[100:]), labels[100:]) > 0.95
    True
"""

from statetap.interp.elk.anomaly import MahalanobisDetector
from statetap.interp.elk.dataset import QuirkyPrompt, load_quirky_dataset, quirky_prompts
from statetap.interp.elk.experiments import ElkConfig, run_experiments
from statetap.interp.elk.features import QuirkyFeatures, quirky_features
from statetap.interp.elk.metrics import auroc
from statetap.interp.elk.pipeline import elk_experiment, random_twin, zoo_elk
from statetap.interp.elk.probes import (
    CcsProbe,
    CrcProbe,
    LdaProbe,
    LogisticProbe,
    MeanDiffProbe,
    Probe,
    RandomProbe,
    fit_eraser,
)
from statetap.interp.elk.results import ElkResults

__all__ = [
    "CcsProbe",
    "CrcProbe",
    "ElkConfig",
    "ElkResults",
    "MahalanobisDetector",
    "QuirkyFeatures",
    "QuirkyPrompt",
    "LdaProbe",
    "LogisticProbe",
    "MeanDiffProbe",
    "Probe",
    "RandomProbe",
    "auroc",
    "elk_experiment",
    "fit_eraser",
    "load_quirky_dataset",
    "quirky_features",
    "quirky_prompts",
    "random_twin",
    "run_experiments",
    "zoo_elk",
]
