"""The ``rmt attention`` subcommand: attention maps of a trained run's memory operations (the scaling report's Fig. 6)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Optional

EXAMPLE_SPLIT, EXAMPLE_INDEX = "test", 0


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``attention`` on an ``argparse`` subparsers object; the handler is ``args.func(args)``."""
    p = subparsers.add_parser("attention", help="attention maps of memory operations per segment (scaling report Fig. 6)",
                              description=run.__doc__)
    p.add_argument("run", help="a run directory of `rmt train`")
    p.add_argument("--out", help="the PNG to write (default: RUN/attention_maps.png); the JSON goes beside it")
    p.add_argument("--segments", default="4", help="segments of the example (default 4)")
    p.add_argument("--layer", default="all", help="a layer index (0-based; negative counts from the end) or 'all': "
                   "the mean over layers (default)")
    p.add_argument("--seed", help="seed of the task the example is drawn from (default: the run's seed)")
    p.set_defaults(func=run)
    return p


def _int(name: str, text: str, minimum: Optional[int] = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def default_fact_segments(num_facts: int, num_segments: int) -> tuple[int, ...]:
    """Fig. 6's placement: fact 1 in segment 1; a second fact in the segment before the question's
    (segment 3 of 4, so segment 2 holds none)."""
    return (1,) if num_facts == 1 else (1,) + (max(num_segments - 1, 1),) * (num_facts - 1)


def _task(config: Any, num_segments: int, seed: int) -> Any:
    """The run's task at `num_segments`, its facts (if it has any) placed as in Fig. 6."""
    from ..tasks import task_at
    from ..training.trainer import make_tasks

    tasks = make_tasks(config)
    args = {**config.task_args, "seed": seed, "tokenizer": tasks.tokenizer}
    task = task_at(config.task, num_segments, tasks.segment_size, **args)
    facts = getattr(task, "num_facts", None)
    if facts and "fact_segments" not in config.task_args:
        args.update(fact_segments=default_fact_segments(facts, num_segments), background=task.background)
        task = task_at(config.task, num_segments, tasks.segment_size, **args)
    return task


def _dumps(data: dict) -> str:
    """Indented JSON with every list of numbers or strings on one line (a map's row per line)."""
    scalar = r'(?:"(?:[^"\\\n]|\\.)*"|[-+.\w]+)'  # a JSON string, number, true, false or null
    flat = re.compile(rf"\[\n\s*({scalar}(?:,\n\s*{scalar})*)\n\s*\]")

    def one_line(match: re.Match) -> str:
        return "[" + ", ".join(re.findall(scalar, match.group(1))) + "]"

    return flat.sub(one_line, json.dumps(data, indent=1)) + "\n"


def _label(task: Any, token: int) -> str:
    text = task.decode([token])
    return (text.strip() or repr(text))[:12]


def run(args: argparse.Namespace) -> int:
    """Draw one attention map per segment of one example of a trained run's task: memory writes
    of the facts, memory kept through a segment without one, the answer reading memory (the
    scaling report's Fig. 6). Writes the PNG, a JSON of the memory<->token attention beside it,
    and prints one line per panel. The backbone runs with eager attention for this command only."""
    import torch

    from ..tasks.base import predictions_from_logits
    from ..training.trainer import load_run, run_config
    from .attention import attention_json, attention_maps, describe_panel, plot_attention_maps, segment_attentions

    num_segments = _int("--segments", args.segments, minimum=1)
    layer = None if str(args.layer).lower() == "all" else _int("--layer", args.layer)
    run_dir = Path(args.run)
    config = run_config(run_dir)
    if config.rmt.get("xl_cache"):
        raise ValueError(f"{run_dir}: a run with xl_cache={config.rmt['xl_cache']} is not drawn: its keys include "
                         "the cache of earlier segments")
    seed = config.seed if args.seed is None else _int("--seed", args.seed)
    task = _task(config, num_segments, seed)
    model = load_run(run_dir)[0].eval()
    example = task.example(EXAMPLE_INDEX, EXAMPLE_SPLIT)
    spans = task.spans(EXAMPLE_INDEX, EXAMPLE_SPLIT) if hasattr(task, "spans") else {}
    ids = torch.tensor([example["input_ids"]])
    read = segment_attentions(model, ids)
    answer = spans.get("answer")
    panels = attention_maps(read, layer, facts=spans.get("facts", ()), question=spans.get("question"),
                            answer_at=answer[0] - 1 if answer else None,
                            token_labels=[_label(task, t) for t in example["input_ids"]],
                            carries_memory=model.mechanism.carries_memory)

    predicted = prediction = target = None
    if task.kind == "classification":
        predicted = int(read.output.logits.argmax(-1))
        prediction = task.label_names[predicted] if task.label_names else predicted
        target = task.label_names[example["label"]] if task.label_names else example["label"]
    elif read.output.predictions is not None and "labels" in example:
        predicted = predictions_from_logits(read.output.predictions, torch.tensor([example["labels"]]))[0]
        prediction, target = task.decode(predicted), task.decode(task.target_ids(example))
    score = task.score([predicted], [example]) if predicted is not None else {}

    out = Path(args.out) if args.out else run_dir / "attention_maps.png"
    which = "mean over layers" if layer is None else f"layer {layer}"
    memory = config.rmt.get("memory", "rmt")
    title = (f"{config.task}: one example at {len(panels)} segments of {config.rmt.get('segment_size')} tokens, "
             f"{model.num_mem_tokens} memory tokens ({memory!r}); {which}, heads averaged")
    plot_attention_maps(out, panels, title)
    layers = read.segments[0].attentions.shape[0]
    report = {
        "run": str(run_dir), "task": config.task, "memory": memory, "segments": len(panels),
        "segment_size": config.rmt.get("segment_size"), "num_mem_tokens": model.num_mem_tokens,
        "layer": "all" if layer is None else layer, "layers": layers,
        "heads": int(read.segments[0].attentions.shape[1]),
        "example": {"split": EXAMPLE_SPLIT, "index": EXAMPLE_INDEX, "seed": seed, **spans,
                    "target": target, "prediction": prediction, **score},
        "panels": attention_json(panels),
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(_dumps(report))
    for panel in panels:
        print(describe_panel(panel))
    print(f"prediction {prediction!r}, target {target!r}; wrote {out} and {json_path}")
    return 0
