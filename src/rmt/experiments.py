"""The papers' experiments as configs plus one command: `rmt reproduce NAME`.

An experiment (``configs/experiments/NAME.yaml``) names a base training config, the runs that differ
from it (each a few dotted overrides), and how to evaluate them::

    title: "Figure 11: curriculum against training on the final length"
    paper: "Bulatov et al. 2024 (AAAI), Fig. 11"
    base: demo                      # a bundled config (configs/NAME.yaml), a file, or a mapping
    set: {rmt.num_mem_tokens: 8}    # overrides for every run
    runs:
      curriculum: {curriculum: [1, 2, 3, 4]}
      direct: {curriculum: [4]}
    eval: {segments: [1, 2, 4, 8], examples: 200}
    # or  eval: {stages: true, up_to: 4}: every stage's best checkpoint (a model trained on k
    # segments) evaluated from 1 to up_to * k segments, drawn as a heatmap (the report's Fig. 4)
    # eval: {..., by_position: 9}: language models also get the loss at each position of the last
    # segment at 9 segments, drawn in NAME-positions.png (the report's Fig. 8)
    # eval: {..., task_args: {decoy_rate: 0}}: evaluate on the task with these arguments changed
    # (runs trained with decoys, read on the task without them)

A run may start from another run of the experiment, trained before it: ``init_from: "@other"``.

A suite names experiments instead of runs, to show them in one table and one figure (a panel per
experiment, a row per score)::

    title: "NeurIPS 2022 Fig. 3-4: copy, reverse, associative retrieval"
    parts: [neurips-copy, neurips-reverse, neurips-retrieval]

Its parts are trained and kept beside it (``OUT/../PART``), exactly as when each is reproduced alone,
so neither way trains or measures anything twice.

Every run trains with `rmt.training.train` into ``OUT/RUN`` (so a killed experiment resumes where
it stopped), each evaluation is kept in ``OUT/evals/`` as soon as it is measured, and the command
ends with ``OUT/results.json``, ``OUT/NAME.png`` and a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import textwrap
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from .config import RMTConfig
from .training.config import TrainConfig, with_values
from .training.cli import _positive, _segments
from .training.run_dir import write_json_atomic

EXPERIMENT_KEYS = {"title", "paper", "base", "set", "runs", "eval"}
SUITE_KEYS = {"title", "paper", "parts"}
EVAL_KEYS = {"segments", "examples", "batch_size", "stages", "up_to", "by_position", "task_args"}


@dataclass
class Experiment:
    name: str
    title: str
    paper: str
    runs: dict[str, TrainConfig]
    segments: list[int] = field(default_factory=list)
    examples: int = 100
    batch_size: Optional[int] = None
    stages: bool = False  # evaluate every stage's best checkpoint, each from 1 to up_to x its length
    up_to: int = 4
    by_position: Optional[int] = None  # causal LMs: loss by position in the last segment at this many segments
    task_args: dict[str, Any] = field(default_factory=dict)  # evaluated on the task with these arguments changed

    @classmethod
    def load(cls, name_or_path: str, out: Path) -> "Experiment":
        """A bundled experiment by name, or a YAML file; its runs are placed under `out`."""
        path = experiment_path(name_or_path)
        data = _read_yaml(path)
        if "parts" in data:
            raise ValueError(f"{path} is a suite (it has `parts`), not an experiment: reproduce it by name, or "
                             "name one of its parts")
        unknown = set(data) - EXPERIMENT_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; an experiment has {sorted(EXPERIMENT_KEYS)}")
        base = data.get("base", "demo")
        base = dict(base) if isinstance(base, dict) else _read_yaml(Path(base) if Path(base).is_file()
                                                                     else _bundled("", base))
        runs = data.get("runs")
        if not isinstance(runs, dict) or not runs:
            raise ValueError(f"{path}: `runs` must map run names to overrides, e.g. {{rmt: {{}}, armt: {{rmt.memory: armt}}}}")
        configs = {}
        for run, changes in runs.items():
            merged = _with(_with(base, data.get("set") or {}, path), changes or {}, path)
            start = merged.get("init_from")
            if isinstance(start, str) and start.startswith("@"):  # another run of this experiment, trained first
                if start[1:] not in configs:
                    raise ValueError(f"{path}: run {run!r}: init_from={start} names no earlier run of this experiment "
                                     f"(earlier runs: {', '.join(configs) or 'none'})")
                merged["init_from"] = str(out / start[1:])
            try:
                configs[str(run)] = TrainConfig.from_dict({**merged, "out_dir": str(out / str(run))})
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: run {run!r}: {err}") from None
        spec = data.get("eval") or {}
        unknown = set(spec) - EVAL_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown eval keys {sorted(unknown)}; use {sorted(EVAL_KEYS)}")
        segments = [int(n) for n in spec.get("segments", [])]
        if not spec.get("stages") and not segments:
            raise ValueError(f"{path}: eval needs `segments: [...]` (or `stages: true` for a heatmap)")
        return cls(name=path.stem, title=str(data.get("title", path.stem)), paper=str(data.get("paper", "")),
                   runs=configs, segments=segments, examples=int(spec.get("examples", 100)),
                   batch_size=spec.get("batch_size"), stages=bool(spec.get("stages", False)),
                   up_to=int(spec.get("up_to", 4)),
                   by_position=int(spec["by_position"]) if spec.get("by_position") is not None else None,
                   task_args=_eval_task_args(spec.get("task_args"), path))


def _eval_task_args(value: Any, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: eval.task_args must map task arguments to values, e.g. {{decoy_rate: 0}}, got {value!r}")
    return dict(value)


def experiment_path(name_or_path: str) -> Path:
    """An experiment or suite YAML file, or the bundled one of that name."""
    path = Path(name_or_path)
    return path if path.is_file() else _bundled("experiments", name_or_path)


def read_suite(path: Path) -> Optional[dict[str, Any]]:
    """A suite file's mapping (title, paper, parts), checked; None when the file is an experiment."""
    data = _read_yaml(path)
    if "parts" not in data:
        return None
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; a suite has {sorted(SUITE_KEYS)}")
    parts = data["parts"]
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"{path}: `parts` must list experiments by name or file, e.g. [neurips-copy, neurips-reverse]")
    for part in parts:
        if "parts" in _read_yaml(experiment_path(part)):
            raise ValueError(f"{path}: part {part!r} is itself a suite; list its experiments instead")
    if len({Path(p).stem for p in parts}) < len(parts):
        raise ValueError(f"{path}: two parts have the same name; their runs would share a folder")
    return {"title": str(data.get("title", path.stem)), "paper": str(data.get("paper", "")), "parts": parts}


