"""Accuracy of a classification run by the right answer, and what it answers instead when wrong:
which facts a memory drops (the place words an ARMT's write gate learned to ignore, or the facts
that share a fixed point of a token memory over long inputs); on the memory tasks also the errors
on facts cut by a segment boundary and on facts whole in one segment.

    .venv/bin/python examples/accuracy_by_answer.py runs/decoyG --segments 64 --examples 100 --task-arg decoy_rate=0
    .venv/bin/python examples/accuracy_by_answer.py runs/reproduce/fig5-memorize/rmt --segments 64 --examples 128
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from rmt.evaluation.by_length import _predict
from rmt.training import load_run
from rmt.training.cli import with_task_args
from rmt.training.trainer import make_tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories of `rmt train` on a classification task")
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--task-arg", dest="task_args", action="append", default=[], metavar="NAME=VALUE",
                        help="read the task with this argument changed, e.g. decoy_rate=0 (as `rmt eval --task-arg`)")
    args = parser.parse_args(argv)
    for run in args.runs:
        model, config = load_run(run)
        task = make_tasks(with_task_args(config, args.task_args))(args.segments)
        if task.kind != "classification":
            raise SystemExit(f"{run}: task {task.name!r} is not a classification task")
        examples = [task.example(i, "validation") for i in range(args.examples)]
        predicted: list[int] = []
        with torch.no_grad():
            for start in range(0, len(examples), args.batch_size):
                predicted += _predict(model, task, examples[start:start + args.batch_size])[0]
        names = task.label_names or [str(i) for i in range(task.num_labels)]
        pairs = Counter((names[e["label"]], names[p]) for e, p in zip(examples, predicted))
        right = sum(n for (answer, guess), n in pairs.items() if answer == guess)
        print(f"{run} ({args.segments} segments, {args.examples} examples): accuracy {right / args.examples:.3f}")
        for answer in names:
            asked = sum(n for (a, _), n in pairs.items() if a == answer)
            if asked:
                instead = ", ".join(f"{guess} {n}" for (a, guess), n in pairs.most_common() if a == answer != guess)
                print(f"  {answer}: {pairs[answer, answer]}/{asked} right" + (f"; answered {instead}" if instead else ""))
        if hasattr(task, "spans"):  # a fact cut by a segment boundary is read half in each segment
            size = model.rmt_config.segment_size
            cut = [(f := task.spans(i, "validation")["facts"][0])["start"] // size != (f["end"] - 1) // size
                   for i in range(args.examples)]
            wrong = [p != e["label"] for p, e in zip(predicted, examples)]
            for name, where in (("cut by a segment boundary", True), ("whole in one segment", False)):
                print(f"  facts {name}: {sum(w for w, c in zip(wrong, cut) if c == where)} of "
                      f"{sum(c == where for c in cut)} wrong")


if __name__ == "__main__":
    main()
