"""Benchmark 6: the associative memory (ARMT) against the token memory (RMT).

Time: ARMT and RMT on one GPT-2-shaped backbone (6 of 12 layers, hidden 768, vocab 50257), the
same 2 segments of 512 tokens, 16 memory tokens, d_mem 64; forward (no_grad, eval) and training
step (forward + backward) interleaved. ARMT lays out s + m positions per segment (RMT: s + 2m) and
adds a read and a write at every layer. Target: ARMT time <= 1.15x RMT's, both modes.

Long read: `stream()` through the ARMT version of benchmark 4's model, 16,384 and 2,048,000
tokens, each in a fresh process. Targets: peak RSS at 2M within 10% of that at 16k; tokens/s at
2M at least 90% of that at 16k.

    .venv/bin/python benchmarks/armt.py [--quick] [--repeats R] [--tokens 16384 2048000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import rmt
from common import QUICK_GPT2, WRAPPER_MODES, interleaved, isolated, md_table, random_gpt2, target, write_result
from longread import QUICK_TOKENS, TOKENS

NAME = "armt"
TIME_TARGET = 1.15
RSS_TARGET = 0.10
SPEED_TARGET = 0.90


def build_pair(quick: bool):
    """One GPT-2 backbone wrapped twice: token memory and associative memory."""
    segment, memory, d_mem = (64, 4, 16) if quick else (512, 16, 64)
    shape = QUICK_GPT2 if quick else dict(n_layer=6, n_embd=768, n_head=12, vocab_size=50257)
    backbone = random_gpt2(shape, segment + 2 * memory)
    cfg = backbone.config
    token = rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=memory, segment_size=segment))
    assoc = rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=memory, segment_size=segment,
                                                                   memory="armt", d_mem=d_mem))
    return {"rmt": token, "armt": assoc}, cfg, segment, memory, d_mem


def timing(quick: bool, repeats: int) -> dict[str, Any]:
    models, cfg, segment, memory, d_mem = build_pair(quick)
    torch.manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, 2 * segment))

    out: dict[str, Any] = {"shape": {k: getattr(cfg, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size")},
                           "segment_size": segment, "num_mem_tokens": memory, "d_mem": d_mem, "segments": 2}
    for mode, make in WRAPPER_MODES:
        t = interleaved({name: make(m, ids) for name, m in models.items()}, repeats=repeats,
                        warmup=1 if mode == "forward" else 0, reference="rmt")
        out[mode] = {**t, "ratio_armt_over_rmt": t["ratio"]["armt"]}
        print(f"[{NAME}] {mode}: rmt {t['median_s']['rmt']:.3f}s armt {t['median_s']['armt']:.3f}s "
              f"ratio {t['ratio']['armt']:.3f}", flush=True)
    return out


def long_read(quick: bool, tokens: list[int], chunk: int) -> dict[str, Any]:
    rows = []
    for n in tokens:
        r = isolated("longread", "read_case", tokens=n, quick=quick, chunk=chunk, compute_loss=True, memory="armt")
        if "error" in r:
            raise RuntimeError(f"{NAME}: stream over {n:,} tokens failed: {r}")
        r["tokens_per_s"] = round(n / r["seconds"], 1)
        rows.append(r)
        print(f"[{NAME}] stream {n:,} tokens: {r['seconds']:.1f}s, {r['tokens_per_s']:,.0f} tok/s, "
              f"peak RSS {r['peak_rss_mb']} MB", flush=True)
    return {"rows": rows, "peak_rss_growth": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1, 4),
            "speed_ratio": round(rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"], 3)}


def main(quick: bool = False, repeats: Optional[int] = None, tokens: Optional[list[int]] = None, chunk: int = 4096,
         out_dir: Optional[Path] = None) -> dict[str, Any]:
    time_rows = timing(quick, repeats or (2 if quick else 3))
    tokens = sorted(tokens or (QUICK_TOKENS if quick else TOKENS))
    read = long_read(quick, tokens, chunk)
    targets = [target(f"ARMT/RMT {mode} time <= {TIME_TARGET}x", time_rows[mode]["ratio_armt_over_rmt"],
                      time_rows[mode]["ratio_armt_over_rmt"] <= TIME_TARGET) for mode in ("forward", "train_step")]
    targets += [target(f"ARMT stream: peak RSS at {tokens[-1]:,} tokens within {RSS_TARGET:.0%} of {tokens[0]:,}",
                       f"{read['peak_rss_growth']:+.1%}", read["peak_rss_growth"] <= RSS_TARGET),
                target(f"ARMT stream: tokens/s at {tokens[-1]:,} >= {SPEED_TARGET:.0%} of {tokens[0]:,}",
                       f"{read['speed_ratio']:.2f}", read["speed_ratio"] >= SPEED_TARGET)]
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0],
            "method": "timing: interleaved repeats, median of per-repeat ratios, fp32 CPU, random weights, sdpa; both "
                      "wrappers share one backbone. Long read: benchmark 4's Llama 2L/128d with memory='armt' "
                      "(d_mem 64), stream() with the running loss, one fresh subprocess per length, peak RSS during "
                      "the call, tokens/s from its wall time (one run).",
            "timing": time_rows, "long_read": read, "targets": targets}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    t = data["timing"]
    s = t["shape"]
    rows = [[f"GPT-2 {s['n_layer']}L/{s['n_embd']}d/V{s['vocab_size']}", mode, f"{t['segments']}x{t['segment_size']}",
             t[mode]["median_s"]["rmt"], t[mode]["median_s"]["armt"], t[mode]["ratio_armt_over_rmt"]]
            for mode in ("forward", "train_step")]
    r = data["long_read"]
    reads = [[f"{x['num_tokens']:,}", x["num_segments"], x["seconds"], x["tokens_per_s"], x["peak_rss_mb"]] for x in r["rows"]]
    return (md_table(["backbone", "mode", "segments", "RMT s", "ARMT s", "ARMT/RMT"], rows)
            + f"\n\n`stream()` with ARMT: peak RSS growth {r['peak_rss_growth']:+.1%}, tokens/s ratio {r['speed_ratio']:.2f}.\n\n"
            + md_table(["tokens", "segments", "s", "tokens/s", "peak RSS MB"], reads))


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--chunk", type=int, default=4096)
    a = p.parse_args(argv)
    main(a.quick, a.repeats, a.tokens, a.chunk)


if __name__ == "__main__":
    cli()