def _bundled(folder: str, name: str) -> Path:
    root = resources.files("rmt") / "configs"
    path = Path(str(root / folder / f"{name}.yaml"))
    if not path.is_file():
        known = sorted(p.stem for p in Path(str(root / folder)).glob("*.yaml"))
        raise FileNotFoundError(f"no file {name!r} and no bundled {'experiment' if folder else 'config'} of that "
                                f"name; bundled: {', '.join(known)}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


def _with(data: dict[str, Any], changes: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        return with_values(data, changes.items())
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def run(experiment: Experiment, out: Path) -> dict[str, Any]:
    """Train every run (resuming), evaluate it (keeping what was measured), write results.json and the plot."""
    from .training import train
    from .training.trainer import make_tasks

    started = time.time()
    results: dict[str, Any] = {"experiment": experiment.name, "title": experiment.title, "paper": experiment.paper,
                               "examples_per_length": experiment.examples, "runs": {}}
    timing_file = out / "train_seconds.json"
    for name, config in experiment.runs.items():
        print(f"[{name}] training: {config.task}, curriculum {[s.segments for s in config.stages()]}, rmt {config.rmt}")
        t0 = time.time()
        trained = train(config)
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        timing[name] = round(timing.get(name, 0.0) + time.time() - t0, 1)  # over every call, a resumed run's too
        write_json_atomic(timing_file, timing)
        entry = {"config": {k: v for k, v in config.to_dict().items() if k != "out_dir"},
                 "stages": trained.stages, "train_seconds": timing[name],
                 "segment_size": int(config.rmt.get("segment_size", RMTConfig.segment_size)), "metric": config.metric}
        checkpoints = ([(f"{s['segments']}", s["best_dir"], s["segments"]) for s in trained.stages] if experiment.stages
                       else [("final", trained.stages[-1]["best_dir"], None)])
        entry["eval"] = {}
        if experiment.task_args:  # evaluated on the task with some arguments changed (e.g. without training decoys)
            config = TrainConfig.from_dict({**config.to_dict(), "task_args": {**config.task_args, **experiment.task_args}})
        tasks = functools.cache(lambda config=config: make_tasks(config))  # built once per run, when first needed
        for label, best_dir, length in checkpoints:
            segments = list(range(1, experiment.up_to * length + 1)) if length else experiment.segments
            entry["eval"][label] = _evaluated(out / "evals" / f"{name}-{label}.json", config, tasks, best_dir,
                                              segments, experiment)
        if experiment.by_position:
            entry["by_position"] = _positions(out / "evals" / f"{name}-positions.json", config, tasks,
                                              trained.stages[-1]["best_dir"], experiment)
        results["runs"][name] = entry
    results["seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / "results.json", results)
    draw(results, out / f"{experiment.name}.png", heatmap=experiment.stages)
    if experiment.by_position:
        draw_positions(results, out / f"{experiment.name}-positions.png")
    return results


def _spec(config: TrainConfig, best_dir: str, experiment: Experiment, **what: Any) -> dict:
    """What a kept measurement depends on: the model, the examples, the task and `what` was measured."""
    return {"model": str(Path(best_dir).resolve()), "examples": experiment.examples, "task": config.task,
            "task_args": config.task_args, **what}


def _evaluated(cache: Path, config: TrainConfig, tasks: Callable[[], Any], best_dir: str, segments: list[int],
               experiment: Experiment) -> dict:
    """Every metric of the task (the run's own first) for the model in `best_dir` at each segment
    count, e.g. exact match beside token accuracy; read back when already measured."""
    from .evaluation.by_length import evaluate
    from .training.trainer import load_trained

    spec = _spec(config, best_dir, experiment, metrics="all")
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if done.get("spec") != spec:
        done = {"spec": spec, "values": {}}
    missing = [n for n in segments if str(n) not in done["values"]]
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        model = load_trained(config, best_dir)
        for n in missing:  # one length at a time, kept at once: a killed experiment loses one length at most
            t0 = time.time()
            metrics = evaluate(model, tasks()(n), experiment.examples, experiment.batch_size or config.eval_batch_size)
            done["values"][str(n)] = {"metrics": metrics, "seconds": round(time.time() - t0, 1)}
            write_json_atomic(cache, done)
            print(f"  {cache.stem} at {n} segments: {config.metric} {metrics[config.metric]:.3f} ({time.time() - t0:.0f} s)")
    names = [config.metric, *sorted(set(done["values"][str(segments[0])]["metrics"]) - {config.metric})]
    return {"segments": segments, **{k: [done["values"][str(n)]["metrics"][k] for n in segments] for k in names},
            "eval_seconds": round(sum(done["values"][str(n)]["seconds"] for n in segments), 1)}


def _positions(cache: Path, config: TrainConfig, tasks: Callable[[], Any], best_dir: str,
               experiment: Experiment) -> dict:
    """The loss at each position of the last segment at `experiment.by_position` segments; read back when measured."""
    from .evaluation.by_position import loss_by_position
    from .training.trainer import load_trained

    n = experiment.by_position
    spec = _spec(config, best_dir, experiment, segments=n)
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if done.get("spec") != spec:
        t0 = time.time()
        losses = loss_by_position(load_trained(config, best_dir), tasks()(n), experiment.examples,
                                  experiment.batch_size or config.eval_batch_size)
        done = {"spec": spec, "loss": [None if math.isnan(v) else v for v in losses], "seconds": round(time.time() - t0, 1)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, done)
        print(f"  {cache.stem}: loss by position at {n} segments ({done['seconds']:.0f} s)")
    return {"segments": n, "loss": done["loss"], "seconds": done["seconds"]}


def draw_positions(results: dict[str, Any], path: Path) -> None:
    """The loss at each position of the last segment, one curve per run (the report's Fig. 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, entry in results["runs"].items():
        losses = [float("nan") if v is None else v for v in entry["by_position"]["loss"]]
        ax.plot(range(len(losses)), losses, label=name)
    n = next(iter(results["runs"].values()))["by_position"]["segments"]
    ax.set_xlabel(f"position in the last segment (of {n} segments)")
    ax.set_ylabel("loss, nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, results["title"], path)


def draw(results: dict[str, Any], path: Path, heatmap: bool) -> None:
    """Curves of the metric by input length (one per run), or the heatmap of trained x evaluated length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = results["runs"]
    if heatmap:
        fig, axes = plt.subplots(1, len(runs), figsize=(6.4 * len(runs), 3.6), squeeze=False)
        for ax, (name, entry) in zip(axes[0], runs.items()):
            metric = entry["metric"]
            rows = list(entry["eval"].items())
            width = max(len(e["segments"]) for _, e in rows)
            grid = np.full((len(rows), width), np.nan)
            for i, (_, e) in enumerate(rows):
                grid[i, :len(e[metric])] = e[metric]
            image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                              extent=(0.5, width + 0.5, -0.5, len(rows) - 0.5))
            ax.set_yticks(range(len(rows)), [label for label, _ in rows])
            ax.set_xlabel("evaluated on, segments")
            ax.set_ylabel("trained on, segments")
            ax.set_title(f"{name}: {metric}", fontsize=9)
            fig.colorbar(image, ax=ax)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for name, entry in runs.items():
            e = entry["eval"]["final"]
            ax.plot([n * entry["segment_size"] for n in e["segments"]], e[entry["metric"]], marker="o", label=name)
        metric = next(iter(runs.values()))["metric"]
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input length, tokens")
        ax.set_ylabel(metric)
        if metric in ("accuracy", "exact_match"):
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, results["title"], path)


def _save(fig: Any, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(textwrap.fill(title, 80), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    lines = [results["title"]]
    for name, entry in results["runs"].items():
        for label, e in entry["eval"].items():
            for metric in _shown(entry["metric"], e):
                cells = "  ".join(f"{n}:{v:.3f}" for n, v in zip(e["segments"], e[metric]))
                lines.append(f"{name}{'' if label == 'final' else f' (trained on {label})'}: {metric} by segments  {cells}")
        if "by_position" in entry:
            losses = [v for v in entry["by_position"]["loss"] if v is not None]
            quarter = max(len(losses) // 4, 1)
            lines.append(f"{name}: loss at {entry['by_position']['segments']} segments, last segment's first quarter "
                         f"{sum(losses[:quarter]) / quarter:.3f}, last quarter {sum(losses[-quarter:]) / quarter:.3f}")
    lines.append(f"{results['seconds'] / 60:.1f} min in this call")
    return "\n".join(lines)


def _shown(metric: str, evaluated: dict) -> list[str]:
    """The run's metric, then the task's other scores (token accuracy beside exact match), not the
    loss and what derives from it (kept in results.json)."""
    derived = {"loss", "perplexity", "bits_per_token"}
    return [metric, *(k for k in evaluated if k not in ("segments", "eval_seconds", metric, *derived))]


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reproduce", help="run one of the papers' experiments (train, evaluate, plot)",
                              description=run_reproduce.__doc__)
    p.add_argument("experiment", nargs="?", help="a bundled experiment's name (see --list) or an experiment YAML file")
    p.add_argument("--out", help="output folder (default: runs/reproduce/NAME); an interrupted experiment resumes")
    p.add_argument("--segments", type=_segments, help="evaluate at these segment counts instead of the experiment's "
                   "(lengths already measured are read back, so a shorter pass now and the full one later cost nothing twice)")
    p.add_argument("--examples", type=_positive, help="examples per length instead of the experiment's")
    p.add_argument("--list", action="store_true", help="list the bundled experiments")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    """Train and evaluate the runs of an experiment (or of every experiment of a suite); write
    results.json, NAME.png and print a table."""
    if args.list or not args.experiment:
        for path in sorted(Path(str(resources.files("rmt") / "configs" / "experiments")).glob("*.yaml")):
            print(f"{path.stem:<24} {_read_yaml(path).get('title', '')}")
        return 0 if args.list else 2
    path = experiment_path(args.experiment)
    name = path.stem
    out = Path(args.out or Path("runs") / "reproduce" / name)
    suite = read_suite(path)
    experiments = ([Experiment.load(part, out.parent / Path(part).stem) for part in suite["parts"]] if suite
                   else [Experiment.load(str(path), out)])
    for experiment in experiments:  # every part is checked before any trains
        if args.segments:
            if experiment.stages:
                raise ValueError(f"--segments: experiment {experiment.name} evaluates every stage to "
                                 f"{experiment.up_to}x its length; it takes no segment counts")
            experiment.segments = args.segments
        experiment.examples = args.examples or experiment.examples
    if suite:
        results = {"suite": name, "title": suite["title"], "paper": suite["paper"],
                   "parts": {e.name: run(e, out.parent / e.name) for e in experiments}}
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "results.json", results)
        draw_suite(results, out / f"{name}.png")
        print(suite_table(results))
    else:
        print(table(run(experiments[0], out)))
    print(f"wrote {out / 'results.json'} and {out / (name + '.png')}")
    return 0


def suite_table(suite: dict[str, Any]) -> str:
    """One block per part: a row per run, a column per length, every shown score in each cell."""
    lines = [suite["title"]]
    for part, results in suite["parts"].items():
        runs = results["runs"]
        first = next(iter(runs.values()))
        metrics = _shown(first["metric"], first["eval"]["final"])
        segments = first["eval"]["final"]["segments"]
        width = 5 * len(metrics) - 1  # "0.91/0.99"
        lines.append("")
        lines.append(f"{part} ({' / '.join(metrics)}), by segments")
        lines.append(f"{'':<20}" + "".join(f"{n:>{width + 2}}" for n in segments))
        for run_name, entry in runs.items():
            e = entry["eval"]["final"]
            cells = ["/".join(f"{e[m][i]:.2f}" for m in metrics) for i in range(len(e["segments"]))]
            lines.append(f"{run_name:<20}" + "".join(f"{c:>{width + 2}}" for c in cells))
    return "\n".join(lines)


def draw_suite(suite: dict[str, Any], path: Path) -> None:
    """A panel per part (columns) and per shown score (rows): each run's score by segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = suite["parts"]
    rows = max(len(_shown(r["metric"], r["eval"]["final"])) for e in parts.values() for r in e["runs"].values())
    fig, axes = plt.subplots(rows, len(parts), figsize=(4.2 * len(parts), 3.2 * rows), squeeze=False)
    for col, (part, results) in enumerate(parts.items()):
        for name, entry in results["runs"].items():
            e = entry["eval"]["final"]
            for row, metric in enumerate(_shown(entry["metric"], e)):
                axes[row][col].plot(e["segments"], e[metric], marker="o", markersize=3, label=name)
                axes[row][col].set_ylabel(metric)  # the same for every run of a part
        for ax in (row[col] for row in axes):
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("input length, segments")
            ax.grid(alpha=0.3)
        axes[0][col].set_title(part, fontsize=9)
    axes[0][0].legend(fontsize=7)
    _save(fig, suite["title"], path)
