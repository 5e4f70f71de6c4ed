"""``statetap lens``: train, evaluate and plot the tuned lens of a model.

    statetap lens train --model text-mamba --recipe zoo --out runs/lens-text-mamba
    statetap lens eval --lens runs/lens-text-mamba
    statetap lens plot --lens runs/lens-text-mamba

Every field of :class:`~statetap.interp.lens.config.TrainConfig` is a flag of ``train``
(``--steps``, ``--tokens-per-step``, ``--lr`` ...), on top of the ``--recipe`` preset
(``paper``: Belrose et al.'s defaults; ``zoo``: scaled to the zoo's models; ``demo``).
``--model`` is a zoo model name (trained on first use) or a transformers folder / hub id;
without ``--text-file`` the data is the zoo's text corpus (training documents for ``train``,
held-out documents for ``eval``). Data parallel training on several devices:

    torchrun --nproc_per_node 8 -m statetap.cli lens train --model ... --out ...

:func:`add_lens_commands` registers the ``lens`` command on the ``statetap`` parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from statetap.interp.lens.config import PRESETS, TrainConfig

# the modules that load transformers, datasets and matplotlib are imported by the commands that
# use them, after the arguments are checked

DEFAULT_MODEL = "text-mamba"
DEFAULT_PROMPT = "Return the number of items in a container."
EVALUATION = "evaluation.json"


# files that hold rows of a dataset, not one text: --dataset reads them
DATASET_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


def text_file(value: str) -> str:
    """argparse type of ``--text-file``: refuses a dataset file (pass it as ``--dataset``)."""
    if Path(value).suffix.lower() in DATASET_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{value} is a dataset file, not one text: pass it as --dataset (with --text-field)"
        )
    return value


def _require_corpus(args: argparse.Namespace, name: str) -> None:
    """Without ``--text-file`` or ``--dataset`` only a zoo text model has a corpus (the zoo's):
    raise ValueError for any other model before it loads."""
    from statetap import zoo

    if args.text_file or args.dataset:
        return
    try:
        recipe = zoo.resolve(name)
    except KeyError:
        recipe = None
    if recipe is None or recipe.task != "text":
        raise ValueError(
            f"{name} is not a zoo text model: give its corpus as --text-file (one text) or "
            "--dataset (with --text-field)"
        )


def _data(args: argparse.Namespace, tokenizer, recipe, held_out: bool):
    """The token stream, its bytes per token (None for the zoo's training split) and a
    description: ``--text-file`` (one document), ``--dataset`` (every row's ``--text-field``,
    read by ``datasets``), or the zoo corpus split of a zoo text model (:func:`_require_corpus`).
    """
    from statetap.extract import dataset_source
    from statetap.interp.lens.data import token_stream, zoo_corpus

    if args.text_file:
        text = Path(args.text_file).read_text(encoding="utf-8")
        first = next((line for line in text.splitlines() if line.strip()), "")
        if first.lstrip().startswith("{") and _is_json_object(first):
            raise ValueError(
                f"--text-file {args.text_file} holds JSON rows: pass it as --dataset (with "
                "--text-field)"
            )
        return (*token_stream(tokenizer, [text]), str(args.text_file))
    if args.dataset:
        source = dataset_source(args.dataset, args.split, args.text_field)
        stream, bytes_per_token = token_stream(tokenizer, list(source.open()))
        description = f"{args.dataset} ({args.split or 'train'} split, field {args.text_field})"
        return stream, bytes_per_token, description
    train_stream, held_out_stream, bytes_per_token = zoo_corpus(recipe, None)
    split = "held-out" if held_out else "training"
    source = f"zoo text corpus ({recipe.name}), {split} documents"
    return (held_out_stream, bytes_per_token, source) if held_out else (train_stream, None, source)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _device(requested: str | None) -> torch.device:
    """The device, joining the ``torchrun`` process group first when there is one (NCCL on
    CUDA, gloo on the CPU)."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _config(args: argparse.Namespace) -> TrainConfig:
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(PRESETS[args.recipe], **changes)


def _train(args: argparse.Namespace) -> int:
    from statetap.interp.lens.lens import TunedLens
    from statetap.interp.lens.train import estimate_seconds, rank_and_world, train
    from statetap.interp.loading import load_named_model
    from statetap.interp.provenance import model_identity

    config = _config(args)
    _require_corpus(args, args.model)
    device = _device(args.device)
    model, tokenizer, recipe = load_named_model(args.model)
    model.to(device)
    stream, _, source = _data(args, tokenizer, recipe, held_out=False)
    lens = TunedLens(
        model,
        meta=dict(
            model=args.model,
            identity=model_identity(model, tokenizer),
            data=source,
            recipe=args.recipe,
        ),
    )
    rank, _ = rank_and_world()
    if rank == 0:
        tokens = config.steps * config.tokens_per_step
        seconds = estimate_seconds(lens, stream, config)
        print(
            f"recipe {args.recipe}: {config.steps} steps x {config.tokens_per_step:,} tokens = "
            f"{tokens:,} tokens ({tokens / len(stream):.1f} passes over {len(stream):,} tokens "
            f"of {source}); estimated {_duration(seconds)} on {device} (one timed pass)",
            flush=True,
        )
    losses = train(lens, stream, config)
    if rank == 0:
        lens.save(args.out)
        print(
            f"trained {len(lens.translators)} translator(s) of {args.model} for {config.steps} "
            f"steps of {config.tokens_per_step} tokens (KL {losses[0]:.4f} -> {losses[-1]:.4f} "
            f"nats); wrote {args.out}"
        )
    if dist.is_initialized():
        # every rank leaves together: a rank tearing gloo down while another is still saving
        # aborted the other (SIGABRT, seen under load)
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _duration(seconds: float) -> str:
    """``seconds`` as ``"42 s"``, ``"12.5 min"`` or ``"3.2 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _lens_and_model(args: argparse.Namespace, data: bool):
    """The saved lens on its model (``--model`` or the one it records), the tokenizer, the zoo
    recipe or None and the model's name; with ``data``, the corpus is checked first
    (:func:`_require_corpus`). The lens's recorded identity must be the model's (tokenizer
    included)."""
    from statetap.interp.lens.lens import TunedLens, read_config
    from statetap.interp.loading import load_named_model
    from statetap.interp.provenance import check_same, model_identity

    record = read_config(args.lens)
    name = args.model or record["meta"].get("model")
    if not name:
        raise ValueError(f"{args.lens} does not name its model; pass --model")
    if data:
        _require_corpus(args, name)
    model, tokenizer, recipe = load_named_model(name)
    model.to(_device(args.device))
    lens = TunedLens.load(args.lens, model)
    # TunedLens.load compared the model; the CLI's record adds the tokenizer
    check_same(
        lens.meta.get("identity"), model_identity(model, tokenizer), f"the lens in {args.lens}"
    )
    return lens, tokenizer, recipe, name


def _eval(args: argparse.Namespace) -> int:
    from statetap.interp.lens.evaluate import evaluate

    lens, tokenizer, recipe, name = _lens_and_model(args, data=True)
    stream, bytes_per_token, source = _data(args, tokenizer, recipe, held_out=True)
    seq_len = args.seq_len or lens.meta.get("train", {}).get("seq_len", 2048)
    evaluation = evaluate(
        lens, stream, seq_len, args.windows, args.batch_size, bytes_per_token, progress=True
    )
    evaluation.meta = dict(model=name, lens=str(args.lens), data=source, seq_len=seq_len)
    out = evaluation.save(args.out or Path(args.lens) / EVALUATION)
    print(evaluation.markdown())
    print(f"wrote {out}")
    return 0 if evaluation.final_layer_ok else 1


def _plot(args: argparse.Namespace) -> int:
    from statetap.interp.lens.evaluate import LensEvaluation
    from statetap.interp.lens.lens import LogitLens
    from statetap.interp.lens.plots import plot_bits_per_byte, plot_trajectory

    evaluation_file = Path(args.evaluation or Path(args.lens) / EVALUATION)
    if not evaluation_file.exists():
        raise SystemExit(f"{evaluation_file} does not exist: run 'statetap lens eval' first")
    out = Path(args.out or args.lens)
    evaluation = LensEvaluation.load(evaluation_file)
    written = [plot_bits_per_byte(evaluation, out / "bits-per-byte.png", title=args.lens)]
    lens, tokenizer, _, _ = _lens_and_model(args, data=False)
    ids = torch.tensor(tokenizer(args.prompt, add_special_tokens=False)["input_ids"])
    for each in (lens, LogitLens(lens.model)):
        path = out / f"trajectory-{each.name}.png"
        written.append(plot_trajectory(each, ids, tokenizer, path))
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group(
        "corpus (one of them; default for a zoo text model: the zoo's text corpus)"
    )
    either = data.add_mutually_exclusive_group()
    either.add_argument("--text-file", type=text_file, help="UTF-8 text, one document")
    either.add_argument(
        "--dataset",
        help="JSONL/JSON, parquet or arrow file, a save_to_disk folder, or a hub dataset, "
        "read with datasets",
    )
    data.add_argument("--split", help="dataset split (default: train)")
    data.add_argument("--text-field", default="text", help="dataset column (default: text)")


def _lens_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lens", required=True, help="folder written by 'statetap lens train'")
    parser.add_argument("--model", help="zoo name or transformers folder (default: the lens's)")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field (``--tokens-per-step``), default None: the
    field then comes from the ``--recipe`` preset."""
    group = parser.add_argument_group("training (TrainConfig fields; default: the --recipe's)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (paper: {f.default})"
        if isinstance(f.default, bool):
            action = argparse.BooleanOptionalAction
            group.add_argument(flag, action=action, default=None, help=help_text)
        else:
            group.add_argument(flag, type=type(f.default), default=None, help=help_text)


def add_lens_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``lens`` (sub-commands ``train``, ``eval`` and ``plot``) on the ``statetap``
    parser's sub-parsers; each handler is ``args.run(args) -> exit code``."""
    lens = subparsers.add_parser(
        "lens",
        help="the tuned lens and the logit lens (train, evaluate, plot)",
        description="Affine translators per layer, read through the model's own final norm and "
        "unembedding and trained to minimise KL(p_final || p_lens) (Belrose et al.), compared "
        "with the logit lens on held-out text.",
    )
    commands = lens.add_subparsers(dest="lens_command", required=True)
    train_parser = commands.add_parser(
        "train",
        help="train a tuned lens (torchrun for data parallelism)",
        description="Train one translator per layer (the last layer excepted) with the model "
        "frozen, and write translators.safetensors and config.json to --out.",
    )
    train_parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"zoo name or transformers folder ({DEFAULT_MODEL})"
    )
    _data_arguments(train_parser)
    train_parser.add_argument("--out", required=True, help="output folder")
    train_parser.add_argument(
        "--recipe", default="paper", choices=sorted(PRESETS), help="preset (default: paper)"
    )
    _common(train_parser)
    add_config_arguments(train_parser)
    train_parser.set_defaults(run=_train)

    eval_parser = commands.add_parser(
        "eval",
        help="per-layer cross-entropy, KL to the final layer and entropy, tuned vs logit lens",
        description="Score the tuned and the logit lens at every layer on held-out text (bits "
        "per byte, nats per token, KL to the final layer, entropy), run the final-layer check "
        "(exit code 1 when it fails) and write evaluation.json.",
    )
    _lens_arguments(eval_parser)
    _data_arguments(eval_parser)
    eval_parser.add_argument("--seq-len", type=int, help="tokens per window (default: training's)")
    eval_parser.add_argument("--windows", type=int, help="windows scored (default: all)")
    eval_parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    eval_parser.add_argument("--out", help="evaluation JSON file (default: LENS/evaluation.json)")
    _common(eval_parser)
    eval_parser.set_defaults(run=_eval)

    plot_parser = commands.add_parser(
        "plot",
        help="bits per byte against depth; prediction trajectories of one prompt",
        description="Write bits-per-byte.png (from 'lens eval') and trajectory-tuned.png / "
        "trajectory-logit.png (top token per layer and position, coloured by entropy).",
    )
    _lens_arguments(plot_parser)
    plot_parser.add_argument("--evaluation", help="evaluation JSON (default: LENS/evaluation.json)")
    plot_parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text of the trajectory")
    plot_parser.add_argument("--out", help="folder for the PNGs (default: the lens folder)")
    _common(plot_parser)
    plot_parser.set_defaults(run=_plot)
