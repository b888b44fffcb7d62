"""`rmt train`, `rmt eval` and `rmt demo`."""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path
from typing import Optional

from .config import TrainConfig, apply_overrides

DEFAULT_EVAL_SEGMENTS = (1, 2, 4, 8, 16, 32, 64)
BACKBONE_HELP = ("pretrained backbone: a packaged model (smollm2-135m, minilm-l6), a local model folder or a hub name; "
                 "the same as --set backbone=NAME_OR_PATH")


def _segments(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"segment counts must be integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"segment counts must be positive, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an RMT through a curriculum", description=run_train.__doc__)
    p.add_argument("config", help="YAML or JSON config file (keys: see rmt.training.TrainConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set learning_rate=1e-4 --set rmt.num_mem_tokens=4")
    p.add_argument("--backbone", metavar="NAME_OR_PATH", help=BACKBONE_HELP)
    p.add_argument("--out", help="run directory (default: the config's out_dir)")
    p.add_argument("--no-resume", action="store_true", help="fail instead of resuming a run found in the run directory")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("eval", help="accuracy (or loss) by input length, against baselines", description=run_eval.__doc__)
    p.add_argument("run", help="a run directory of `rmt train`")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="another run to compare with (e.g. a no-memory model), repeatable")
    p.add_argument("--segments", type=_segments, default=list(DEFAULT_EVAL_SEGMENTS), help="comma list of segment counts")
    p.add_argument("--examples", type=_positive, default=200, help="examples per length")
    p.add_argument("--batch-size", type=int, help="examples per batch (default: the run's eval_batch_size); memory "
                   "holds one batch, so lower it for inputs of millions of tokens")
    p.add_argument("--task-arg", dest="task_args", action="append", default=[], metavar="NAME=VALUE",
                   help="evaluate on the task with this argument changed (value parsed as YAML), repeatable; e.g. "
                        "--task-arg decoy_rate=0 for a model trained with decoys")
    p.add_argument("--seed", type=int, help="draw the evaluation examples with this seed instead of the run's "
                   "(fresh examples, e.g. to check a reading on more of them)")
    p.add_argument("--write-threshold", type=float, metavar="BETA",
                   help="memory='armt' runs: read the run's model with this write threshold instead of the one it "
                        "was trained with (a write happens where its gate is above it)")
    p.add_argument("--out", help="where to write results.json and the plot (default: the run directory)")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("demo", help="train and evaluate a small RMT on detect & memorize (CPU, minutes)",
                              description=run_demo.__doc__)
    p.add_argument("--out", default="rmt-demo", help="output directory (default: ./rmt-demo)")
    p.add_argument("--config", help="a config to use instead of the bundled demo config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--backbone", metavar="NAME_OR_PATH", help=BACKBONE_HELP)
    p.add_argument("--segments", type=_segments, default=list(DEFAULT_EVAL_SEGMENTS), help="evaluation segment counts")
    p.add_argument("--examples", type=_positive, default=200, help="evaluation examples per length")
    p.set_defaults(func=run_demo)


def run_train(args: argparse.Namespace) -> int:
    """Train an RMT from a config file; an interrupted run in the same directory is resumed exactly."""
    from .trainer import train

    config = _load_config(args.config, args, ((f"out_dir={args.out}",) if args.out else ()))
    result = train(config, resume=not args.no_resume)
    print(json.dumps(result.stages, indent=2))
    print(f"trained model: {result.best_dir}")
    return 0


