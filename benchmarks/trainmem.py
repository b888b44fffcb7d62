"""Benchmark 5: training memory against BPTT depth, with and without per-segment checkpointing.

One training step (forward + backward of the LM loss with full BPTT) over 1, 4 and 16 segments,
with `RMTConfig(gradient_checkpointing=False)` and `=True`; each case in a fresh subprocess,
peak RSS over the step (high-water mark reset right before it). Two vocabularies: a byte-sized
one (activations dominate) and GPT-2's 50257 (the (T, V) logits dominate: they are outputs of
each checkpointed segment, so checkpointing cannot drop them).

    .venv/bin/python benchmarks/trainmem.py [--quick] [--segments 1 4 16] [--vocabs 256 50257]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers

import rmt
from common import isolated, md_table, target, write_result

NAME = "trainmem"
SEGMENTS = [1, 4, 16]
VOCABS = [256, 50257]
# the 50k-vocabulary steps cost ~1-2 minutes each at 16 segments: stop that row at 4 to keep
# `make bench` under 20 minutes (--segments 1 4 16 --vocabs 50257 runs it)
MAX_SEGMENTS = {50257: 4}
CKPT_TARGET = 0.25


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return dict(layers=2, hidden=32, heads=2, segment=64, memory=4)
    return dict(layers=4, hidden=256, heads=4, segment=512, memory=16)


def step_case(quick: bool, vocab: int, segments: int, checkpointing: bool):
    """Worker builder: one training step over `segments` segments."""
    z = sizes(quick)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=z["layers"], n_embd=z["hidden"], n_head=z["heads"], vocab_size=vocab,
                                  n_positions=z["segment"] + 2 * z["memory"], bos_token_id=0, eos_token_id=0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "sdpa"
    model = rmt.RecurrentMemoryTransformer(transformers.GPT2LMHeadModel(cfg), rmt.RMTConfig(
        num_mem_tokens=z["memory"], segment_size=z["segment"], gradient_checkpointing=checkpointing)).train()
    ids = torch.randint(0, vocab, (1, segments * z["segment"]), generator=torch.Generator().manual_seed(1))
    for p in model.parameters():  # allocate the gradients first: they are not activation memory
        p.grad = torch.zeros_like(p)

    def run() -> None:  # a training step as rmt.training does it: no (B, T, V) logits returned
        model(ids, labels=ids, return_logits=False).loss.backward()

    return run


def main(quick: bool = False, segments: Optional[list[int]] = None, vocabs: Optional[list[int]] = None,
         out_dir: Optional[Path] = None) -> dict[str, Any]:
    explicit = segments is not None
    segments = segments or ([1, 4] if quick else SEGMENTS)
    vocabs = vocabs or ([256] if quick else VOCABS)
    rows = []
    for vocab in vocabs:
        for k in [k for k in segments if k <= MAX_SEGMENTS.get(vocab, k) or explicit]:
            row: dict[str, Any] = {"vocab": vocab, "segments": k}
            for ckpt in (False, True):
                r = isolated(NAME, "step_case", in_process=quick, quick=quick, vocab=vocab, segments=k, checkpointing=ckpt)
                if "error" in r:
                    raise RuntimeError(f"{NAME}: vocab {vocab}, {k} segments, checkpointing={ckpt} failed: {r}")
                row["checkpointing" if ckpt else "plain"] = r
            row["increment_ratio"] = round(row["checkpointing"]["increment_mb"] / max(row["plain"]["increment_mb"], 1.0), 3)
            rows.append(row)
            print(f"[{NAME}] V={vocab} {k:>2} segments: plain +{row['plain']['increment_mb']} MB "
                  f"({row['plain']['seconds']:.1f}s), checkpointed +{row['checkpointing']['increment_mb']} MB "
                  f"({row['checkpointing']['seconds']:.1f}s)", flush=True)
    targets = []
    for vocab in vocabs:
        ours = [r for r in rows if r["vocab"] == vocab]
        lo, hi = ours[0], ours[-1]
        if lo is hi:
            continue
        # with checkpointing a segment keeps only its inputs, memory and outputs (the logits) for the
        # backward pass: the step's memory should grow with depth at most a quarter as fast as without it
        plain_growth = hi["plain"]["increment_mb"] - lo["plain"]["increment_mb"]
        ckpt_growth = hi["checkpointing"]["increment_mb"] - lo["checkpointing"]["increment_mb"]
        fraction = ckpt_growth / plain_growth if plain_growth > 0 else float("nan")
        targets.append(target(
            f"V={vocab}: with checkpointing, memory growth from {lo['segments']} to {hi['segments']} segments "
            f"<= {CKPT_TARGET:.0%} of the growth without",
            f"{ckpt_growth:.0f} MB vs {plain_growth:.0f} MB ({fraction:.0%})", fraction <= CKPT_TARGET))
    z = sizes(quick)
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0],
            "backbone": {"type": "gpt2", **z},
            "method": "one fresh subprocess per case; gradients preallocated; peak RSS (VmHWM after a reset) during one "
                      "forward+backward; increment = peak minus RSS right before the step; seconds from one run (not "
                      "interleaved, indicative only; the fixed malloc mmap threshold of the memory workers slows them).",
            "checkpointing_target": f"memory growth with depth <= {CKPT_TARGET:.0%} of that without checkpointing",
            "rows": rows, "targets": targets}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    z = data["backbone"]
    head = (f"GPT-2 {z['layers']}L/{z['hidden']}d, segment {z['segment']}, memory {z['memory']}, full BPTT; "
            "+MB = peak RSS during the step minus RSS before it. The 50257-vocabulary row stops at "
            f"{MAX_SEGMENTS[50257]} segments for time.\n\n")
    rows = [[r["vocab"], r["segments"], r["plain"]["increment_mb"], r["checkpointing"]["increment_mb"],
             r["increment_ratio"], r["plain"]["seconds"], r["checkpointing"]["seconds"]] for r in data["rows"]]
    return head + md_table(["vocab", "segments", "+MB plain", "+MB checkpointed", "ckpt/plain", "s plain",
                            "s checkpointed"], rows)


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--segments", type=int, nargs="+", default=None, help="BPTT depths (default 1 4 16)")
    p.add_argument("--vocabs", type=int, nargs="+", default=None, help="vocabulary sizes (default 256 50257)")
    a = p.parse_args(argv)
    main(a.quick, a.segments, a.vocabs)


if __name__ == "__main__":
    cli()
