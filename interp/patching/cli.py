"""``statetap patch``: activation patching or causal tracing over layers x positions.

    statetap patch --task operand --model quirky-mamba --out runs/operand
    statetap patch --task character --model quirky-rwkv7 --method trace --out runs/bob
    statetap patch --pairs pairs.jsonl --model path/to/model --sites residual ssm --out runs/p

Writes ``patching.json`` (:class:`statetap.interp.patching.PatchingResult`) and one heatmap
per site into ``--out`` and prints, per site, where the mean effect is largest.
:func:`add_patch_command` registers the command; :func:`patch_preflight` checks what it can
before the model loads.
"""

from __future__ import annotations

import argparse
import math

from statetap.interp.patching.pair_file import TASKS

METHODS = ("patch", "trace")
DEFAULT_TASK_MODEL = "quirky-mamba"


def patch_preflight(args: argparse.Namespace) -> None:
    """Checks before the model loads: the pair file's rows, a model for it, the counts and the
    noise (ValueError naming the option)."""
    from statetap.interp.patching.pair_file import read_pair_rows

    if args.pairs is not None:
        if args.model is None:
            raise ValueError("--pairs needs --model (the model the pairs are tokenized for)")
        read_pair_rows(args.pairs)
    for name in ("batch_tokens", "samples"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive int, got {value}")
    if not (math.isfinite(args.noise) and args.noise > 0):
        raise ValueError(f"--noise must be a positive finite number, got {args.noise}")


def _pairs(args: argparse.Namespace, tokenizer, recipe):
    from statetap import zoo
    from statetap.interp.patching.pair_file import read_pair_rows
    from statetap.interp.patching.tasks import quirky_task_rows, tokenize_pairs

    if args.pairs is not None:
        return tokenize_pairs(read_pair_rows(args.pairs), tokenizer, args.limit)
    if recipe is None or recipe.task != "quirky":
        raise ValueError(f"--task {args.task} needs a quirky zoo model, got {args.model!r}")
    rows, patterns = quirky_task_rows(args.task, zoo.quirky_split(recipe)[1])
    return tokenize_pairs(rows, tokenizer, args.limit, groups=patterns)


def _run(args: argparse.Namespace) -> int:
    import torch

    import statetap
    from statetap.interp.loading import load_named_model
    from statetap.interp.patching import activation_patching, causal_trace
    from statetap.interp.patching.plots import plot_all
    from statetap.interp.patching.tracing import TRACE_SITES

    name = args.model or DEFAULT_TASK_MODEL
    model, tokenizer, recipe = load_named_model(name)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    pairs = _pairs(args, tokenizer, recipe)
    tap = statetap.attach(model)
    layers = args.layers or "all"
    if args.method == "patch":
        result = activation_patching(
            tap,
            pairs.clean,
            pairs.corrupt,
            (pairs.answer, pairs.wrong),
            sites=args.sites,
            layers=layers,
            batch_tokens=args.batch_tokens,
        )
    else:
        result = causal_trace(
            tap,
            pairs.clean,
            pairs.subject,
            pairs.answer,
            samples=args.samples,
            noise=args.noise,
            seed=args.seed,
            sites=args.sites or TRACE_SITES,
            layers=layers,
            batch_tokens=args.batch_tokens,
        )
    result.tokens = pairs.tokens
    source = f"task {args.task}" if args.task else f"pairs {args.pairs}"
    result.meta |= dict(model=name, source=source, pairs=pairs.kept, pairs_given=pairs.total)
    path = result.save(args.out)
    plot_all(result, args.out, title=f"{name}, {source}")
    length = pairs.clean.shape[1]
    print(
        f"{result.method} on {name}, {source}: {pairs.kept} of {pairs.total} pairs "
        f"(those of {length} tokens{', the most common digit pattern' if args.task else ''})"
    )
    print(f"clean metric {result.clean.mean():.3f}, corrupted {result.corrupt.mean():.3f}")
    print(f"{'site':<12} {'largest mean effect':>20}  layer  position (token)")
    for site in result.sites:
        layer, position, effect = result.peak(site)
        print(f"{site:<12} {effect:>20.3f}  {layer:>5}  {position} ({pairs.tokens[0][position]!r})")
    print(f"wrote {path} and heatmaps to {args.out}")
    return 0


def add_patch_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``patch`` on the ``statetap`` parser's sub-parsers; the handler is
    ``args.run(args) -> exit code``."""
    parser = subparsers.add_parser(
        "patch",
        help="activation patching / causal tracing over layers x positions (state included)",
        description="Patch the clean run's residual stream, mixer output or recurrent state at "
        "every (layer, position) into the corrupted run and report the fraction of the logit "
        "difference recovered (--method patch), or noise the tokens where the two prompts "
        "differ and restore the clean run (causal tracing, --method trace). Writes "
        "patching.json and a heatmap per site.",
    )
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--task", choices=TASKS, help="built-in pairs from a quirky zoo model")
    given.add_argument(
        "--pairs", help="JSONL file: one {clean, corrupt, answer, wrong} object per line"
    )
    parser.add_argument(
        "--model", help=f"zoo model, folder or hub id (default with --task: {DEFAULT_TASK_MODEL})"
    )
    parser.add_argument("--method", choices=METHODS, default="patch", help="default: patch")
    parser.add_argument(
        "--sites",
        nargs="+",
        help="residual, mixer, state components, or 'state' (every component of a layer); "
        "default: patch all, trace residual and state",
    )
    parser.add_argument("--layers", nargs="+", type=int, help="layers (default: all)")
    parser.add_argument("--limit", type=int, default=32, help="pairs to use (default 32)")
    parser.add_argument("--samples", type=int, default=10, help="trace: noise samples (10)")
    parser.add_argument(
        "--noise", type=float, default=3.0, help="trace: noise std / embedding std (3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="trace: noise seed (0)")
    parser.add_argument(
        "--batch-tokens", type=int, default=2048, help="padded tokens per forward pass (2048)"
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=_run)
