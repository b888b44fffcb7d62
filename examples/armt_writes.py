"""Where an ARMT writes: on a detect & memorize run, how many write gates open at the fact and how
many on the background text around it, per layer, and (``--show``) the background segments written.

A write happens where its gate ``beta`` is above ``write_threshold`` (ARMT as published: above 0,
that is everywhere; `--above` sets the level counted instead). Writes on the background are what
a long input can overwrite the fact with.

    .venv/bin/python examples/armt_writes.py runs/armt-gate/gate-128-free --segments 1024 --examples 32 --show 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rmt.training import load_run
from rmt.training.cli import with_task_args
from rmt.training.trainer import make_tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory of `rmt train` with memory='armt'")
    parser.add_argument("--segments", type=int, default=256)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--above", type=float, default=None, help="count gates above this (default: the threshold)")
    parser.add_argument("--task-arg", dest="task_args", action="append", default=[], metavar="NAME=VALUE",
                        help="read the task with this argument changed, e.g. decoy_rate=0 (as `rmt eval --task-arg`)")
    parser.add_argument("--show", type=int, default=0, help="print the written background segments of this many examples")
    args = parser.parse_args(argv)

    run = Path(args.run)
    model, config = load_run(run)
    config = with_task_args(config, args.task_args)
    model.eval()
    if model.rmt_config.memory != "armt":
        raise SystemExit(f"{run}: memory={model.rmt_config.memory!r}; this reads the write gates of memory='armt'")
    task = make_tasks(config)(args.segments)
    size = model.rmt_config.segment_size
    level = model.rmt_config.write_threshold if args.above is None else args.above

    gates: list[list[torch.Tensor]] = [[] for _ in model.mechanism.assoc]  # per layer: (B, M) per segment
    for layer, block in enumerate(model.mechanism.assoc):  # W_beta runs only in the write
        block.W_beta.register_forward_hook(lambda mod, inp, out, layer=layer: gates[layer].append(torch.sigmoid(out).amax(-1)))
    examples = [task.example(i, "validation") for i in range(args.examples)]
    facts = [task.spans(i, "validation")["facts"][0] for i in range(args.examples)]
    with torch.no_grad():
        predicted = model(**task.collate(examples)).logits.argmax(-1).tolist()
    correct = sum(p == e["label"] for p, e in zip(predicted, examples))
    print(f"{args.segments} segments, {args.examples} examples: accuracy {correct / args.examples:.3f}; "
          f"a write counts where beta > {level}")

    near = torch.zeros(args.segments, args.examples, dtype=torch.bool)  # the fact's segments and the next
    for j, fact in enumerate(facts):
        near[fact["start"] // size : (fact["end"] - 1) // size + 2, j] = True
    written = [torch.stack(per_segment) > level for per_segment in gates]  # per layer (S, B, M)
    for layer, on in enumerate(written):
        mask = near.unsqueeze(-1).expand_as(on)
        print(f"layer {layer}: gates writing at the fact {on[mask].float().mean():.3f}, on the background "
              f"{on[~mask].float().mean():.5f} ({int(on[~mask].sum())} of {int((~mask).sum())})")
    for j in range(min(args.show, args.examples)):
        fact = facts[j]
        print(f"\nexample {j}: {fact['text']!r} in segment {fact['start'] // size}; "
              f"answer {task.label_names[examples[j]['label']]}, predicted {task.label_names[predicted[j]]}")
        for s in range(args.segments):
            if not near[s, j] and any(on[s, j].any() for on in written):
                text = task.decode(examples[j]["input_ids"][s * size : (s + 1) * size])
                print(f"  segment {s} written: {text}")


if __name__ == "__main__":
    main()
