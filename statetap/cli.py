"""The ``statetap`` command line."""

from __future__ import annotations

import argparse
import sys

import torch


def _check(args: argparse.Namespace) -> int:
    from statetap.check import check_op, format_table
    from statetap.kernels import OPS

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.seed is not None:
        torch.manual_seed(args.seed)
    rows = [check_op(name, args.batch, args.length, device) for name in args.ops or OPS]
    print(format_table(rows))
    failed = [row.op for row in rows if not row.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)} differ from the float64 definition", file=sys.stderr)
        return 1
    print(f"all {len(rows)} ops agree with the float64 definition (emit, inject, final state)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from statetap.kernels import OPS

    parser = argparse.ArgumentParser(prog="statetap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="run every op on this machine against its float64 definition",
        description="Run every recurrence through the backend this device selects, with "
        "state emission and injection, and compare with the float64 sequential definition.",
    )
    check.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    check.add_argument("--batch", type=int, default=4, help="rows (default 4)")
    check.add_argument("--length", type=int, default=77, help="tokens per row (default 77)")
    check.add_argument("--ops", nargs="+", choices=OPS, help="subset of ops (default: all)")
    check.add_argument("--seed", type=int, help="random seed (default: fresh inputs)")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``statetap`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
