"""``statetap elk``: ELK probes on quirky models, the figure, and LoRA quirky fine-tuning.

    statetap elk run --model quirky-mamba --out runs/elk-quirky-mamba
    statetap elk plot --results runs/elk-quirky-mamba --train AE --test BH
    statetap elk lora --model path/to/mamba-hf --operation addition --out runs/quirky-lora

``run`` fits every probe on Alice's prompts of a quirky zoo model's training equations and scores
them on its held-out equations (:func:`statetap.interp.elk.pipeline.zoo_elk`); ``lora`` makes a
transformers model quirky on Mallen et al.'s v2 arithmetic (:mod:`.quirky_lora`), saves the
adapter and reports held-out Alice and Bob accuracy; with ``--elk`` it runs the probes on the
fine-tuned model too.

:func:`add_elk_commands` registers the ``elk`` command on the ``statetap`` parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from statetap.interp.elk.experiments import PROBES, SUBSETS, ElkConfig

DEFAULT_MODEL = "quirky-mamba"


def _config(args: argparse.Namespace) -> ElkConfig:
    return ElkConfig(
        probes=tuple(args.probes),
        sites=tuple(args.sites) if args.sites else None,
        all_layers=args.all_layers,
        train_sets=tuple(args.train_sets),
        test_sets=tuple(args.test_sets),
        seed=args.seed,
    )


def _print(results, out: Path) -> None:
    model = {r["test"]: r for r in results.model}
    for test, row in model.items():
        print(
            f"model on {test}: AUROC vs truth {row['auroc_truth']:.3f}, "
            f"vs Bob {row['auroc_bob']:.3f} ({row['n']} prompts)"
        )
    print("probes trained on A, scored on B (AUROC vs truth / vs Bob at the best layer):")
    print(results.markdown())
    for row in results.anomaly:
        print(f"anomaly detector ({row['site']}): AUROC {row['auroc']:.3f}")
    print(f"wrote {out}")


def _run(args: argparse.Namespace) -> int:
    from statetap.interp.elk.pipeline import zoo_elk

    results = zoo_elk(
        args.model,
        args.out,
        config=_config(args),
        fit_equations=args.fit_equations,
        batch_size=args.batch_size,
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
    from statetap.interp.elk.pipeline import elk_experiment
    from statetap.interp.elk.quirky_lora import LoraQuirkyConfig, make_quirky, save_adapter
    from statetap.zoo.quirky_operations import quirky_operation
    from statetap.zoo.train import quirky_accuracy

    model, tokenizer = load_model(args.model)
    train, test = quirky_operation(
        args.operation, args.equations, args.test_equations, seed=args.seed
    )
    config = LoraQuirkyConfig(
        rank=args.rank, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed
    )
    quirky = make_quirky(model, tokenizer, train, config)
    adapter = save_adapter(quirky, Path(args.out) / "adapter")
    accuracy = quirky_accuracy(quirky, tokenizer, test)
    print(
        f"held out: Alice {accuracy['alice_accuracy']:.1%} (truth), "
        f"Bob {accuracy['bob_accuracy']:.1%} (Bob's rule); adapter in {adapter}"
    )
    if args.elk:
        alice = [e for e in train if e.character == "Alice"]
        meta = dict(model=args.model, adapter=str(adapter), operation=args.operation)
        results = elk_experiment(
            quirky.merge_and_unload(), tokenizer, alice, test, args.out, meta=meta
        )
        _print(results, Path(args.out))
    return 0


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
    run = commands.add_parser("run", help="probe a quirky zoo model, write elk.json and a figure")
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"quirky zoo model ({DEFAULT_MODEL})")
    run.add_argument("--out", required=True, help="folder for elk.json and elk-auroc.png")
    run.add_argument(
        "--fit-equations", type=int, default=2000, help="training equations fitting the probes"
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
    lora.add_argument("--test-equations", type=int, default=500, help="held-out equations")
    lora.add_argument("--rank", type=int, default=8)
    lora.add_argument("--lr", type=float, default=2e-5)
    lora.add_argument("--epochs", type=int, default=3)
    lora.add_argument("--batch-size", type=int, default=32)
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--out", required=True, help="folder for the adapter (and elk.json)")
    lora.add_argument("--elk", action="store_true", help="then run the probes on the result")
    lora.set_defaults(run=_lora)
