"""The ``rmt flops`` subcommand: FLOPs of full attention vs RMT, as a table, JSON or a plot."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from rmt.analysis.flops import (
    DEFAULT_LENGTHS,
    DEFAULT_NUM_MEM_TOKENS,
    DEFAULT_SEGMENT_SIZE,
    OPT_CONFIGS,
    flops_report,
    get_config,
    plot_relative_flops,
)


def _lengths(text: str) -> list[int]:
    """``--length`` value: one length or a comma list, e.g. ``2048000`` or ``512,1000``."""
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"lengths must be integers, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive integers, got {text!r}")
    return lengths


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``flops`` on an argparse subparsers object; it dispatches through ``args.func``."""
    parser = subparsers.add_parser(
        "flops",
        help="forward-pass FLOPs of OPT models: full attention vs RMT",
        description="Forward-pass FLOPs of the OPT family with full attention and with RMT "
        "(Chinchilla-style counts), as in the RMT scaling report's Figure 2.",
    )
    parser.add_argument(
        "--model", action="append", default=None,
        help=f"model name, repeatable (default: all of {', '.join(OPT_CONFIGS)})",
    )
    parser.add_argument(
        "--length", action="append", type=_lengths, default=None,
        help="input length in tokens, repeatable or a comma list (default: 512, 1k ... 2048k)",
    )
    parser.add_argument("--segment-size", type=int, default=DEFAULT_SEGMENT_SIZE,
                        help="RMT input tokens per segment")
    parser.add_argument("--mem", type=int, default=DEFAULT_NUM_MEM_TOKENS,
                        help="memory tokens added to every segment")
    parser.add_argument("--plot", metavar="PATH", help="also draw relative FLOPs to this PNG")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: one object for one model and length, else a list")
    parser.set_defaults(func=run_flops)
    return parser


def run_flops(args: argparse.Namespace) -> int:
    """Print the FLOPs table (or JSON) and optionally write the plot."""
    lengths = [n for group in args.length for n in group] if args.length else list(DEFAULT_LENGTHS)
    try:  # unknown model, bad segment or memory size: one line, nonzero exit
        configs = [get_config(name) for name in (args.model or OPT_CONFIGS)]
        reports = [
            flops_report(config, n, args.segment_size, args.mem)
            for config in configs
            for n in lengths
        ]
    except ValueError as err:
        raise SystemExit(f"rmt flops: {err}") from None
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        print(f"segment size {args.segment_size}, {args.mem} memory tokens")
        print(f"{'model':<10} {'length':>10} {'full attention':>15} {'RMT':>11} {'ratio':>8}")
        for r in reports:
            print(f"{r['model']:<10} {r['length']:>10,} {r['full_attention_flops']:>15.3e} "
                  f"{r['rmt_flops']:>11.3e} {r['ratio']:>8.2f}")
    if args.plot:
        lengths = sorted(set(lengths))
        path = plot_relative_flops(args.plot, configs, lengths, args.segment_size, args.mem)
        if not args.json:
            print(f"plot written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rmt flops ...`` in-process, e.g. ``main(["flops", "--json"])``."""
    parser = argparse.ArgumentParser(prog="rmt")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
