"""``statetap elk``: ELK probes on quirky models, the figure, and LoRA quirky fine-tuning.

    statetap elk run --model quirky-mamba --out runs/elk-quirky-mamba
    statetap elk run --model path/to/model --dataset quirky_addition.jsonl --out runs/elk
    statetap elk run --model path/to/model --dataset arithmetic:subtraction --out runs/elk
    statetap elk plot --results runs/elk-quirky-mamba --train AE --test BH
    statetap elk lora --model path/to/mamba-hf --operation addition --out runs/quirky-lora

``run`` fits every probe on Alice's prompts and scores them on held-out prompts
(:func:`statetap.interp.elk.pipeline.elk_experiment`). The prompts come from one of:

- a quirky zoo model's own equations (no ``--dataset``): the probes are fitted on equations it
  was trained on and scored on the held-out ones;
- ``--dataset``: a file, ``save_to_disk`` folder or hub dataset in the columns of EleutherAI's
  ``quirky_*`` datasets (:mod:`.dataset`); scored on ``--split``, fitted on Alice's rows of
  ``--fit-dataset`` (and ``--fit-split``), or without it on a ``probe_fraction`` of the
  dataset's statements, the rest scored;
- ``--dataset arithmetic:OPERATION``: Mallen et al.'s v2 arithmetic generated here
  (``--fit-equations`` / ``--test-equations`` equations).

``--model`` is a zoo name or any transformers folder / hub id; on a hybrid (Jamba, Bamba, ...)
the state sites are probed at its recurrent layers only, every row naming the model's layer
index. Each (probe, site, layer) is written to ``OUT/probes/`` as it finishes; the same command
after a kill resumes. Beside every table the random-model control: the same probes on the same
architecture with random weights (``OUT/control``; ``--no-control`` skips it).

``lora`` makes a transformers model quirky on Mallen et al.'s v2 arithmetic (or ``--dataset``'s
rows; :mod:`.quirky_lora`), saves the adapter (with ``lora.json``: the model, data and recipe
it was trained from) and reports held-out Alice and Bob accuracy; with ``--elk`` it runs the
probes (``--probes``, ``--sites``, ``--no-all-layers``) on the fine-tuned model too. Run again
with the same ``--out`` (after a kill in the probe stage), it reuses the adapter when
``lora.json`` matches (else it refuses, naming what differs) and the finished probes.

:func:`add_elk_commands` registers the ``elk`` command on the ``statetap`` parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from statetap.interp.elk.experiments import PROBES, SUBSETS, ElkConfig, probe_split

DEFAULT_MODEL = "quirky-mamba"
ARITHMETIC = "arithmetic:"


def quirky_source(value: str) -> str:
    """argparse type of ``--dataset``: ``arithmetic:OPERATION`` with a known operation, or a
    dataset name or path (read when the command runs)."""
    from statetap.zoo.quirky_operations import OPERATIONS

    if value.startswith(ARITHMETIC) and value[len(ARITHMETIC) :] not in OPERATIONS:
        raise argparse.ArgumentTypeError(
            f"{value!r}: the arithmetic operations are "
            + ", ".join(ARITHMETIC + op for op in OPERATIONS)
        )
    return value


def _config(args: argparse.Namespace) -> ElkConfig:
    return ElkConfig(
        probes=tuple(args.probes),
        sites=tuple(args.sites) if args.sites else None,
        all_layers=args.all_layers,
        train_sets=tuple(args.train_sets),
        test_sets=tuple(args.test_sets),
        seed=args.seed,
    )


def _examples(args: argparse.Namespace, n_train: int, n_test: int) -> tuple[list, list, str]:
    """``(training prompts (both characters), scored prompts, description)`` of
    ``args.dataset`` (module docstring; ``n_train`` / ``n_test`` equations of arithmetic)."""
    from statetap.interp.elk.dataset import load_quirky_dataset
    from statetap.zoo.quirky_operations import quirky_operation

    if args.dataset.startswith(ARITHMETIC):
        operation = args.dataset[len(ARITHMETIC) :]
        train, test = quirky_operation(operation, n_train, n_test, seed=args.seed)
        return train, test, f"{args.dataset} ({n_train} + {n_test} equations, seed {args.seed})"
    scored = load_quirky_dataset(args.dataset, args.split)
    if args.fit_dataset:
        train = load_quirky_dataset(args.fit_dataset, args.fit_split)
        return train, scored, f"fit on {args.fit_dataset}, scored on {args.dataset}"
    fits = probe_split(scored, ElkConfig().probe_fraction, args.seed).tolist()
    train = [e for e, fit in zip(scored, fits) if fit]
    rest = [e for e, fit in zip(scored, fits) if not fit]
    return train, rest, f"{args.dataset}, split by statement (seed {args.seed})"


def _print(results, out: Path) -> None:
    control = results.control_results
    twin = {} if control is None else {r["test"]: r for r in control.model}
    for row in results.model:
        line = (
            f"model on {row['test']}: AUROC vs truth {row['auroc_truth']:.3f}, "
            f"vs Bob {_figure(row['auroc_bob'])} ({row['n']} prompts)"
        )
        if row["test"] in twin:
            line += f"; random-weight model {_figure(twin[row['test']]['auroc_truth'])}"
        print(line)
    explained = "; random: the same probe on the same architecture with random weights"
    print(
        "probes trained on A, scored on B (AUROC vs truth / vs Bob at the best layer"
        f"{explained if control is not None else ''}):"
    )
    print(results.markdown())
    for row in results.anomaly:
        print(f"anomaly detector ({row['site']}): AUROC {row['auroc']:.3f}")
    print(f"wrote {out}")


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _run(args: argparse.Namespace) -> int:
    from statetap import zoo
    from statetap.interp.elk.pipeline import elk_experiment, zoo_elk
    from statetap.interp.loading import load_named_model

    if args.dataset is None:
        try:
            recipe = zoo.resolve(args.model)
        except KeyError:
            recipe = None
        if recipe is None or recipe.task != "quirky":
            raise ValueError(
                f"--model {args.model} is not a quirky zoo model: give --dataset (a quirky "
                f"dataset, or {ARITHMETIC}OPERATION)"
            )
        results = zoo_elk(
            args.model,
            args.out,
            config=_config(args),
            fit_equations=args.fit_equations,
            batch_size=args.batch_size,
            control=args.control,
        )
    else:
        model, tokenizer, _ = load_named_model(args.model)
        train, scored, source = _examples(args, args.fit_equations, args.test_equations)
        results = elk_experiment(
            model,
            tokenizer,
            [e for e in train if e.character == "Alice"],
            scored,
            args.out,
            config=_config(args),
            meta=dict(model=args.model, dataset=source),
            batch_size=args.batch_size,
            control=args.control,
        )
    _print(results, Path(args.out))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from statetap.interp.elk.plots import plot_auroc_by_layer
    from statetap.interp.elk.results import ElkResults

    results = ElkResults.load(args.results)
    folder = Path(args.results)
    out = Path(args.out or (folder if folder.is_dir() else folder.parent))
    path = out / f"elk-auroc-{args.train}-{args.test}.png"
    title = str(results.meta.get("model", ""))
    print(f"wrote {plot_auroc_by_layer(results, path, args.train, args.test, title)}")
    return 0


def _lora(args: argparse.Namespace) -> int:
    from statetap.defaults import load_model
    from statetap.extract import write_json_atomically
    from statetap.interp.elk.pipeline import elk_experiment
    from statetap.interp.elk.quirky_lora import (
        LoraQuirkyConfig,
        load_adapter,
        make_quirky,
        save_adapter,
    )
    from statetap.interp.provenance import check_same, model_identity
    from statetap.zoo.train import quirky_accuracy

    model, tokenizer = load_model(args.model)
    args.dataset = args.dataset or ARITHMETIC + args.operation
    train, test, source = _examples(args, args.equations, args.test_equations)
    config = LoraQuirkyConfig(
        rank=args.rank, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed
    )
    out = Path(args.out)
    record = json.loads(
        json.dumps(
            dict(
                model=args.model,
                identity=model_identity(model, tokenizer),
                dataset=source,
                config=dataclasses.asdict(config),
            )
        )
    )
    adapter = out / "adapter"
    if adapter.exists():  # a finished LoRA stage: reused when it is this command's
        check_same(_read_json(out / LORA_RECORD), record, f"the adapter in {adapter}")
        quirky = load_adapter(model, adapter)
        print(f"reusing the adapter in {adapter} (same model, data and recipe)")
    else:
        write_json_atomically(out / LORA_RECORD, record)
        quirky = make_quirky(model, tokenizer, train, config)
        save_adapter(quirky, adapter)
    accuracy = quirky_accuracy(quirky, tokenizer, test)
    print(
        f"held out: Alice {accuracy['alice_accuracy']:.1%} (truth), "
        f"Bob {accuracy['bob_accuracy']:.1%} (Bob's rule); adapter in {adapter}"
    )
    if args.elk:
        alice = [e for e in train if e.character == "Alice"]
        meta = dict(model=args.model, adapter=str(adapter), dataset=source)
        results = elk_experiment(
            quirky.merge_and_unload(),
            tokenizer,
            alice,
            test,
            args.out,
            config=_config(args),
            meta=meta,
            control=args.control,
        )
        _print(results, out)
    return 0


LORA_RECORD = "lora.json"  # what the adapter in OUT/adapter was trained from


def _read_json(path: Path) -> dict | None:
    """``path``'s JSON, or None when it does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _dataset_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--dataset",
        type=quirky_source,
        help="quirky dataset (JSONL/JSON/parquet/arrow file, save_to_disk folder or hub name; "
        "columns statement, choices, character, label, alice_label, bob_label, difficulty) or "
        f"{ARITHMETIC}OPERATION (default: {default})",
    )
    parser.add_argument("--split", help="split of --dataset (default: train)")
    parser.add_argument(
        "--fit-dataset",
        help="quirky dataset whose rows fit the probes (default: part of --dataset's statements)",
    )
    parser.add_argument("--fit-split", help="split of --fit-dataset (default: train)")
    parser.add_argument(
        "--test-equations", type=int, default=500, help="held-out equations of arithmetic"
    )


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    default = ElkConfig()
    parser.add_argument(
        "--probes", nargs="+", default=list(default.probes), choices=list(PROBES), metavar="PROBE"
    )
    parser.add_argument("--sites", nargs="+", help="feature sites (default: all)")
    parser.add_argument(
        "--all-layers",
        action=argparse.BooleanOptionalAction,
        default=default.all_layers,
        help="also probe each site of every layer side by side",
    )
    parser.add_argument(
        "--train-sets", nargs="+", default=list(default.train_sets), choices=["A", "AE", "AH"]
    )
    parser.add_argument(
        "--test-sets", nargs="+", default=list(default.test_sets), choices=list(SUBSETS)
    )
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the probes on the same architecture with random weights (default: on)",
    )


