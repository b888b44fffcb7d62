"""Which answer a trained classification run gives for each true answer at a given length.

    python examples/confusion_by_length.py runs/reproduce/fig5-memorize/rmt --segments 64 --examples 128

Prints the accuracy and one row per true label: how many of its examples got each predicted label.
A memory that falls into a few fixed points over long inputs shows as whole rows sent to one label.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from rmt.evaluation.by_length import _predict
from rmt.training.config import TrainConfig
from rmt.training.trainer import load_trained, make_tasks


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory of `rmt train` (a classification task)")
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    config = TrainConfig.from_dict(json.loads((args.run / "train_config.json").read_text()))
    state = json.loads((args.run / "state.json").read_text())
    model = load_trained(config, str(args.run / state["stages"][-1]["best_dir"]))
    task = make_tasks(config)(args.segments)
    if task.kind != "classification":
        raise SystemExit(f"{args.run}: task {config.task} is not a classification task")
    examples = [task.example(i, "validation") for i in range(args.examples)]
    predicted = []
    for start in range(0, len(examples), args.batch_size):
        predicted += _predict(model, task, examples[start:start + args.batch_size])[0]
    gold = [ex["label"] for ex in examples]
    counts = collections.Counter(zip(gold, predicted))
    print(f"{config.task} at {args.segments} segments: accuracy {sum(g == p for g, p in zip(gold, predicted)) / len(gold):.3f}")
    for label in sorted(set(gold)):
        row = {p: n for (g, p), n in sorted(counts.items()) if g == label}
        print(f"  true {label}: predicted {row}")


if __name__ == "__main__":
    main()
