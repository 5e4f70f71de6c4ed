"""The patching section of ``statetap demo``: where a quirky zoo model carries the operand and
decides by Bob's rule.

For each quirky model the section runs, on held-out equations of the most common digit
pattern (:mod:`.tasks`):

* activation patching of the ``operand`` task (clean: a prompt its character answers True;
  corrupted: the first operand's last digit changed so both rules say False), every site;
* causal tracing of the ``character`` task (Bob's prompt, the ``Bob`` token noised; restored
  residual stream and whole state), the indirect effect on Bob's answer.

It reports, per (task, site), where the mean effect peaks, and writes ``patching.json`` and a
heatmap per site under ``patching/<model>/<task>/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import statetap
from statetap import zoo
from statetap.interp.patching.activation import activation_patching
from statetap.interp.patching.plots import plot_all
from statetap.interp.patching.result import PatchingResult
from statetap.interp.patching.tasks import quirky_task_rows, tokenize_pairs
from statetap.interp.patching.tracing import causal_trace

DEMO_PAIRS = 16
TRACE_SAMPLES = 5


@dataclass
class PatchingReport:
    """One task on one model: the mean metrics, each site's peak and the heatmaps (paths
    relative to the report folder)."""

    model: str
    task: str
    method: str
    pairs: int
    clean: float
    corrupt: float
    peaks: list[dict] = field(default_factory=list)  # site, layer, position, token, effect
    figures: list[str] = field(default_factory=list)


def patch_quirky_model(
    name: str, model, tokenizer, recipe: zoo.Recipe, out: Path, pairs: int = DEMO_PAIRS
) -> list[PatchingReport]:
    """Both tasks on ``model`` (the zoo's quirky ``recipe``), written under
    ``out / "patching" / name``; one :class:`PatchingReport` per task."""
    tap = statetap.attach(model)
    _, test = zoo.quirky_split(recipe)
    reports = []
    for task in ("operand", "character"):
        rows, patterns = quirky_task_rows(task, test)
        prompts = tokenize_pairs(rows, tokenizer, pairs, groups=patterns)
        if task == "operand":
            result = activation_patching(
                tap, prompts.clean, prompts.corrupt, (prompts.answer, prompts.wrong)
            )
        else:
            result = causal_trace(
                tap, prompts.clean, prompts.subject, prompts.answer, samples=TRACE_SAMPLES
            )
        result.tokens = prompts.tokens
        folder = out / "patching" / name / task
        result.save(folder)
        figures = plot_all(result, folder, title=f"{name}, {task}")
        reports.append(_report(name, task, result, [p.relative_to(out) for p in figures]))
    return reports


def _report(name: str, task: str, result: PatchingResult, figures: list[Path]) -> PatchingReport:
    peaks = []
    for site in result.sites:
        layer, position, effect = result.peak(site)
        token = result.tokens[0][position]
        peaks.append(dict(site=site, layer=layer, position=position, token=token, effect=effect))
    return PatchingReport(
        model=name,
        task=task,
        method=result.method,
        pairs=int(result.clean.shape[0]),
        clean=float(result.clean.mean()),
        corrupt=float(result.corrupt.mean()),
        peaks=peaks,
        figures=[str(path) for path in figures],
    )


def markdown(reports: list[PatchingReport]) -> list[str]:
    """The section's lines for ``report.md``."""
    if not reports:
        return []
    lines = [
        "## Activation patching and causal tracing",
        "",
        "`operand`: activation patching, clean = a held-out prompt its character answers True, "
        "corrupted = the first operand's last digit changed so that both rules say False; the "
        "effect is the fraction of the logit difference (True - False) recovered. `character`: "
        "causal tracing of Bob's prompts on equations where Alice and Bob disagree, the `Bob` "
        f"token's embedding noised (3 x the embedding std, {TRACE_SAMPLES} samples), the effect "
        "is the indirect effect on p(Bob's answer). Peak = the (layer, position) of the "
        "largest mean effect over the pairs (`statetap patch` runs the same).",
        "",
        "| model | task | pairs | clean | corrupted | site | peak layer | peak position | effect |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for report in reports:
        for peak in report.peaks:
            lines.append(
                f"| {report.model} | {report.task} | {report.pairs} | {report.clean:.3f} "
                f"| {report.corrupt:.3f} | {peak['site']} | {peak['layer']} "
                f"| {peak['position']} (`{peak['token'].strip() or repr(peak['token'])}`) "
                f"| {peak['effect']:+.3f} |"
            )
    lines.append("")
    for report in reports:
        lines += [f"![{report.model} {report.task}: {Path(f).stem}]({f})" for f in report.figures]
    return lines + [""]


def as_dicts(reports: list[PatchingReport]) -> list[dict]:
    """Reports for ``summary.json``."""
    return [asdict(report) for report in reports]
