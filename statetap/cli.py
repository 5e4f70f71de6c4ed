"""The ``statetap`` command line.

Everything that can be checked without the model is checked before one loads
(:func:`preflight`): the numbers, the positions, the output size budget, and every input path:
a name that looks local (``./x``, ``data/x.jsonl``, ``models/m`` when ``models/`` exists) and
is not there is reported as a missing file, never handed to the hub.  A usage error prints one
line and the help hint and exits with status 2; an error while the command runs prints one line
and exits with status 1; ``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from statetap.signals import exit_on_sigterm

if TYPE_CHECKING:
    import torch

# torch, transformers and the commands' modules are imported by the functions that need them:
# a usage error is told before any of them loads.

# input files by their suffix: a name ending so is a local path, never a hub id
FILE_SUFFIXES = {".json", ".jsonl", ".parquet", ".arrow", ".txt", ".csv", ".pth", ".safetensors"}
# arguments that name an input path (``model`` and ``dataset`` may also name a hub id or a zoo
# model: those are checked only when they look local)
PATHS = (
    "text_file",
    "vectors",
    "lens",
    "results",
    "evaluation",
    "source",
    "vocab_file",
    "folder",
    "pairs",
)
NAMES = ("model", "dataset", "fit_dataset")
# integer arguments that must be positive (and ``skip``, which may be 0), by their dest
POSITIVE = (
    "batch_size",
    "limit",
    "shard_rows",
    "max_length",
    "max_tokens",
    "threads",
    "texts",
    "repeats",
    "processes",
    "batch",
    "length",
    "equations",
    "test_equations",
    "fit_equations",
    "epochs",
    "rank",
    "last",
    "windows",
    "seq_len",
)


class UsageError(Exception):
    """A command line that cannot run as given: told in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, telling a usage error in one line and the help hint (status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nsee '{self.prog} --help'\n")


def _check(args: argparse.Namespace) -> int:
    import torch

    from statetap.adapters.upstream import package_version, tested_range
    from statetap.check import check, describe_peers, format_table
    from statetap.kernels import OPS, STEPS

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.seed is not None:
        torch.manual_seed(args.seed)
    names = args.ops or (*OPS, *STEPS)
    rows = [row for name in names for row in check(name, args.batch, args.length, device)]
    print(format_table(rows))
    peers = describe_peers(names)
    if peers:
        print(
            f"\nindependent references: transformers {package_version('transformers')} "
            f"(tested {tested_range()}), its torch code resolved as"
        )
        print("\n".join(f"  {line}" for line in peers))
    for row in rows:
        if row.error:
            print(f"ERROR: {row.op} against {row.reference}: {row.error}", file=sys.stderr)
    failed = list(dict.fromkeys(row.op for row in rows if not row.ok))
    if failed:
        print(
            f"FAILED: {', '.join(failed)} differ from a reference or could not be compared "
            f"(table above)",
            file=sys.stderr,
        )
        return 1
    print(
        f"all {len(names)} ops and steps agree with their references "
        f"({len(rows)} comparisons of the output, emitted states and final state)"
    )
    return 0


def _extract(args: argparse.Namespace) -> int:
    import torch

    from statetap.defaults import DEFAULT_MODEL, default_model, load_model
    from statetap.extract import extract, manifest_table, read_manifest
    from statetap.extract.run import rank_and_world

    if args.extract_command == "info":
        print(manifest_table(read_manifest(args.folder)))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = args.extract_config
    device = _distributed_device(args.device)
    if args.model:
        model, tokenizer = load_model(
            args.model, args.dtype, args.device_map, args.revision, args.trust_remote_code
        )
    else:
        model, tokenizer = default_model()
    if device is not None:
        model.to(device)
    source = args.texts_source or _hub_dataset(args)
    manifest = extract(
        model, tokenizer, source, config, args.model or DEFAULT_MODEL, args.skip, args.limit
    )
    if rank_and_world()[0] == 0:
        run = manifest.last_run
        done = f"wrote {len(run['written'])} shard(s)"
        if run["recomputed"]:
            done += f" ({len(run['recomputed'])} recomputed: {', '.join(run['recomputed'])})"
        if run["reused"]:
            done += f", kept {run['reused']} checked shard(s)"
        print(
            f"{done}; {config.out} holds {manifest.rows} rows ({manifest.tokens} tokens, "
            f"{len(manifest.shards)} shard(s)): sites {', '.join(manifest.sites)} at layers "
            f"{manifest.layers}, positions {manifest.config['positions']}"
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _extract_preflight(args: argparse.Namespace) -> None:
    """``extract``: the settings (:class:`~statetap.extract.ExtractConfig`) and a local input
    (its first row read: a missing ``--text-field`` is named now) as ``args.extract_config`` and
    ``args.texts_source`` (None for a hub dataset, opened when the command runs)."""
    from statetap.defaults import default_texts
    from statetap.extract import ExtractConfig, dataset_source, text_file_source, texts_source

    if args.extract_command == "info":
        return
    if not args.out:
        raise UsageError("--out is required")
    if args.text_file and args.dataset:
        raise UsageError("give --text-file or --dataset, not both")
    if args.dtype is not None:
        import torch

        if not isinstance(getattr(torch, args.dtype, None), torch.dtype):
            raise UsageError(
                f"--dtype must name a torch dtype (float32, bfloat16, ...), got {args.dtype!r}"
            )
    args.extract_config = ExtractConfig(
        out=args.out,
        sites=args.sites,
        layers=args.layers,
        positions=_positions(args.positions),
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        max_length=args.max_length,
        shard_rows=args.shard_rows,
        dtype=args.store_dtype,
        logits=args.logits,
        progress=not args.no_progress,
        short_texts=args.short_texts,
        max_bytes=None if args.max_output is None else _size(args.max_output),
    )
    if args.dataset and not _looks_local(args.dataset):
        args.texts_source = None  # a hub dataset: opened when the command runs
    elif args.dataset:
        args.texts_source = dataset_source(args.dataset, args.split, args.text_field)
        next(args.texts_source.open(), None)  # the first row: names a missing --text-field
    elif args.text_file:
        args.texts_source = text_file_source(args.text_file)
    else:
        args.texts_source = texts_source(default_texts(args.skip + (args.limit or 256)))


def _hub_dataset(args: argparse.Namespace):
    from statetap.extract import dataset_source

    return dataset_source(args.dataset, args.split, args.text_field)


def _size(text: str) -> int:
    from statetap.extract.size import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise UsageError(f"--max-output: {error}") from None


def _positions(values: list[str]) -> list[int] | str:
    """``--positions`` words: ints, or one of ``all`` / ``start:stop``."""
    if len(values) == 1 and not values[0].lstrip("-").isdigit():
        return values[0]
    try:
        return [int(value) for value in values]
    except ValueError:
        raise UsageError(
            f"--positions takes ints, or one of all / start:stop; got {' '.join(values)}"
        ) from None


def _distributed_device(requested: str | None) -> torch.device | None:
    """The model's device, joining the ``torchrun`` process group first when there is one
    (NCCL on CUDA, gloo on the CPU; each rank on the GPU of its ``LOCAL_RANK``)."""
    import torch

    device = torch.device(requested) if requested else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        cuda = (device or torch.device("cuda" if torch.cuda.is_available() else "cpu")).type
        torch.distributed.init_process_group("nccl" if cuda == "cuda" else "gloo")
        if cuda == "cuda" and (device is None or device.index is None):
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    return device


def _demo(args: argparse.Namespace) -> int:
    from statetap.demo import DEFAULT_MODELS, REPORT_FILES, DemoConfig, run_demo, summary_table

    config = DemoConfig(
        out=args.out,
        models=tuple(args.models or DEFAULT_MODELS),
        short=args.short,
        texts=args.texts,
        repeats=args.repeats,
        device=args.device,
        processes=args.processes,
    )
    reports = run_demo(config)
    print(summary_table(reports))
    print(f"report: {', '.join(str(config.out / name) for name in REPORT_FILES)}")
    return 0


def _convert_rwkv(args: argparse.Namespace) -> int:
    from statetap.models.convert import DTYPES, convert_checkpoint

    out = convert_checkpoint(
        args.source,
        args.out_dir,
        dtype=DTYPES[args.dtype],
        tokenizer=not args.no_tokenizer,
        vocab_file=args.vocab_file,
    )
    print(
        f"wrote {out}: AutoModelForCausalLM.from_pretrained loads it after import statetap.models"
    )
    return 0


def _add_check(commands: argparse._SubParsersAction) -> None:
    from statetap.kernels import OPS, STEPS

    check = commands.add_parser(
        "check",
        help="run every op and decode step on this machine against its references",
        description="Run every recurrence and decode step through the backend this device "
        "selects, with state emission and injection, and compare with the float64 sequential "
        "definition and, for selective_scan and wkv4, with transformers' own torch code.",
    )
    check.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    check.add_argument("--batch", type=int, default=4, help="rows (default 4)")
    check.add_argument("--length", type=int, default=77, help="tokens per row (default 77)")
    check.add_argument(
        "--ops", nargs="+", choices=(*OPS, *STEPS), help="subset of ops and steps (default: all)"
    )
    check.add_argument("--seed", type=int, help="random seed (default: fresh inputs)")
    check.set_defaults(run=_check)


def _add_extract(commands: argparse._SubParsersAction) -> None:
    extract = commands.add_parser(
        "extract",
        help="write residuals and recurrent states over a corpus to safetensors shards",
        description="Run a model over texts (a text file, one per line, or a dataset) and write "
        "the residual stream and recurrent states at the chosen sites, layers and positions as "
        "safetensors shards with a JSON manifest. Running the same command again on the same "
        "--out resumes; under torchrun the ranks share the work. With no --model and no input "
        "it runs the embedded default. 'statetap extract info FOLDER' prints a manifest.",
    )
    extract.set_defaults(run=_extract, extract_command=None)
    extract_commands = extract.add_subparsers(dest="extract_command")
    info = extract_commands.add_parser("info", help="print an extraction's manifest as a table")
    info.add_argument("folder", help="an extraction's output folder")
    model = extract.add_argument_group("model")
    model.add_argument("--model", help="transformers model folder or hub id (default: embedded)")
    model.add_argument("--dtype", help="model dtype, e.g. bfloat16 (default: transformers')")
    model.add_argument("--device-map", help="transformers device_map, e.g. auto (accelerate)")
    model.add_argument("--revision", help="model branch, tag or commit")
    model.add_argument(
        "--trust-remote-code", action="store_true", help="run the checkpoint's own modeling code"
    )
    model.add_argument("--device", help="torch device for the model (default: where it loads)")
    data = extract.add_argument_group("input")
    data.add_argument("--text-file", help="UTF-8 file, one text per line")
    data.add_argument(
        "--dataset",
        help="JSONL/JSON, parquet or arrow file, a save_to_disk folder, or a hub dataset; "
        "read in streaming mode",
    )
    data.add_argument("--split", help="dataset split (default: train)")
    data.add_argument("--text-field", default="text", help="dataset column (default: text)")
    data.add_argument("--skip", type=int, default=0, help="start at input text N")
    data.add_argument("--limit", type=int, help="use at most N texts")
    what = extract.add_argument_group("what to store")
    what.add_argument("--out", help="output folder (the same folder resumes)")
    what.add_argument(
        "--sites",
        nargs="+",
        default=["residual", "state"],
        help="sites: residual, mixer, a state component, or state (default: residual state)",
    )
    what.add_argument("--layers", nargs="+", type=int, help="layers (default: all)")
    what.add_argument(
        "--positions",
        nargs="+",
        default=["-1"],
        help="token positions per text, negative from the end (default: -1); or 'all' or "
        "'start:stop' for every token in that span, stored ragged",
    )
    what.add_argument(
        "--logits", action="store_true", help="also store the logits (runs every layer)"
    )
    what.add_argument(
        "--store-dtype", default="float32", choices=["float32", "float16", "bfloat16"]
    )
    how = extract.add_argument_group("batching")
    how.add_argument("--batch-size", type=int, default=16, help="texts per pass at most")
    how.add_argument("--max-tokens", type=int, help="padded tokens per pass at most")
    how.add_argument(
        "--max-length", type=int, default=256, help="cut texts to this many tokens (counted)"
    )
    how.add_argument(
        "--shard-rows", type=int, default=1024, help="texts per shard and length-sorting window"
    )
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, one per core); on a machine busy with other "
        "work fewer threads are often faster: time a few --limit runs",
    )
    keep = extract.add_argument_group("what is kept")
    keep.add_argument(
        "--short-texts",
        default="skip",
        choices=["skip", "error"],
        help="texts too short for the positions: left out and counted (skip, the default) or "
        "an error",
    )
    keep.add_argument(
        "--max-output",
        help="refuse to start when the output is estimated above this size, e.g. 20G (the "
        "estimate is printed before the first batch either way)",
    )
    extract.set_defaults(extract_config=None, texts_source=None)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the main job end to end on the zoo's models, written up as a report",
        description="Train (on first use) or load the zoo's small recurrent LMs, extract "
        "residuals and states from held-out texts, measure what instrumentation costs on this "
        "device, and write a report folder (markdown, PNG plots, JSON) with a summary table.",
    )
    demo.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    demo.add_argument(
        "--models", nargs="+", help="zoo models (default: the six of statetap.demo.DEFAULT_MODELS)"
    )
    demo.add_argument("--short", action="store_true", help="tiny recipes, seconds of training")
    demo.add_argument("--texts", type=int, default=256, help="held-out texts per model")
    demo.add_argument("--repeats", type=int, default=21, help="timed repeats per variant")
    demo.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    demo.add_argument(
        "--processes", type=int, help="processes training missing models (default: CPU cores)"
    )
    demo.set_defaults(run=_demo)


