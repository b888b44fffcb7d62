"""Benchmark 4: a long read, 2,048,000 tokens through a small model with `model.stream(...)`.

The input is produced lazily, chunk by chunk (random token ids; nothing holds the whole input),
and read under no_grad by `RecurrentMemoryTransformer.stream`. Each length runs in a fresh
subprocess, where peak RSS is taken over the call (high-water mark reset right before it).
Target: the peak RSS at 2,048,000 tokens within 10% of that at 16,384 tokens (constant memory).

The same lengths are then read by one `model(ids, labels=ids, return_logits=False)` call on the
whole (1, T) tensor under no_grad, as evaluation does. Target: its tokens/s at 2,048,000 tokens at
least 90% of that at 16,384 (each step costs one segment, however long the input).

    .venv/bin/python benchmarks/longread.py [--quick] [--tokens 16384 2048000] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers

import rmt
from common import isolated, md_table, target, write_result

NAME = "longread"
TOKENS = [16_384, 2_048_000]
QUICK_TOKENS = [4_096, 65_536]
TARGET = 0.10  # relative peak-RSS growth from the shortest to the longest read
FORWARD_TARGET = 0.90  # forward tokens/s at the longest read relative to the shortest


def build(quick: bool, memory: str = "rmt") -> rmt.RecurrentMemoryTransformer:
    torch.manual_seed(0)
    shape = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=344, vocab_size=256)
    if quick:
        shape = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=64, vocab_size=256)
    s, m = (128, 4) if quick else (512, 16)
    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=s + 2 * m, bos_token_id=0, eos_token_id=0,
                                   pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    backbone = transformers.LlamaForCausalLM(cfg)
    config = rmt.RMTConfig(num_mem_tokens=m, segment_size=s, memory=memory)
    return rmt.RecurrentMemoryTransformer(backbone, config).eval()


def chunks(total: int, chunk: int, vocab: int, seed: int = 1) -> Iterator[torch.Tensor]:
    """Random ids, `chunk` at a time: the input is never materialised."""
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < total:
        n = min(chunk, total - done)
        yield torch.randint(0, vocab, (1, n), generator=g)
        done += n


def read_case(quick: bool, tokens: int, chunk: int, compute_loss: bool, memory: str = "rmt"):
    """Worker builder: stream `tokens` tokens through the model."""
    model = build(quick, memory)
    vocab = model.backbone.config.vocab_size
    model.stream(next(chunks(model.rmt_config.segment_size, model.rmt_config.segment_size, vocab)))  # warm-up

    def run() -> dict[str, Any]:
        out = model.stream(chunks(tokens, chunk, vocab), compute_loss=compute_loss)
        assert out.num_tokens == tokens, (out.num_tokens, tokens)
        return {"num_tokens": out.num_tokens, "num_segments": out.num_segments,
                "loss": None if out.loss is None else round(float(out.loss), 4)}

    return run


def forward_case(quick: bool, tokens: int, memory: str = "rmt"):
    """Worker builder: one forward call over a (1, `tokens`) tensor, loss only."""
    model = build(quick, memory)
    vocab = model.backbone.config.vocab_size
    ids = torch.cat(list(chunks(tokens, 65_536, vocab)), dim=1)  # (1, tokens)
    with torch.no_grad():
        model(ids[:, : model.rmt_config.segment_size])  # warm-up

    def run() -> dict[str, Any]:
        times = []  # short reads are repeated (for at least 5 s, at most 5 calls): one call is too noisy
        while len(times) < 5 and sum(times) < 5:
            start = time.perf_counter()
            with torch.no_grad():
                out = model(ids, labels=ids, return_logits=False)
            times.append(time.perf_counter() - start)
        return {"num_tokens": tokens, "loss": round(float(out.loss), 4), "calls": len(times),
                "call_seconds": round(statistics.median(times), 4)}

    return run


def _measure(case: str, tokens: int, seconds_key: str, **kwargs: Any) -> dict[str, Any]:
    """Run one case in a fresh process; tokens/s from the result's `seconds_key`."""
    r = isolated(NAME, case, tokens=tokens, **kwargs)
    if "error" in r:
        raise RuntimeError(f"{NAME}: {case} over {tokens:,} tokens failed: {r}")
    r["tokens_per_s"] = round(tokens / r[seconds_key], 1)
    return r


