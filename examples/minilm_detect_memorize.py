"""all-MiniLM-L6-v2 (BERT) + RMT on detect & memorize, 6-way classification, with the curriculum.

A qa1 fact ("Mary went to the kitchen.") hides at a random place in book text; the question at the
end asks where the person is. The model is trained on 1 then 2 segments with `rmt.training.train`
(the backbone given by its packaged short name) and evaluated on 1, 2, 4 and 8 segments, next to
the same model trained the same way without memory (``num_mem_tokens=0``: it sees the last
segment only, so beyond one segment it can answer only when the fact falls in that segment).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python examples/minilm_detect_memorize.py --out runs/minilm-dm

Needs ``pip install 'rmt[pretrained]'`` (see docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import rmt
from rmt.evaluation.by_length import format_table, metric_by_length
from rmt.training import TrainConfig, train
from rmt.training.trainer import TaskFactory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segment-size", type=int, default=64)
    parser.add_argument("--num-mem-tokens", type=int, default=10)
    parser.add_argument("--curriculum", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps-per-stage", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-segments", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--eval-examples", type=int, default=128)
    parser.add_argument("--no-baseline", action="store_true", help="skip the num_mem_tokens=0 run")
    parser.add_argument("--out", default="runs/minilm-dm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    runs = [("RMT", args.num_mem_tokens)] + ([] if args.no_baseline else [("no memory", 0)])
    models, seconds, factory = {}, {}, None
    for name, m in runs:
        config = TrainConfig(
            task="detect-and-memorize", task_args={"kind": "classification"}, backbone="minilm-l6",
            rmt={"num_mem_tokens": m, "segment_size": args.segment_size}, curriculum=args.curriculum,
            steps_per_stage=args.steps_per_stage, batch_size=args.batch_size, learning_rate=args.lr,
            warmup_ratio=0.1, eval_every=args.steps_per_stage, eval_examples=64, eval_batch_size=32,
            save_every=args.steps_per_stage, out_dir=str(Path(args.out) / f"m{m}"))
        start = time.time()
        result = train(config, progress=False)
        seconds[name] = time.time() - start
        models[name] = result.load_model().eval()
        print(f"{name}: trained in {seconds[name]:.0f}s; stages {result.stages}", flush=True)
        if factory is None:
            _, tokenizer = rmt.load_backbone("minilm-l6", task="classification", num_labels=6)
            factory = TaskFactory(config, tokenizer)
    accuracy = metric_by_length(models, factory, args.eval_segments, args.eval_examples, batch_size=32, progress=False)
    table = format_table(args.eval_segments, accuracy, args.segment_size, trained=args.curriculum)
    print(table)
    print(f"training seconds {seconds}; total {time.time() - t0:.0f}s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(
        {"args": vars(args), "segments": args.eval_segments, "accuracy": accuracy, "train_seconds": seconds,
         "total_seconds": time.time() - t0}, indent=2) + "\n")


if __name__ == "__main__":
    main()