def _add_convert(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser(
        "convert-rwkv",
        help="convert a BlinkDL RWKV-5/6/7 .pth (or a port's folder) to a transformers folder",
        description="Load a BlinkDL .pth (x052, x060, x070), or a folder in the transformers "
        "RWKV-5/6 or flash-linear-attention RWKV-7 layout, and write it as a folder of "
        "statetap's RWKV models (config.json, model.safetensors and the World tokenizer) that "
        "AutoModelForCausalLM and AutoTokenizer load once statetap.models is imported. The "
        "folder appears only when complete.",
    )
    convert.add_argument("source", help="BlinkDL .pth file, or a model folder")
    convert.add_argument("out_dir", help="folder to create (must not exist)")
    convert.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="saved dtype"
    )
    convert.add_argument(
        "--vocab-file",
        help="World vocabulary (default: the rwkv package's rwkv_vocab_v20230424.txt)",
    )
    convert.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="write no tokenizer (for models whose vocabulary is not the World one)",
    )
    convert.set_defaults(run=_convert_rwkv)


def _add_steer(commands: argparse._SubParsersAction) -> None:
    from statetap.interp.steering.cli import add_steer_commands

    add_steer_commands(commands)


def _add_lens(commands: argparse._SubParsersAction) -> None:
    from statetap.interp.lens.cli import add_lens_commands

    add_lens_commands(commands)


