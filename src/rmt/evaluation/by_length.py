"""How far a model generalises: the task's metric as a function of input length in segments."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..recurrent import RecurrentMemoryTransformer
from ..tasks.base import Task, predictions_from_logits

TaskFactory = Callable[[int], Task]  # segment count -> the task at that length


@torch.no_grad()
def evaluate_models(models: Mapping[str, RecurrentMemoryTransformer], task: Task, num_examples: int,
                    batch_size: int = 32, split: str = "validation", progress: str | None = None) -> dict[str, dict[str, float]]:
    """Every model's metric (and mean loss) on the same first `num_examples` examples of `split`.

    Examples are generated one batch at a time and every model reads the batch before the next is
    made; only what scoring needs (`Task.scoring_view`) is kept. Memory therefore holds one batch of
    inputs however long they are (evaluating at millions of tokens per example). ``progress``: a
    label for a bar over the examples (none by default).
    """
    from tqdm.auto import tqdm

    predictions: dict[str, list[Any]] = {name: [] for name in models}
    loss_sums = {name: 0.0 for name in models}
    kept: list[dict] = []
    bar = tqdm(total=num_examples, desc=progress, unit="example", leave=False, disable=progress is None)
    for start in range(0, num_examples, batch_size):
        chunk = [task.example(i, split) for i in range(start, min(start + batch_size, num_examples))]
        for name, model in models.items():
            preds, loss = _predict(model, task, chunk)
            predictions[name] += preds
            loss_sums[name] += loss * len(chunk)
        kept += [task.scoring_view(ex) for ex in chunk]
        bar.update(len(chunk))
    bar.close()
    return {name: {**task.score(predictions[name], kept), **_loss_metrics(task, loss_sums[name] / max(len(kept), 1))}
            for name in models}


def _loss_metrics(task: Task, loss: float) -> dict[str, float]:
    """The mean loss, and what a task derives from it (language modelling: perplexity, bits per token)."""
    derive = getattr(task, "loss_metrics", None)
    return derive(loss) if derive is not None else {"loss": loss}


def metric_names(task: Task) -> list[str]:
    """The metrics `evaluate` reports for `task`, known before anything is evaluated."""
    return sorted({*task.score([], []), *_loss_metrics(task, 0.0)})


def evaluate(model: RecurrentMemoryTransformer, task: Task, num_examples: int, batch_size: int = 32,
             split: str = "validation") -> dict[str, float]:
    """The task's own metric (and the mean loss) over its first `num_examples` examples of `split`."""
    return evaluate_models({"model": model}, task, num_examples, batch_size, split)["model"]


def _predict(model: RecurrentMemoryTransformer, task: Task, examples: Sequence[dict]) -> tuple[list[Any], float]:
    """Predictions in the format `Task.score` expects, and the batch's mean loss."""
    was_training = model.training
    model.eval()
    device = model.device
    batch = {k: v.to(device) for k, v in task.collate(examples).items()}
    classification = task.kind == "classification"
    # causal LMs: argmax ids per position, never (B, T, V) logits
    out = model(**batch) if classification else model(**batch, return_logits=False, return_predictions=True)
    model.train(was_training)
    if classification:
        return out.logits.argmax(-1).tolist(), float(out.loss)
    return predictions_from_logits(out.predictions, batch["labels"]), float(out.loss)


def metric_by_length(models: Mapping[str, RecurrentMemoryTransformer], make_task: TaskFactory,
                     segment_counts: Sequence[int], num_examples: int, batch_size: int = 32,
                     metric: str = "accuracy", progress: bool = True) -> dict[str, list[float]]:
    """`metric` of every model at every segment count, on the same examples."""
    from tqdm.auto import tqdm

    results: dict[str, list[float]] = {name: [] for name in models}
    jobs = tqdm(segment_counts, desc="evaluating lengths", disable=not progress)
    for n in jobs:
        scores = evaluate_models(models, make_task(n), num_examples, batch_size,
                                 progress=f"{n} segments" if progress else None)
        for name in models:
            results[name].append(scores[name][metric])
    return results


def format_table(segment_counts: Sequence[int], results: Mapping[str, Sequence[float]], segment_size: int,
                 trained: Sequence[int] = (), metric: str = "accuracy") -> str:
    """A plain-text table: one row per length, one column per model."""
    names = list(results)
    header = f"{'segments':>8} {'tokens':>8}  " + "  ".join(f"{n:>12}" for n in names)
    lines = [f"{metric} by input length", header, "-" * len(header)]
    for i, n in enumerate(segment_counts):
        mark = "*" if n in trained else " "
        cells = "  ".join(f"{results[name][i]:>12.3f}" for name in names)
        lines.append(f"{n:>7}{mark} {n * segment_size:>8}  {cells}")
    if trained:
        lines.append("* trained on this length")
    return "\n".join(lines)


def plot_by_length(path: str | Path, segment_counts: Sequence[int], results: Mapping[str, Sequence[float]],
                   segment_size: int, trained: Sequence[int] = (), metric: str = "accuracy",
                   chance: Optional[float] = None, title: str = "") -> None:
    """The papers' generalisation figure: metric against input length (log scale), trained lengths shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    tokens = [n * segment_size for n in segment_counts]
    for name, values in results.items():
        ax.plot(tokens, values, marker="o", label=name)
    if trained:
        ax.axvspan(min(trained) * segment_size * 0.9, max(trained) * segment_size * 1.1, color="grey", alpha=0.15,
                   label="trained lengths")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"input length, tokens ({segment_size} per segment)")
    ax.set_ylabel(metric)
    if metric == "accuracy":
        ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    def clean(value: Any) -> Any:  # JSON has no NaN: write null
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    Path(path).write_text(json.dumps(clean(dict(data)), indent=2) + "\n")
