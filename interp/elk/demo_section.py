"""The ELK section of ``statetap demo``: probes on a quirky zoo model's residual stream and state.

For each quirky model the section fits a few probes on Alice's prompts of training equations
and scores them on the held-out equations (:func:`.pipeline.elk_experiment`), with the residual
stream and the whole recurrent state of each layer (``"state"``: every component side by side)
as features. The report gives, per probe, the best layer's AUROC against the truth and against
Bob's labels on Bob's prompts, residual and state side by side, next to the model's own AUROCs
and the anomaly detector's, and beside each the **random-model control**: the same probes on
the same prompts and architecture with random weights (:func:`.pipeline.random_twin`), the
level a probe reaches from the prompt's tokens alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from statetap import zoo
from statetap.interp.elk.experiments import ElkConfig
from statetap.interp.elk.pipeline import FIGURE, elk_experiment, zoo_examples
from statetap.interp.elk.results import ElkResults

DEMO_CONFIG = ElkConfig(
    probes=("lr", "lr-on-pair", "mean-diff", "lda", "random"),
    sites=("residual", "state"),
    train_sets=("A", "AE"),
    max_iter=200,  # converged: AUROCs within 1e-3 of 500 iterations, in 40 % of the time
)
DEMO_FIT_EQUATIONS = 3000


@dataclass
class ElkReport:
    """What the ELK section found for one model (figure path relative to the report)."""

    model: str
    results: ElkResults
    figure: Path


def elk_quirky_model(
    name: str,
    model,
    tokenizer,
    recipe: zoo.Recipe,
    out: Path,
    config: ElkConfig = DEMO_CONFIG,
    fit_equations: int = DEMO_FIT_EQUATIONS,
) -> ElkReport:
    """Probe ``model`` (the zoo's quirky ``recipe``); results and figure under
    ``out / "elk" / name``."""
    alice, test, difficulty = zoo_examples(recipe, fit_equations)
    folder = out / "elk" / name
    results = elk_experiment(
        model,
        tokenizer,
        alice,
        test,
        folder,
        config=config,
        meta=dict(model=name),
        progress=False,
        difficulty=difficulty,
        resume=False,  # the demo replaces its report
    )
    return ElkReport(name, results, (folder / FIGURE).relative_to(out))


def markdown(reports: Sequence[ElkReport]) -> list[str]:
    """The section's lines for ``report.md``."""
    if not reports:
        return []
    first = reports[0].results.meta
    lines = [
        "## Eliciting latent knowledge",
        "",
        f"Probes fitted on Alice's prompts of {first['fit_examples']} training equations (her "
        "labels are the truth), scored on the held-out equations, which the model never saw. "
        "Features at the last prompt token: the residual stream and the layer's whole "
        "recurrent state (every component, flattened), per layer and all layers side by side "
        "(`all`). Cells: AUROC against the truth / against Bob's labels on Bob's prompts, at "
        "the best layer, and the fraction of the model's Alice-Bob AUROC gap the probe "
        "recovers. A probe that reports what the model knows scores high against the truth "
        "although the model's own answers follow Bob. `random`: the same probe, prompts and "
        "architecture with random weights (the random-model control), what a probe reads from "
        "the tokens of the prompt alone; only the margin over it is the trained model's.",
        "",
    ]
    for r in reports:
        model = {row["test"]: row for row in r.results.model}
        control = r.results.control_results
        twin = "" if control is None else _control_sentence(control)
        lines += [
            f"### {r.model}",
            "",
            f"The model's own log-odds: AUROC vs truth {model['A']['auroc_truth']:.3f} on "
            f"Alice's prompts, {model['B']['auroc_truth']:.3f} on Bob's (vs Bob's labels "
            f"{model['B']['auroc_bob']:.3f}).{twin}",
            "",
            "Trained on A, scored on B:",
            "",
            r.results.markdown("A", "B"),
            "",
            "Trained on Alice's easy prompts (AE), scored on Bob's hard ones (BH):",
            "",
            r.results.markdown("AE", "BH"),
            "",
        ]
        lines += [
            f"Anomaly detector (`{row['probe']}` credences at every layer, fitted on AE; AH "
            f"normal vs BH anomalous), {row['site']}: AUROC {row['auroc']:.3f}."
            for row in r.results.anomaly
        ]
        lines += ["", f"![{r.model}: AUROC by layer]({r.figure})", ""]
    return lines


def _control_sentence(control: ElkResults) -> str:
    """The random-weight model's own AUROCs, as a sentence for the report."""
    model = {row["test"]: row for row in control.model}
    return (
        f" The same architecture with random weights: {model['A']['auroc_truth']:.3f} on "
        f"Alice's prompts, {model['B']['auroc_truth']:.3f} on Bob's."
    )


def as_dicts(reports: Sequence[ElkReport]) -> list[dict]:
    """Rows for ``summary.json``: per model, probe and site, the best layer on A -> B, and the
    random-model control's best AUROC against the truth (None without a control)."""
    rows = []
    for r in reports:
        control = r.results.control_results
        for probe in r.results.probe_names:
            for site in r.results.sites:
                best = r.results.best(probe, site, "A", "B")
                twin = None if control is None else control.best(probe, site, "A", "B")
                rows.append(
                    dict(
                        model=r.model,
                        probe=probe,
                        site=site,
                        layer=best["layer"],
                        auroc_truth=best["auroc_truth"],
                        auroc_bob=best["auroc_bob"],
                        gap_recovered=best["gap_recovered"],
                        control_auroc_truth=None if twin is None else twin["auroc_truth"],
                    )
                )
    return rows
