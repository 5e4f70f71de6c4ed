"""``statetap steer``: steering vectors from an A/B dataset, layer x multiplier sweeps, and
steered generation at several layers at once.

    statetap steer vectors --dataset generate/refusal.json --out runs/refusal-vectors
    statetap steer sweep --dataset test/refusal.json --vectors runs/refusal-vectors \\
        --modes residual state both --out runs/refusal-sweep
    statetap steer generate --vectors runs/refusal-vectors --prompt "Write a story." \\
        --layers 10 11 12 --multipliers 2 --mode state --do-sample --temperature 0.8 --seed 0

:func:`add_steer_commands` registers the ``steer`` command on the ``statetap`` parser.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import statetap
from statetap.interp.provenance import check_same, tokenizer_identity
from statetap.interp.steering.dataset import LETTERS, TEMPLATES, ab_pairs, load_ab_items
from statetap.interp.steering.modes import MODE_NAMES, steering_mode

# the modules that load transformers and matplotlib are imported by the commands that use them,
# after the arguments are checked

PAPER_MULTIPLIERS = [-3.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0]


DTYPES = ("float32", "bfloat16", "float16")


def _model(args: argparse.Namespace):
    """The model's tap, its tokenizer and its name (``--model``, ``--dtype``, ``--device``)."""
    import torch

    from statetap.defaults import DEFAULT_MODEL, default_model, load_model

    if args.model:
        model, tokenizer = load_model(args.model, args.dtype)
    else:
        model, tokenizer = default_model()
        if args.dtype:
            model.to(getattr(torch, args.dtype))
    if args.device:
        model.to(args.device)
    return statetap.attach(model), tokenizer, args.model or DEFAULT_MODEL


def _template(args: argparse.Namespace):
    """``--template`` with ``--instruction`` / ``--response`` applied."""
    template = TEMPLATES[args.template]
    if args.instruction is not None:
        template = dataclasses.replace(template, instruction=args.instruction, chat=False)
    if args.response is not None:
        template = dataclasses.replace(template, response=args.response)
    return template


def _model_and_pairs(args: argparse.Namespace):
    """The model's tap, its name, the dataset's contrast pairs, and how the prompts were made
    (dataset, template, letters, limit, the tokenizer's identity)."""
    tap, tokenizer, name = _model(args)
    items = load_ab_items(args.dataset)[: args.limit]
    template = _template(args)
    pairs = ab_pairs(items, tokenizer, template, args.letters)
    source = dict(
        dataset=str(args.dataset),
        template=dataclasses.asdict(template),
        letters=args.letters,
        limit=args.limit,
        tokenizer=tokenizer_identity(tokenizer),
    )
    return tap, name, pairs, source


def _vectors(args: argparse.Namespace) -> int:
    import torch

    from statetap.interp.steering.store import save_vectors
    from statetap.interp.steering.vectors import mean_difference

    tap, name, pairs, source = _model_and_pairs(args)
    vectors = mean_difference(
        tap,
        *pairs.completions(),
        layers=args.layers or "all",
        state=not args.no_state,
        whiten=args.whiten,
        pinv_dtype=getattr(torch, args.pinv_dtype),
        pinv_rtol=args.pinv_rtol,
        batch_size=args.batch_size,
        same_length=args.same_length,
    )
    vectors.meta |= dict(model=name, source=source)
    save_vectors(vectors, args.out)
    if args.whiten:
        kept = vectors.meta["whitening"]["kept"]
        print(f"whitening ({args.pinv_dtype} pinv) kept directions per layer: {kept}")
    print(
        f"wrote vectors ({', '.join(vectors.meta['sites'])}) at layers {vectors.layers} from "
        f"{len(pairs)} contrast pairs to {args.out}"
    )
    return 0


# how the prompts were made: what vectors and the prompts they steer must share
PROMPT_FORMAT = ("template", "letters", "tokenizer")