def _add_elk(commands: argparse._SubParsersAction) -> None:
    from statetap.interp.elk.cli import add_elk_commands

    add_elk_commands(commands)


def _add_patch(commands: argparse._SubParsersAction) -> None:
    from statetap.interp.patching.cli import add_patch_command

    add_patch_command(commands)


COMMANDS = {
    "check": _add_check,
    "extract": _add_extract,
    "demo": _add_demo,
    "convert-rwkv": _add_convert,
    "steer": _add_steer,
    "lens": _add_lens,
    "elk": _add_elk,
    "patch": _add_patch,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``statetap`` parser: every command, or only ``command`` (its modules alone are
    imported, so that a usage error is told at once). Every parser takes ``--debug``."""
    parser = Parser(
        prog="statetap",
        description="statetap: emit and inject the recurrent state of Mamba and RWKV models, and "
        "the interpretability methods built on it (steering, tuned lens, ELK).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add in COMMANDS.items():
        if command in (None, name):
            add(commands)
    _everywhere(parser)
    return parser


def _everywhere(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and each of its sub-parsers ``--debug``, and its ``prog`` as the
    default ``_prog`` (so that an error names the command that was run)."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser.set_defaults(_prog=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _everywhere(sub)


def _looks_local(name: str) -> bool:
    """Whether ``name`` names a local path rather than a hub id or a zoo name: absolute or
    relative to ``.``/``..``/``~``, a known file suffix, more than one ``/``, or a first
    component that is a local folder (``models/m`` when ``models/`` exists)."""
    if name.startswith(("/", "./", "../", "~")) or name in (".", ".."):
        return True
    if (
        Path(name).suffix.lower() in FILE_SUFFIXES
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    ):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def _check_paths(args: argparse.Namespace) -> None:
    for dest in (*PATHS, *NAMES):
        value = getattr(args, dest, None)
        if not isinstance(value, str) or (dest in NAMES and not _looks_local(value)):
            continue
        if not Path(value).expanduser().exists():
            flag = "SOURCE" if dest == "source" else f"--{dest.replace('_', '-')}"
            raise UsageError(f"{flag} {value}: no such file or directory")


def _check_counts(args: argparse.Namespace) -> None:
    for dest in POSITIVE:
        value = getattr(args, dest, None)
        if isinstance(value, int) and value < 1:
            raise UsageError(f"--{dest.replace('_', '-')} must be a positive int, got {value}")
    if getattr(args, "skip", 0) < 0:
        raise UsageError(f"--skip must be an int >= 0, got {args.skip}")
    for dest in ("multipliers", "lr", "state_scale"):
        values = getattr(args, dest, None)
        values = values if isinstance(values, list) else [values]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise UsageError(f"--{dest.replace('_', '-')} must be finite, got {bad}")


def _steer_preflight(args: argparse.Namespace) -> None:
    """``steer vectors`` / ``sweep``: the A/B dataset read and checked (its rows, answers and
    letters); ``steer generate`` takes prompts, no dataset."""
    from statetap.interp.steering.dataset import load_ab_items

    if getattr(args, "dataset", None) is not None:
        load_ab_items(args.dataset)


def _elk_preflight(args: argparse.Namespace) -> None:
    """``elk lora``: the operation is one of the v2 operations."""
    if args.elk_command == "lora":
        from statetap.zoo.quirky_operations import OPERATIONS

        if args.operation not in OPERATIONS:
            raise UsageError(
                f"--operation must be one of {', '.join(OPERATIONS)}, got {args.operation!r}"
            )


def _patch_preflight(args: argparse.Namespace) -> None:
    """``patch``: the pair file's rows, a model named for it, the counts and the noise."""
    from statetap.interp.patching.cli import patch_preflight

    patch_preflight(args)


def _demo_preflight(args: argparse.Namespace) -> None:
    """``demo``: every model named is a zoo model."""
    from statetap import zoo

    for name in args.models or ():
        try:
            zoo.resolve(name)
        except KeyError as error:
            raise UsageError(f"--models: {error.args[0]}") from None


def _convert_preflight(args: argparse.Namespace) -> None:
    """``convert-rwkv``: the output folder does not exist yet."""
    if Path(args.out_dir).exists():
        raise UsageError(f"OUT_DIR {args.out_dir} exists; give a new folder")


PREFLIGHT = {
    "extract": _extract_preflight,
    "steer": _steer_preflight,
    "elk": _elk_preflight,
    "patch": _patch_preflight,
    "demo": _demo_preflight,
    "convert-rwkv": _convert_preflight,
}


def preflight(args: argparse.Namespace) -> None:
    """Check what can be checked before a model loads: input paths (:func:`_looks_local`),
    counts, finite floats, then the command's own checks (:data:`PREFLIGHT`).

    Raises:
        UsageError, ValueError, TypeError, KeyError, OSError: the first problem found.
    """
    _check_paths(args)
    _check_counts(args)
    check = PREFLIGHT.get(args.command)
    if check is not None:
        check(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``statetap`` console script (and of ``python -m statetap``).

    Returns the exit status: 0, 1 for an error while the command ran, 2 for a usage error
    (argparse's own usage errors exit with 2 as well). Either is told in one line unless
    ``--debug`` is given. ``SIGTERM`` ends a command as ``SystemExit(143)``, so its clean-up
    runs: training workers are stopped and no partial file or cache entry is left behind.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        preflight(args)
    except (UsageError, ValueError, TypeError, KeyError, OSError) as error:
        return _failed(args, error, 2)
    try:
        with exit_on_sigterm():
            return args.run(args)
    except (ValueError, TypeError, KeyError, OSError) as error:
        return _failed(args, error, 1)


def _failed(args: argparse.Namespace, error: Exception, status: int) -> int:
    """Tell ``error`` in one line (and how to see more) and return ``status``; with ``--debug``
    raise it instead."""
    if getattr(args, "debug", False):
        raise error
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    hint = f"see '{args._prog} --help'" if status == 2 else "rerun with --debug for the traceback"
    print(f"{args._prog}: error: {message}\n{hint}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
