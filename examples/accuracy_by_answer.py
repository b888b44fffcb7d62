"""Accuracy of a classification run by the right answer, and what it answers when wrong: which
facts a memory drops (e.g. the place words its write gate learned to ignore).

    .venv/bin/python examples/accuracy_by_answer.py runs/decoyG --segments 64 --examples 100 --task-arg decoy_rate=0
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from rmt.training.cli import _load_best, _run_config, with_task_args
from rmt.training.trainer import make_tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories of `rmt train` on a classification task")
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--task-arg", dest="task_args", action="append", default=[], metavar="NAME=VALUE",
                        help="read the task with this argument changed, e.g. decoy_rate=0 (as `rmt eval --task-arg`)")
    args = parser.parse_args(argv)
    for run in map(Path, args.runs):
        task = make_tasks(with_task_args(_run_config(run), args.task_args))(args.segments)
        if not task.num_labels:
            raise SystemExit(f"{run}: task {task.name!r} is not a classification task")
        model = _load_best(run).eval()
        examples = [task.example(i, "validation") for i in range(args.examples)]
        with torch.no_grad():
            predicted = model(**task.collate(examples)).logits.argmax(-1).tolist()
        asked, right, instead = Counter(), Counter(), Counter()
        for guess, example in zip(predicted, examples):
            answer = task.label_names[example["label"]]
            asked[answer] += 1
            if guess == example["label"]:
                right[answer] += 1
            else:
                instead[task.label_names[guess]] += 1
        print(f"{run} ({args.segments} segments, {args.examples} examples): accuracy {sum(right.values()) / args.examples:.3f}")
        print("  right, by answer: " + ", ".join(f"{name} {right[name]}/{asked[name]}" for name in task.label_names if asked[name]))
        print("  answered when wrong: " + (", ".join(f"{name} {n}" for name, n in instead.most_common()) or "-"))


if __name__ == "__main__":
    main()
