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

from statetap._lazy import lazy_names

# loaded on first use: the command line parses its arguments before torch or transformers loads
lazy_names(
    __name__,
    {
        "MahalanobisDetector": "statetap.interp.elk.anomaly",
        "QuirkyPrompt": "statetap.interp.elk.dataset",
        "load_quirky_dataset": "statetap.interp.elk.dataset",
        "quirky_prompts": "statetap.interp.elk.dataset",
        "ElkConfig": "statetap.interp.elk.experiments",
        "run_experiments": "statetap.interp.elk.experiments",
        "QuirkyFeatures": "statetap.interp.elk.features",
        "quirky_features": "statetap.interp.elk.features",
        "auroc": "statetap.interp.elk.metrics",
        "elk_experiment": "statetap.interp.elk.pipeline",
        "random_twin": "statetap.interp.elk.pipeline",
        "zoo_elk": "statetap.interp.elk.pipeline",
        "CcsProbe": "statetap.interp.elk.probes",
        "CrcProbe": "statetap.interp.elk.probes",
        "LdaProbe": "statetap.interp.elk.probes",
        "LogisticProbe": "statetap.interp.elk.probes",
        "MeanDiffProbe": "statetap.interp.elk.probes",
        "Probe": "statetap.interp.elk.probes",
        "RandomProbe": "statetap.interp.elk.probes",
        "fit_eraser": "statetap.interp.elk.probes",
        "ElkResults": "statetap.interp.elk.results",
    },
)

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
