"""The ``statetap`` command line."""

from __future__ import annotations

import argparse
import sys

import torch

from statetap.signals import exit_on_sigterm


def _check(args: argparse.Namespace) -> int:
    from statetap.check import check, format_table
    from statetap.kernels import OPS, STEPS

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.seed is not None:
        torch.manual_seed(args.seed)
    names = args.ops or (*OPS, *STEPS)
    rows = [row for name in names for row in check(name, args.batch, args.length, device)]
    print(format_table(rows))
    failed = list(dict.fromkeys(row.op for row in rows if not row.ok))
    if failed:
        print(f"FAILED: {', '.join(failed)} differ from a reference (table above)", file=sys.stderr)
        return 1
    print(
        f"all {len(names)} ops and steps agree with their references "
        f"({len(rows)} comparisons of the output, emitted states and final state)"
    )
    return 0


def _extract(args: argparse.Namespace) -> int:
    from statetap.defaults import DEFAULT_MODEL, default_model, default_texts, load_model
    from statetap.extract import ExtractConfig, extract

    if args.model:
        model, tokenizer = load_model(args.model)
    else:
        model, tokenizer = default_model()
    if args.device:
        model.to(args.device)
    if args.text_file:
        with open(args.text_file, encoding="utf-8") as handle:
            texts = [line.rstrip("\n") for line in handle if line.strip()]
    else:
        texts = default_texts(args.limit or 256)
    if args.limit:
        texts = texts[: args.limit]
    config = ExtractConfig(
        out=args.out,
        sites=args.sites,
        layers=args.layers,
        positions=args.positions,
        batch_size=args.batch_size,
        max_length=args.max_length,
        shard_rows=args.shard_rows,
        dtype=args.dtype,
    )
    manifest = extract(model, tokenizer, texts, config, args.model or DEFAULT_MODEL)
    rows = sum(shard["rows"][1] - shard["rows"][0] for shard in manifest.shards)
    print(
        f"wrote {rows} rows in {len(manifest.shards)} shard(s) to {config.out}: sites "
        f"{', '.join(manifest.sites)} at layers {manifest.layers}, positions {manifest.positions}"
    )
    return 0


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
        help="write residuals and recurrent states over a text file to safetensors shards",
        description="Run a model over texts (one per line) and write the residual stream and "
        "recurrent states at the chosen sites, layers and positions as safetensors shards with "
        "a JSON manifest. With no --model and no --text-file it runs the embedded default.",
    )
    extract.add_argument("--model", help="transformers model folder or hub id (default: embedded)")
    extract.add_argument("--text-file", help="UTF-8 file, one text per line (default: embedded)")
    extract.add_argument("--out", required=True, help="output folder (must not hold a manifest)")
    extract.add_argument(
        "--sites",
        nargs="+",
        default=["residual", "state"],
        help="sites: residual, mixer, a state component, or state (default: residual state)",
    )
    extract.add_argument("--layers", nargs="+", type=int, help="layers (default: all)")
    extract.add_argument(
        "--positions",
        nargs="+",
        type=int,
        default=[-1],
        help="token positions per text, negative from the end (default: -1)",
    )
    extract.add_argument("--batch-size", type=int, default=16)
    extract.add_argument(
        "--max-length", type=int, default=256, help="truncate texts to this many tokens"
    )
    extract.add_argument("--shard-rows", type=int, default=1024, help="texts per shard")
    extract.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    extract.add_argument("--device", help="torch device for the model (default: where it loads)")
    extract.add_argument("--limit", type=int, help="use only the first N texts")
    extract.set_defaults(run=_extract)

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
    demo.add_argument("--repeats", type=int, default=5, help="timed repeats per variant")
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
