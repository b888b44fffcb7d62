"""The `rmt` command: one subcommand per job, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import yaml
from safetensors import SafetensorError

# bad input, a missing package, a file that cannot be read or written: one line, exit code 2
USER_ERRORS = (ValueError, TypeError, ImportError, OSError, yaml.YAMLError, SafetensorError)


def build_parser() -> argparse.ArgumentParser:
    from . import experiments
    from .analysis import attention_cli
    from .analysis import cli as flops_cli
    from .evaluation import babilong_cli
    from .tasks import cli as tasks_cli
    from .training import cli as training_cli

    parser = argparse.ArgumentParser(prog="rmt", description="Recurrent Memory Transformer: read inputs far longer than a model's context.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (training_cli, tasks_cli, flops_cli, attention_cli, babilong_cli, experiments):
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
    except USER_ERRORS as err:
        print(f"rmt {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