def main(quick: bool = False, tokens: Optional[list[int]] = None, chunk: int = 4096, compute_loss: bool = True,
         out_dir: Optional[Path] = None) -> dict[str, Any]:
    tokens = sorted(tokens or (QUICK_TOKENS if quick else TOKENS))
    rows = []
    for n in tokens:
        r = _measure("read_case", n, "seconds", quick=quick, chunk=chunk, compute_loss=compute_loss)
        rows.append(r)
        print(f"[{NAME}] {n:,} tokens: {r['seconds']:.1f}s, {r['tokens_per_s']:,.0f} tok/s, peak RSS {r['peak_rss_mb']} MB "
              f"(+{r['increment_mb']} MB over the loaded model)", flush=True)
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
    forward_rows = []
    for n in tokens:
        r = _measure("forward_case", n, "call_seconds", quick=quick)
        forward_rows.append(r)
        print(f"[{NAME}] forward over {n:,} tokens: {r['call_seconds']:.2f}s (median of {r['calls']}), "
              f"{r['tokens_per_s']:,.0f} tok/s", flush=True)
    speed = forward_rows[-1]["tokens_per_s"] / forward_rows[0]["tokens_per_s"]
    model = build(quick)
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0],
            "backbone": {k: getattr(model.backbone.config, k) for k in ("num_hidden_layers", "hidden_size",
                                                                        "num_attention_heads", "vocab_size")},
            "segment_size": model.rmt_config.segment_size, "num_mem_tokens": model.num_mem_tokens, "chunk": chunk,
            "compute_loss": compute_loss,
            "method": "one fresh subprocess per length; the input is generated lazily in chunks; stream(...) under "
                      "no_grad with compute_loss (the running next-token loss); peak RSS during the call (VmHWM after "
                      "a reset right before it); tokens/s = tokens / wall time of the call (one run, noisy). forward_rows: "
                      "one forward(ids, labels=ids, return_logits=False) call over the whole (1, T) tensor under "
                      "no_grad, in a fresh subprocess per length, repeated while under 5 calls and 5 s; tokens/s from "
                      "the median call.",
            "rows": rows, "peak_rss_growth": round(growth, 4),
            "forward_rows": forward_rows, "forward_speed_ratio": round(speed, 3),
            "targets": [target(f"peak RSS at {tokens[-1]:,} tokens within {TARGET:.0%} of that at {tokens[0]:,}",
                               f"{growth:+.1%}", growth <= TARGET),
                        target(f"forward tokens/s at {tokens[-1]:,} tokens >= {FORWARD_TARGET:.0%} of that at "
                               f"{tokens[0]:,}", f"{speed:.2f}", speed >= FORWARD_TARGET)]}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    b = data["backbone"]
    head = (f"Llama {b['num_hidden_layers']}L/{b['hidden_size']}d/V{b['vocab_size']}, segment {data['segment_size']}, "
            f"memory {data['num_mem_tokens']}, chunks of {data['chunk']} generated lazily; peak RSS growth "
            f"{data['peak_rss_growth']:+.1%}.\n\n")
    rows = [[f"{r['num_tokens']:,}", r["num_segments"], r["seconds"], r["tokens_per_s"], r["peak_rss_mb"],
             r["increment_mb"]] for r in data["rows"]]
    table = md_table(["tokens", "segments", "s", "tokens/s", "peak RSS MB", "+MB over model"], rows)
    if "forward_rows" not in data:
        return head + table
    forward = [[f"{r['num_tokens']:,}", r["call_seconds"], r["calls"], r["tokens_per_s"], r["peak_rss_mb"]]
               for r in data["forward_rows"]]
    return (head + table + f"\n\nOne forward call over the whole (1, T) input (loss only, no_grad): tokens/s at the "
            f"longest read {data['forward_speed_ratio']:.2f}x that at the shortest.\n\n"
            + md_table(["tokens", "s (median)", "calls", "tokens/s", "peak RSS MB"], forward))


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="lengths to read (default 16384 2048000)")
    p.add_argument("--chunk", type=int, default=4096, help="tokens per lazily generated chunk")
    p.add_argument("--no-loss", action="store_true", help="read without computing the running loss")
    a = p.parse_args(argv)
    main(a.quick, a.tokens, a.chunk, not a.no_loss)


if __name__ == "__main__":
    cli()
