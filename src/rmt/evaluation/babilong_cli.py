"""The ``rmt babilong`` subcommand: models x BABILong tasks x lengths; a table, babilong.json, babilong.png."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        values = [int(v.strip().lower().removeprefix("qa")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"tasks are a comma list such as qa1,qa2 or 1,2; got {text!r}") from None
    if not values or any(not 1 <= v <= 20 for v in values):
        raise argparse.ArgumentTypeError(f"BABILong tasks are qa1-qa20, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"give a comma list of lengths such as 0k,1k,4k; got {text!r}")
    return values


def _samples(text: str) -> int | dict[str, int]:
    """``100`` (every length) or ``0k=200,1M=20`` (one count per length)."""
    try:
        if "=" not in text:
            return int(text)
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"samples are a count (100) or one count per length (0k=200,1M=20); "
                                         f"got {text!r}") from None


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``babilong`` on an ``argparse`` subparsers object; the handler is ``args.func(args)``."""
    p = subparsers.add_parser("babilong", help="evaluate models on BABILong (tasks x lengths)", description=run.__doc__)
    p.add_argument("--model", dest="models", action="append", required=True, metavar="[NAME=]SPEC",
                   help="a causal LM read with full attention (a packaged name such as smollm2-135m, a model folder or "
                        "a hub name), or an RMT (a run of `rmt train` or a save_pretrained folder); repeatable")
    p.add_argument("--no-memory", action="store_true",
                   help="also evaluate each RMT's backbone without memory (it reads only the last segment)")
    p.add_argument("--tasks", type=_ints, default=[1, 2, 3, 4, 5], help="comma list, e.g. qa1,qa2 (default qa1-qa5)")
    p.add_argument("--lengths", type=_names, default=["0k", "1k", "2k", "4k"],
                   help="comma list of BABILong lengths (0k, 1k, ..., 128k, 1M, 10M) or token counts (default 0k-4k)")
    p.add_argument("--samples", type=_samples, default=100, metavar="N|LENGTH=N,...",
                   help="samples per task and length (default 100), or one count per length: 0k=200,1M=20")
    p.add_argument("--babi", metavar="PATH",
                   help="a bAbI v1.2 folder (default: $RMT_BABI_DIR, else the published sets through datasets)")
    p.add_argument("--background", metavar="SOURCE",
                   help="background text: a text file or folder, or a datasets name such as deepmind/pg19 "
                        "(default: the bundled public-domain books)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="which bAbI file (default test)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="answer length (default 16, as lm-eval)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="samples per batch (default 1); an RMT streams samples of equal input length together")
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer for RMT folders that do not hold one")
    p.add_argument("--prompt-source", default="auto", choices=("auto", "lm-eval", "published"),
                   help="where the official prompts are read from (default: lm-eval's task files if installed)")
    p.add_argument("--answer-marker", default="", metavar="TEXT",
                   help="text after the question for RMTs (GEN for the authors' fine-tuned checkpoints)")
    p.add_argument("--out", default="babilong-results",
                   help="output folder (default ./babilong-results); each finished cell is kept in OUT/cells, so an "
                        "interrupted evaluation run again with the same --out computes only the cells left")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Evaluate models on BABILong: generate each answer, then compare it (the benchmark's strict
    check and lm-eval's lenient one). Prints the leaderboard-style table (tasks x lengths) and writes
    babilong.json (scores, settings and every output) and babilong.png (heatmaps) to --out."""
    from ..tasks.babilong import context_length
    from ..tasks.babilong_prompts import babilong_prompt
    from .babilong import (evaluate_babilong, format_table, load_reader, no_memory, plot_heatmap, samples_per_length,
                           write_report)

    samples = samples_per_length(args.samples, args.lengths, "--samples")
    for name, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for length in args.lengths:
        context_length(length)
    if args.babi is not None and not Path(args.babi).exists():
        raise FileNotFoundError(f"--babi {args.babi}: no such folder or file")
    tokenizer = None
    if args.tokenizer:
        from ..backbones import backbone_tokenizer

        tokenizer = backbone_tokenizer(args.tokenizer)
    readers = []
    for item in args.models:
        name, sep, spec = item.partition("=")
        name, spec = (name, spec) if sep else (None, item)
        readers.append(load_reader(spec, name=name, tokenizer=tokenizer))
        if args.no_memory and readers[-1].is_rmt:
            readers.append(no_memory(readers[-1]))
    report = evaluate_babilong(readers, args.tasks, args.lengths, args.samples, babi=args.babi,
                               background=args.background, split=args.split, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, prompt_source=args.prompt_source,
                               answer_marker=args.answer_marker, cells=Path(args.out) / "cells")
    settings = {
        "tasks": [f"qa{qa}" for qa in args.tasks], "lengths": [str(n) for n in args.lengths],
        "context_tokens": {str(n): context_length(n) for n in args.lengths}, "samples_per_cell": args.samples if isinstance(args.samples, int) else samples,
        "babi": args.babi or "default", "background": args.background or "bundled", "split": args.split,
        "max_new_tokens": args.max_new_tokens, "answer_marker": args.answer_marker,
        "prompt_source": babilong_prompt(args.tasks[0], args.prompt_source).source,
        "models": {r.name: {"spec": r.spec, "prompt": r.prompt, **r.info} for r in readers},
    }
    out = Path(args.out)
    path = write_report(out, {**settings, **report})
    plot_heatmap(out / "babilong.png", report["results"], args.tasks, args.lengths,
                 title=f"BABILong, {_samples_title(samples)} per cell")
    print(format_table(report["results"], args.tasks, args.lengths, "accuracy"))
    print()
    print(format_table(report["results"], args.tasks, args.lengths, "lenient"))
    resumed = f", {report['resumed_cells']} cells read back from {out / 'cells'}" if report["resumed_cells"] else ""
    print(f"\nwrote {path} and {out / 'babilong.png'} ({report['seconds']:.0f} s{resumed})")
    return 0


def _samples_title(samples: dict[str, int]) -> str:
    counts = set(samples.values())
    if len(counts) == 1:
        return f"{counts.pop()} samples"
    return "samples " + ", ".join(f"{k}: {v}" for k, v in samples.items())