def _sweep(args: argparse.Namespace) -> int:
    from statetap.interp.steering.plots import plot_layers, plot_modes
    from statetap.interp.steering.store import load_vectors, save_sweep
    from statetap.interp.steering.sweeps import sweep

    vectors = load_vectors(args.vectors)
    tap, name, pairs, source = _model_and_pairs(args)
    if not args.other_model:
        recorded = vectors.meta.get("source", {})
        check_same(
            {key: recorded.get(key) for key in PROMPT_FORMAT} | {"name": vectors.meta.get("model")},
            {key: source[key] for key in PROMPT_FORMAT} | {"name": name},
            f"the vectors in {args.vectors} (prompt template, letters, tokenizer)",
        )
    modes = [steering_mode(mode, args.last, args.state_scale) for mode in args.modes]
    result = sweep(
        tap,
        pairs,
        vectors,
        args.multipliers,
        layers=args.layers,
        modes=modes,
        batch_size=args.batch_size,
        same_length=args.same_length,
        other_model=args.other_model,
    )
    result.meta |= dict(model=name, source=source, vectors_folder=str(args.vectors))
    out = save_sweep(result, args.out)
    behaviour = Path(args.dataset).stem
    for mode in result.mode_names:
        plot_layers(result, mode, out / f"layers-{mode}.png", title=f"{behaviour}: {mode}")
    spread, effect = result.behaviour_range(), result.max_effect_over_layers()
    plot_modes({behaviour: dict(zip(result.mode_names, spread.tolist()))}, out / "modes.png")
    header = " ".join(f"{m:>+7g}" for m in result.multipliers)
    if args.other_model:
        print(f"vectors from {vectors.meta.get('model')} steering {name} (--other-model)")
    print(f"unsteered p_match {100 * result.baseline_p_match.mean():.1f}%")
    print(f"{'mode':<16} {'range pp':>8}   max effect over layers (pp) per multiplier")
    print(f"{'':<28}{header}")
    for i, mode in enumerate(result.mode_names):
        row = " ".join(f"{100 * e:>+7.1f}" for e in effect[i].tolist())
        print(f"{mode:<16} {100 * spread[i]:>8.1f}   {row}")
    print(f"wrote {out / 'sweep.safetensors'}, sweep.json and plots to {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from statetap.extract import write_json_atomically
    from statetap.interp.steering.dataset import Prompts
    from statetap.interp.steering.generate import generate_steered
    from statetap.interp.steering.store import load_vectors

    vectors = load_vectors(args.vectors)
    tap, tokenizer, name = _model(args)
    if not args.other_model:
        recorded = vectors.meta.get("source", {})
        check_same(
            {"tokenizer": recorded.get("tokenizer"), "name": vectors.meta.get("model")},
            {"tokenizer": tokenizer_identity(tokenizer), "name": name},
            f"the vectors in {args.vectors} (model, tokenizer)",
        )
    template = _template(args)
    # the template's instruction; its response (an A/B answer's start) only given --response
    texts = [
        template.instruction_text(prompt, tokenizer) + (args.response or "")
        for prompt in args.prompt
    ]
    mode = steering_mode(args.mode, args.last, args.state_scale)
    sampling = dict(do_sample=args.do_sample)
    for key in ("temperature", "top_k", "top_p"):
        if getattr(args, key) is not None:
            sampling[key] = getattr(args, key)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generations = []
    for text in texts:  # one at a time: prompts need no padding, any model generates them
        prompts = Prompts.from_texts(tokenizer, [text], bos=template.bos)
        out = generate_steered(
            tap,
            prompts,
            vectors,
            args.layers or "all",
            args.multipliers if len(args.multipliers) > 1 else args.multipliers[0],
            mode=mode,
            steer_new=not args.no_steer_new,
            other_model=args.other_model,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=pad,
            **sampling,
        )
        new = out.sequences[0, len(prompts.ids[0]) :]
        generations.append(dict(prompt=text, generation=tokenizer.decode(new)))
        print(f"--- {text!r}\n{generations[-1]['generation']}")
    if args.out:
        record = dict(
            model=name,
            vectors=str(args.vectors),
            layers=args.layers or "all",
            multipliers=args.multipliers,
            mode=mode.name,
            steer_new=not args.no_steer_new,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            generations=generations,
        )
        print(f"wrote {write_json_atomically(args.out, record)}")
    return 0


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the prompt template (every sub-command)."""
    parser.add_argument("--model", help="transformers model folder or hub id (default: embedded)")
    parser.add_argument(
        "--dtype", choices=DTYPES, help="load the model in this dtype (default: transformers')"
    )
    parser.add_argument(
        "--template",
        default="plain",
        choices=sorted(TEMPLATES),
        help="prompt template ending just before the answer letter (default: plain)",
    )
    parser.add_argument("--instruction", help="custom instruction text with a {question} field")
    parser.add_argument("--response", help="custom start of the answer, up to the letter: '('")
    parser.add_argument("--device", help="torch device for the model (default: where it loads)")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the dataset sub-commands share: model, dataset, prompt template, batching."""
    _model_arguments(parser)
    parser.add_argument(
        "--dataset", required=True, help="A/B dataset: .json list or .jsonl rows (Rimsky et al.)"
    )
    parser.add_argument("--letters", default="A-B", choices=sorted(LETTERS), help="answer letters")
    parser.add_argument("--layers", nargs="+", type=int, help="layers (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument(
        "--same-length",
        action="store_true",
        help="batch only prompts of one length (models without an attention mask: mamba-ssm)",
    )
    parser.add_argument("--limit", type=int, help="use only the first N rows")
    parser.add_argument("--out", required=True, help="output folder")


def add_steer_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``steer`` (sub-commands ``vectors``, ``sweep`` and ``generate``) on the
    ``statetap`` parser's sub-parsers; each handler is ``args.run(args) -> exit code``."""
    steer = subparsers.add_parser(
        "steer",
        help="contrastive activation addition and state steering (A/B datasets)",
        description="Steering vectors from A/B behaviour datasets, and sweeps over layers, "
        "multipliers and modes (residual, instruction, state, both) measuring p(matching answer).",
    )
    commands = steer.add_subparsers(dest="steer_command", required=True)
    vectors = commands.add_parser(
        "vectors",
        help="mean-difference steering vectors (residual and state) of a dataset",
        description="Run every contrast pair (prompt + matching letter, prompt + non-matching "
        "letter) and write, per layer, the mean difference of the residual stream at the letter "
        "and of every recurrent-state component after it (safetensors + JSON).",
    )
    _data_arguments(vectors)
    vectors.add_argument("--no-state", action="store_true", help="residual vectors only")
    vectors.add_argument("--whiten", action="store_true", help="the 'LDA' residual vectors")
    vectors.add_argument(
        "--pinv-dtype",
        default="float64",
        choices=("float64", "float32"),
        help="--whiten's pseudo-inverse: float64 (default) or float32, the paper's, which drops "
        "the directions of variance below eps(float32) x width x the largest",
    )
    vectors.add_argument(
        "--pinv-rtol",
        type=float,
        help="--whiten's cut-off: drop directions whose singular value is at most this times the "
        "largest (default: torch's, eps(dtype) x width)",
    )
    vectors.set_defaults(run=_vectors)

    sweep_parser = commands.add_parser(
        "sweep",
        help="steer every layer with every multiplier in each mode; measure p(matching answer)",
        description="Add multiplier x vector at each layer (modes: residual at the last k prompt "
        "tokens, instruction = every token after the instruction, state = edit the state before "
        "the last k tokens, both) and write p_match and nonsense per (mode, layer, multiplier, "
        "prompt), the paper's summaries and plots.",
    )
    _data_arguments(sweep_parser)
    sweep_parser.add_argument("--vectors", required=True, help="folder from 'steer vectors'")
    sweep_parser.add_argument(
        "--multipliers",
        nargs="+",
        type=float,
        default=PAPER_MULTIPLIERS,
        help="multipliers (default: the paper's -3 .. 3)",
    )
    sweep_parser.add_argument(
        "--modes", nargs="+", default=["residual"], choices=MODE_NAMES, help="steering modes"
    )
    sweep_parser.add_argument(
        "--last", type=int, default=1, help="steer the last k prompt tokens (default 1)"
    )
    sweep_parser.add_argument(
        "--state-scale", type=float, default=1.0, help="state multiplier / residual multiplier"
    )
    sweep_parser.add_argument(
        "--other-model",
        action="store_true",
        help="allow vectors made on another model, template, letters or tokenizer (refused by "
        "default; recorded in sweep.json)",
    )
    sweep_parser.set_defaults(run=_sweep)

    generate = commands.add_parser(
        "generate",
        help="generate from prompts steered at one or several layers (greedy or sampled)",
        description="Add each layer's vectors times its multiplier (modes as in sweep; residual "
        "modes also steer every generated token unless --no-steer-new) and generate with the "
        "model's own generate: greedy, or sampled with --do-sample and its temperature, top-k, "
        "top-p and --seed. The paper's story generation: --layers all layers --mode state "
        "--do-sample.",
    )
    _model_arguments(generate)
    generate.add_argument("--vectors", required=True, help="folder from 'steer vectors'")
    generate.add_argument("--prompt", nargs="+", required=True, help="prompt texts")
    generate.add_argument("--layers", nargs="+", type=int, help="steered layers (default: all)")
    generate.add_argument(
        "--multipliers",
        nargs="+",
        type=float,
        default=[1.0],
        help="one multiplier for every layer, or one per --layers value (default 1)",
    )
    generate.add_argument("--mode", default="residual", choices=MODE_NAMES, help="steering mode")
    generate.add_argument("--last", type=int, default=1, help="steer the last k prompt tokens")
    generate.add_argument(
        "--state-scale", type=float, default=1.0, help="state multiplier / residual multiplier"
    )
    generate.add_argument(
        "--no-steer-new", action="store_true", help="residual modes: leave generated tokens be"
    )
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    generate.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    generate.add_argument("--temperature", type=float, help="sampling temperature")
    generate.add_argument("--top-k", type=int, help="sample from the k likeliest tokens")
    generate.add_argument("--top-p", type=float, help="nucleus sampling mass")
    generate.add_argument("--seed", type=int, help="seed of the draws (reproducible sampling)")
    generate.add_argument(
        "--other-model", action="store_true", help="allow another model's vectors"
    )
    generate.add_argument("--out", help="write the generations to this JSON file")
    generate.set_defaults(run=_generate)
