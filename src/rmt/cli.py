"""The `rmt` command: one subcommand per job, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from .analysis import cli as flops_cli
    from .evaluation import babilong_cli
    from .tasks import cli as tasks_cli
    from .training import cli as training_cli

    parser = argparse.ArgumentParser(prog="rmt", description="Recurrent Memory Transformer: read inputs far longer than a model's context.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (training_cli, tasks_cli, flops_cli, babilong_cli):
        module.add_subparser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as err:  # bad input or a missing package: one line
        print(f"rmt {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
