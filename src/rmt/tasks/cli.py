"""The ``rmt tasks`` subcommand: list the tasks, or print a sample of one."""

from __future__ import annotations

import argparse

from .base import get_task, list_tasks, task_description


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``tasks`` on an ``argparse`` subparsers object; the handler is ``args.func(args)``."""
    parser = subparsers.add_parser(
        "tasks", help="list the tasks, or print a sample of one",
        description="Without NAME: every task with a one-line description. With NAME: a sample.")
    parser.add_argument("name", nargs="?", help="a task name from the list")
    parser.add_argument("--seed", type=int, default=0, help="the task seed (default 0)")
    parser.add_argument("--length", default=None, help="input length in tokens, e.g. 1024 or 4k (tasks with a length)")
    parser.add_argument("--index", type=int, default=0, help="which example (default 0)")
    parser.add_argument("--split", default="train", choices=("train", "validation", "test"))
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the list or the sample; returns the exit code."""
    if args.name is None:
        width = max(map(len, list_tasks()))
        for name in list_tasks():
            print(f"{name:<{width}}  {task_description(name)}")
        return 0
    kwargs = {"seed": args.seed}
    if args.length is not None:
        kwargs["length"] = int(args.length) if args.length.isdigit() else args.length
    try:
        task = get_task(args.name, **kwargs)
    except TypeError:  # the task's constructor has no length option
        raise SystemExit(f"error: task {args.name!r} has no --length option") from None
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        print(task.describe(args.index, args.split))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``rmt tasks`` on its own (``python -m rmt.tasks.cli``)."""
    parser = argparse.ArgumentParser(prog="rmt")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tasks", *(argv or [])] if argv is not None else None)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
