"""``statetap demo``: the main job end to end on the zoo's models, written up as a report.

For each zoo model (trained on first use, then loaded from the cache) the demo

1. reports what the model learnt (held-out accuracy of the quirky models, bits per byte of the
   text model: the figures the zoo measured when it trained them);
2. extracts the residual stream and the recurrent state of every layer at the last token of
   held-out texts to safetensors shards (``statetap extract``'s code path);
3. measures what instrumentation costs on the current device: the plain forward against
   ``Tap.run`` with typical requests, side by side (:mod:`statetap.cost`);
4. steers the quirky models' Alice prompts with the Bob vector in residual, state and both
   modes (:mod:`statetap.interp.steering.demo_section`);
5. trains a tuned lens on each text model and compares it with the logit lens on held-out
   text (:mod:`statetap.interp.lens.demo_section`);
6. fits ELK probes on the quirky models' Alice prompts, residual stream and recurrent state
   side by side, and scores them on Bob's (:mod:`statetap.interp.elk.demo_section`);
7. patches the quirky models' operand and traces where Bob's rule is decided, over layers and
   positions (:mod:`statetap.interp.patching.demo_section`).

It writes ``report.md``, ``quality.png``, ``cost.png``, ``steering-modes.png`` (with one
``steering-<model>.png`` per quirky model), ``lens-<model>.png`` and
``lens-trajectory-<model>.png`` per text model (the lens under ``lens/<model>/``),
``elk/<model>/`` (``elk.json``, ``elk-auroc.png``) and ``patching/<model>/<task>/``
(``patching.json``, a heatmap per site) per quirky model and ``summary.json`` into
the output folder (the shards under ``extraction/<model>/``) and returns a summary table for
stdout.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from statetap import zoo
from statetap.cost import CostRow, format_cost_table, instrumentation_cost
from statetap.extract import ExtractConfig, extract, write_atomically
from statetap.interp.elk import demo_section as elk_demo
from statetap.interp.lens import demo_section as lens_demo
from statetap.interp.lens.data import zoo_corpus
from statetap.interp.patching import demo_section as patching_demo
from statetap.interp.steering import demo_section
from statetap.zoo import corpus
from statetap.zoo.prepare import as_trained

DEFAULT_MODELS = (
    "quirky-mamba",
    "quirky-rwkv4",
    "quirky-rwkv7",
    "text-mamba",
    "text-rwkv4",
    "text-rwkv7",
)
COST_TOKENS = 128  # the cost batch's rows are cut to this many tokens
REPORT_FILES = ("report.md", "quality.png", "cost.png", "steering-modes.png", "summary.json")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        out: the report folder (created; an earlier report there is replaced file by file).
        models: zoo model names.
        short: use the zoo's short recipes (tiny models, seconds of training: for tests).
        texts: held-out texts per model for the extraction.
        cost_batch: rows of the batch the instrumentation cost is measured on.
        repeats: timed repeats per variant (medians are reported).
        device: torch device (default: cuda if available, else cpu).
        processes: processes training the models missing from the cache (default: one per
            CPU core, see :func:`statetap.zoo.prepare.prepare`).
    """

    out: Path
    models: tuple[str, ...] = DEFAULT_MODELS
    short: bool = False
    texts: int = 256
    cost_batch: int = 16
    repeats: int = 21
    device: str | None = None
    processes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        unknown = [name for name in self.models if name not in zoo.RECIPES]
        if not self.models or unknown:
            raise ValueError(
                f"models must name zoo models ({', '.join(zoo.RECIPES)}), got {list(self.models)}"
            )
        for name in ("texts", "cost_batch", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class ModelReport:
    """What the demo found for one model."""

    name: str
    architecture: str
    task: str
    parameters: int
    metrics: dict
    load_seconds: float
    extraction: dict = field(default_factory=dict)
    cost: list[CostRow] = field(default_factory=list)
    steering: list[demo_section.SteeringRow] = field(default_factory=list)
    lens: lens_demo.LensReport | None = None
    elk: elk_demo.ElkReport | None = None
    patching: list[patching_demo.PatchingReport] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each section


@contextlib.contextmanager
def _timed(report: ModelReport, section: str) -> Iterator[None]:
    """Record the wall time of the ``with`` body as ``report.seconds[section]``."""
    start = time.perf_counter()
    yield
    report.seconds[section] = round(time.perf_counter() - start, 2)


def run_demo(config: DemoConfig) -> list[ModelReport]:
    """Run every section on every model of ``config`` and write the report folder.

    The models missing from the cache train in parallel processes
    (:func:`statetap.zoo.prepare.as_trained`); each model's sections run as soon as it is
    ready, except the instrumentation cost, which is timed at the end, when no training shares
    the machine.
    """
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config.out.mkdir(parents=True, exist_ok=True)
    recipes = {
        name: zoo.short(zoo.RECIPES[name]) if config.short else zoo.RECIPES[name]
        for name in config.models
    }
    names = {recipe.name: name for name, recipe in recipes.items()}
    ready = {}
    for recipe in as_trained(list(recipes.values()), processes=config.processes):
        name = names[recipe.name]
        ready[name] = _sections(name, recipe, config, device)
    reports = []
    for name in config.models:
        report, model, ids, mask = ready[name]
        with _timed(report, "cost"):
            report.cost = instrumentation_cost(model, ids, mask, repeats=config.repeats)
        reports.append(report)
    write_report(config.out, reports, device)
    return reports


def _sections(name: str, recipe: zoo.Recipe, config: DemoConfig, device: torch.device):
    """Every section but the cost on one model: ``(report, model, ids, mask)``, the last three
    for the cost measurement."""
    start = time.perf_counter()
    model, tokenizer = zoo.load(recipe)
    load_seconds = time.perf_counter() - start
    model.to(device).eval()
    texts = held_out_texts(recipe, config.texts)
    report = ModelReport(
        name=name,
        architecture=type(model).__name__,
        task=recipe.task,
        parameters=sum(p.numel() for p in model.parameters()),
        metrics=zoo.metrics(recipe),
        load_seconds=load_seconds,
    )
    with _timed(report, "extraction"):
        report.extraction = _extraction(model, tokenizer, texts, config.out / "extraction" / name)
    if recipe.task == "quirky":
        with _timed(report, "steering"):
            report.steering = demo_section.steer_quirky_model(
                name, model, tokenizer, recipe, config.out
            )
        with _timed(report, "elk"):
            report.elk = elk_demo.elk_quirky_model(name, model, tokenizer, recipe, config.out)
        with _timed(report, "patching"):
            report.patching = patching_demo.patch_quirky_model(
                name, model, tokenizer, recipe, config.out
            )
    else:
        with _timed(report, "lens"):
            train_stream, eval_stream, bytes_per_token = zoo_corpus(recipe)
            report.lens = lens_demo.lens_section(
                name,
                model,
                tokenizer,
                train_stream,
                eval_stream,
                config.out,
                bytes_per_token=bytes_per_token,
            )
    ids, mask = _batch(tokenizer, texts[: config.cost_batch], device)
    return report, model, ids, mask


def held_out_texts(recipe: zoo.Recipe, n: int) -> list[str]:
    """Up to ``n`` texts the recipe's model never trained on: held-out quirky prompts, or
    paragraphs of the held-out documents of the text corpus."""
    if recipe.task == "quirky":
        _, test = zoo.quirky_split(recipe)
        return [example.text for example in test[:n]]
    _, documents = corpus.split(corpus.documents(recipe.stdlib_files), recipe.held_out, recipe.seed)
    paragraphs = (p.strip() for doc in documents for p in doc.split("\n\n"))
    return [p for p in paragraphs if len(p) > 40][:n]


def _extraction(model, tokenizer, texts: list[str], out: Path) -> dict:
    """Residual stream and every state component of every layer at the last token."""
    if out.exists():  # a previous demo's shards: this run writes its own
        for path in out.iterdir():
            path.unlink()
    start = time.perf_counter()
    manifest = extract(
        model,
        tokenizer,
        texts,
        ExtractConfig(out=out, sites=["residual", "state"], positions=[-1], batch_size=32),
        model_name=getattr(tokenizer, "name_or_path", "") or type(model).__name__,
    )
    seconds = time.perf_counter() - start
    return {
        "folder": str(out),
        "texts": len(texts),
        "shards": len(manifest.shards),
        "tensors": sorted(
            f"{site}.{layer}" for site in manifest.sites for layer in manifest.layers
        ),
        "seconds": seconds,
        "texts_per_second": len(texts) / seconds,
    }


def _batch(tokenizer, texts: list[str], device: torch.device, max_length: int = COST_TOKENS):
    """The cost measurement's batch: ``texts`` right-padded, each cut to ``max_length`` tokens."""
    tokenizer.padding_side = "right"  # causal models: padding after the text touches nothing
    encoded = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        add_special_tokens=False,
        return_tensors="pt",
    )
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