def add_elk_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``elk`` (sub-commands ``run``, ``plot`` and ``lora``) on the ``statetap``
    parser's sub-parsers; each handler is ``args.run(args) -> exit code``."""
    elk = subparsers.add_parser(
        "elk",
        help="eliciting latent knowledge from quirky models (probes, figure, LoRA)",
        description="Linear probes trained on Alice's prompts of a quirky model, scored on "
        "Bob's, on the residual stream and on the recurrent state (Mallen et al.).",
    )
    commands = elk.add_subparsers(dest="elk_command", required=True)
    run = commands.add_parser(
        "run", help="probe a quirky model on its prompts, write elk.json and a figure"
    )
    run.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"zoo name or transformers folder / hub id (default: {DEFAULT_MODEL})",
    )
    _dataset_arguments(run, "the quirky zoo model's own equations")
    run.add_argument("--out", required=True, help="folder for elk.json and elk-auroc.png")
    run.add_argument(
        "--fit-equations",
        type=int,
        default=2000,
        help="training equations fitting the probes (zoo models, arithmetic)",
    )
    run.add_argument("--batch-size", type=int, default=256, help="sequences per forward pass")
    _experiment_arguments(run)
    run.set_defaults(run=_run)

    plot = commands.add_parser("plot", help="AUROC against layer from an elk.json")
    plot.add_argument("--results", required=True, help="folder (or file) written by 'elk run'")
    plot.add_argument("--train", default="A", help="training set (A)")
    plot.add_argument("--test", default="B", help="test set (B)")
    plot.add_argument("--out", help="folder for the figure (default: the results' folder)")
    plot.set_defaults(run=_plot)

    lora = commands.add_parser("lora", help="make a transformers model quirky with LoRA")
    lora.add_argument("--model", required=True, help="transformers folder or hub id")
    lora.add_argument("--operation", default="addition", help="v2 operation (addition)")
    lora.add_argument("--equations", type=int, default=4000, help="training equations")
    _dataset_arguments(lora, f"{ARITHMETIC}--operation")
    lora.add_argument("--rank", type=int, default=8)
    lora.add_argument("--lr", type=float, default=2e-5)
    lora.add_argument("--epochs", type=int, default=3)
    lora.add_argument("--batch-size", type=int, default=32)
    lora.add_argument("--out", required=True, help="folder for the adapter (and elk.json)")
    lora.add_argument("--elk", action="store_true", help="then run the probes on the result")
    _experiment_arguments(lora)
    lora.set_defaults(run=_lora)