def _load_config(path, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> TrainConfig:
    """The config file with --set overrides, then --backbone (taken as a string, never parsed as YAML)."""
    config = TrainConfig.load(path, tuple(args.overrides) + extra)
    if args.backbone:
        config = TrainConfig.from_dict({**config.to_dict(), "backbone": args.backbone})
    return config


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate trained runs at many input lengths; print a table, write results.json and a plot."""
    from .trainer import load_run, make_tasks

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    run = Path(args.run)
    model, config = load_run(run)
    models = {"rmt": model}
    extra = {}
    if args.write_threshold is not None:
        models["rmt"].set_write_threshold(args.write_threshold)
        extra["write_threshold"] = models["rmt"].rmt_config.write_threshold
    config = with_task_args(config, args.task_args)
    if args.seed is not None:
        config = TrainConfig.from_dict({**config.to_dict(), "seed": args.seed})
        extra["seed"] = args.seed
    for item in args.baseline:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--baseline takes NAME=RUN_DIR, got {item!r}")
        models[name] = load_run(path)[0]
    tasks = make_tasks(config)
    for n in args.segments:  # bad task arguments fail here, in one line, before any evaluation
        tasks(n)
    out = Path(args.out or run)
    out.mkdir(parents=True, exist_ok=True)
    report = _evaluate_and_report(models, tasks, config, args.segments, args.examples, out, trained=[],
                                  title=f"{config.task}: {config.metric} by input length", extra=extra,
                                  batch_size=args.batch_size)
    print(report)
    return 0


def with_task_args(config: TrainConfig, items: list[str]) -> TrainConfig:
    """`config` with ``NAME=VALUE`` task arguments changed (values parsed as YAML)."""
    bad = [item for item in items if "=" not in item or not item.partition("=")[0].strip()]
    if bad:
        raise ValueError(f"--task-arg takes NAME=VALUE, got {bad[0]!r}")
    if not items:
        return config
    return TrainConfig.from_dict(apply_overrides(config.to_dict(), tuple(f"task_args.{a.strip()}" for a in items)))


def _evaluate_and_report(models, tasks, config: TrainConfig, segments, examples: int, out: Path, trained,
                         title: str, extra: Optional[dict] = None, batch_size: Optional[int] = None) -> str:
    """Evaluate every model at every length; write generalization.png and results.json; return the table."""
    from ..evaluation.by_length import format_table, metric_by_length, plot_by_length, write_json

    metric = config.metric
    results = metric_by_length(models, tasks, segments, examples, batch_size or config.eval_batch_size, metric=metric)
    task = tasks(1)
    chance = 1 / task.num_labels if task.num_labels else None
    plot_by_length(out / "generalization.png", segments, results, tasks.segment_size, trained, metric, chance, title)
    write_json(out / "results.json", {
        "task": config.task, "metric": metric, "segment_size": tasks.segment_size,
        "num_mem_tokens": config.rmt.get("num_mem_tokens"), "eval_segments": list(segments),
        "examples_per_length": examples, "chance": chance, "task_args": config.task_args,
        **{f"{name}_{metric}": values for name, values in results.items()}, **(extra or {}),
    })
    return format_table(segments, results, tasks.segment_size, trained, metric)


def run_demo(args: argparse.Namespace) -> int:
    """Train a small RMT (token memory) and ARMT (associative memory) from random initialisation on
    detect & memorize with the same curriculum, train a no-memory baseline, evaluate all three from
    1 to 64 segments, and write the table, generalization.png and results.json to --out."""
    from .trainer import make_tasks, train

    start = time.time()
    out = Path(args.out)
    if args.config:
        config = _load_config(args.config, args)
    else:
        with resources.as_file(resources.files("rmt") / "configs" / "demo.yaml") as path:
            config = _load_config(path, args)
    runs = {}
    for step, (name, memory) in enumerate((("rmt", "rmt"), ("armt", "armt")), start=1):
        memory_config = TrainConfig.from_dict({**config.to_dict(), "out_dir": str(out / name),
                                               "rmt": {**config.rmt, "memory": memory}})
        print(f"[{step}/4] training the {name.upper()} ({memory!r} memory): curriculum "
              f"{[s.segments for s in memory_config.stages()]} segments of {memory_config.rmt['segment_size']} tokens, "
              f"{memory_config.rmt['num_mem_tokens']} memory tokens")
        runs[name] = train(memory_config)
    rmt_config = runs["rmt"].config
    first = rmt_config.stages()[0]
    baseline_config = TrainConfig.from_dict({**config.to_dict(), "out_dir": str(out / "baseline"),
                                             "rmt": {**config.rmt, "num_mem_tokens": 0},
                                             "curriculum": [{"segments": first.segments, "max_steps": first.max_steps}]})
    print("[3/4] training the no-memory baseline (it sees only the last segment)")
    runs["baseline"] = train(baseline_config)
    print(f"[4/4] evaluating at {args.segments} segments, {args.examples} examples each")
    models = {name: run.load_model() for name, run in runs.items()}
    stages = rmt_config.stages()
    trained = sorted({n for s in stages for n in (range(1, s.segments + 1) if s.mix_shorter else [s.segments])})
    extra = {"train_segments": trained, "curriculum": [s.segments for s in stages],
             "stages": {name: runs[name].stages for name in ("rmt", "armt")},
             "baseline": "the same backbone without memory (num_mem_tokens=0), trained on 1 segment"}
    table = _evaluate_and_report(models, make_tasks(config), config, args.segments, args.examples, out, trained,
                                 f"RMT, ARMT and no memory: {config.task}", extra)
    seconds = time.time() - start
    results_file = out / "results.json"
    results = json.loads(results_file.read_text())
    results["seconds"] = seconds
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"\nwrote {results_file} and {out / 'generalization.png'} in {seconds / 60:.1f} min")
    return 0