# ---------------------------------------------------------------------- the report
def summary_table(reports: list[ModelReport]) -> str:
    """One line per model: quality, extraction throughput, instrumentation cost."""
    header = (
        f"{'model':<14} {'class':<18} {'params':>8}  {'quality':<26} {'extract/s':>9} "
        f"{'plain ms':>9} {'nothing':>8} {'emit res':>8} {'emit st':>8} {'inject':>7}"
    )
    lines = [header]
    for r in reports:
        ratio = {row.variant: row.ratio for row in r.cost}
        plain = next(row.ms for row in r.cost if row.variant == "plain")
        lines.append(
            f"{r.name:<14} {r.architecture:<18} {r.parameters:>8}  {_quality(r):<26} "
            f"{r.extraction['texts_per_second']:>9.1f} {plain:>9.2f} "
            f"{ratio['nothing']:>7.2f}x {ratio['emit residual']:>7.2f}x "
            f"{ratio['emit state']:>7.2f}x {ratio['inject']:>6.2f}x"
        )
    return "\n".join(lines)


def _quality(report: ModelReport) -> str:
    metrics = report.metrics
    if report.task == "quirky":
        return f"Alice {metrics['alice_accuracy']:.1%}, Bob {metrics['bob_accuracy']:.1%}"
    return f"{metrics['bits_per_byte']:.3f} bits/byte"


