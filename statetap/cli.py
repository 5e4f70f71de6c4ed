"""The ``statetap`` command line."""

from __future__ import annotations

import argparse
import sys

import torch

from statetap.signals import exit_on_sigterm


def _check(args: argparse.Namespace) -> int:
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
    from statetap.defaults import DEFAULT_MODEL, default_model, default_texts, load_model
    from statetap.extract import (
        ExtractConfig,
        dataset_source,
        extract,
        manifest_table,
        read_manifest,
        text_file_source,
        texts_source,
    )

    if args.extract_command == "info":
        print(manifest_table(read_manifest(args.folder)))
        return 0
    if not args.out:
        raise SystemExit("statetap extract: --out is required")
    if args.text_file and args.dataset:
        raise SystemExit("statetap extract: give --text-file or --dataset, not both")
    config = ExtractConfig(
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
    )
    device = _distributed_device(args.device)
    if args.model:
        model, tokenizer = load_model(
            args.model, args.dtype, args.device_map, args.revision, args.trust_remote_code
        )
    else:
        model, tokenizer = default_model()
    if device is not None:
        model.to(device)
    if args.dataset:
        source = dataset_source(args.dataset, args.split, args.text_field)
    elif args.text_file:
        source = text_file_source(args.text_file)
    else:
        source = texts_source(default_texts(args.skip + (args.limit or 256)))
    manifest = extract(
        model, tokenizer, source, config, args.model or DEFAULT_MODEL, args.skip, args.limit
    )
    from statetap.extract.run import rank_and_world

    if rank_and_world()[0] == 0:
        print(
            f"wrote {manifest.rows} rows ({manifest.tokens} tokens) in {len(manifest.shards)} "
            f"shard(s) to {config.out}: sites {', '.join(manifest.sites)} at layers "
            f"{manifest.layers}, positions {manifest.config['positions']}"
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _positions(values: list[str]) -> list[int] | str:
    """``--positions`` words: ints, or one of ``all`` / ``start:stop``."""
    if len(values) == 1 and not values[0].lstrip("-").isdigit():
        return values[0]
    try:
        return [int(value) for value in values]
    except ValueError:
        raise SystemExit(
            f"statetap extract: --positions takes ints, or one of all / start:stop; got {values}"
        ) from None


def _distributed_device(requested: str | None) -> torch.device | None:
    """The model's device, joining the ``torchrun`` process group first when there is one
    (NCCL on CUDA, gloo on the CPU; each rank on the GPU of its ``LOCAL_RANK``)."""
    import os

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


def build_parser() -> argparse.ArgumentParser:
    from statetap.kernels import OPS, STEPS

    parser = argparse.ArgumentParser(prog="statetap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
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

    from statetap.interp.steering.cli import add_steer_commands

    add_steer_commands(commands)

    from statetap.interp.lens.cli import add_lens_commands

    add_lens_commands(commands)

    from statetap.interp.elk.cli import add_elk_commands

    add_elk_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``statetap`` console script (and of ``python -m statetap``).

    ``SIGTERM`` ends a command as ``SystemExit(143)``, so its clean-up runs: training workers
    are stopped and no partial file or cache entry is left behind.
    """
    args = build_parser().parse_args(argv)
    with exit_on_sigterm():
        return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