def write_report(out: Path, reports: list[ModelReport], device: torch.device) -> None:
    """``report.md``, the two plots and ``summary.json`` in ``out``, each written atomically."""
    _plot_quality(out / "quality.png", reports)
    _plot_cost(out / "cost.png", reports)
    steering = [row for r in reports for row in r.steering]
    if steering:
        demo_section.plot_shifts(steering, out / "steering-modes.png")
    lenses = [r.lens for r in reports if r.lens is not None]
    elk = [r.elk for r in reports if r.elk is not None]
    summary = {
        "device": _device_name(device),
        "models": [asdict(r, dict_factory=_without_sections) for r in reports],
        "steering": demo_section.as_dicts(steering),
        "lens": lens_demo.as_dicts(lenses),
        "elk": elk_demo.as_dicts(elk),
        "patching": patching_demo.as_dicts([p for r in reports for p in r.patching]),
    }
    write_atomically(
        out / "summary.json",
        lambda path: Path(path).write_text(json.dumps(summary, indent=2), encoding="utf-8"),
    )
    write_atomically(
        out / "report.md",
        lambda path: Path(path).write_text(
            _markdown(reports, steering, lenses, elk, device), encoding="utf-8"
        ),
    )


def _without_sections(items: list[tuple[str, object]]) -> dict:
    """``asdict`` of a :class:`ModelReport` without the steering, lens, ELK and patching
    sections, which ``summary.json`` lists on their own."""
    sections = ("steering", "lens", "elk", "patching")
    return {key: value for key, value in items if key not in sections}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _markdown(
    reports: list[ModelReport],
    steering: list[demo_section.SteeringRow],
    lenses: list[lens_demo.LensReport],
    elk: list[elk_demo.ElkReport],
    device: torch.device,
) -> str:
    lines = [
        "# statetap demo",
        "",
        f"Device: {_device_name(device)}. Models from `statetap.zoo`, trained on first use.",
        "",
        "## Models",
        "",
        "| model | class | parameters | task | held-out quality | load (s) | sections (s) |",
        "| --- | --- | ---: | --- | --- | ---: | --- |",
    ]
    for r in reports:
        sections = ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items())
        lines.append(
            f"| {r.name} | {r.architecture} | {r.parameters} | {r.task} | {_quality(r)} "
            f"| {r.load_seconds:.1f} | {sections} |"
        )
    lines += ["", "![held-out quality](quality.png)", "", "## Extraction", ""]
    lines += [
        "The residual stream and every recurrent-state component of every layer at the last "
        "token of each held-out text, as `statetap extract` writes them (safetensors shards "
        "and a JSON manifest).",
        "",
        "| model | texts | shards | tensors | seconds | texts/s |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in reports:
        e = r.extraction
        lines.append(
            f"| {r.name} | {e['texts']} | {e['shards']} | {len(e['tensors'])} "
            f"(`{e['folder']}`) | {e['seconds']:.2f} | {e['texts_per_second']:.1f} |"
        )
    lines += ["", "## What instrumentation costs", ""]
    lines += [
        "Median wall time of one forward pass over the same batch (held-out texts, each cut "
        f"to {COST_TOKENS} tokens), the variants interleaved "
        "(`statetap.cost`). On a CPU statetap runs its C++ kernels (`statetap._C`) where they "
        "are built, else its torch reference paths; these are not Triton kernel timings.",
        "",
    ]
    for r in reports:
        lines += [f"### {r.name}", "", "```", format_cost_table(r.cost), "```", ""]
    lines += ["![instrumentation cost](cost.png)", ""]
    if steering:
        lines += demo_section.markdown(steering)
    lines += lens_demo.markdown(lenses)
    lines += elk_demo.markdown(elk)
    lines += patching_demo.markdown([p for r in reports for p in r.patching])
    return "\n".join(lines)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> None:
    figure.tight_layout()
    write_atomically(path, lambda target: figure.savefig(target, format="png", dpi=120))
    plt.close(figure)


def _plot_quality(path: Path, reports: list[ModelReport]) -> None:
    plt = _figure()
    quirky = [r for r in reports if r.task == "quirky"]
    text = [r for r in reports if r.task != "quirky"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.38
    for offset, (key, label) in enumerate(
        (("alice_accuracy", "Alice vs truth"), ("bob_accuracy", "Bob vs Bob's rule"))
    ):
        axes[0].bar(
            [i + (offset - 0.5) * width for i in range(len(quirky))],
            [r.metrics[key] for r in quirky],
            width,
            label=label,
        )
    axes[0].set_xticks(range(len(quirky)), [r.name for r in quirky])
    axes[0].axhline(0.95, color="gray", linestyle="--", linewidth=1)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(loc="lower right")
    axes[1].bar(range(len(text)), [r.metrics["bits_per_byte"] for r in text])
    axes[1].set_xticks(range(len(text)), [r.name for r in text])
    axes[1].set_ylabel("held-out bits per byte")
    _save(plt, figure, path)


def _plot_cost(path: Path, reports: list[ModelReport]) -> None:
    plt = _figure()
    variants = [row.variant for row in reports[0].cost]
    figure, axis = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(reports)
    for i, r in enumerate(reports):
        axis.bar(
            [v + (i - (len(reports) - 1) / 2) * width for v in range(len(variants))],
            [row.ratio for row in r.cost],
            width,
            label=r.name,
        )
    axis.set_xticks(range(len(variants)), variants, rotation=15)
    axis.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    axis.set_ylabel("time / plain forward")
    axis.legend()
    _save(plt, figure, path)
