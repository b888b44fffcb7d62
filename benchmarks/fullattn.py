"""Benchmark 2: RMT against full attention, the same small backbone on the whole input at once.

The backbone (Llama-shaped, rotary positions, byte-sized vocabulary so the logits do not dominate)
reads 512 to 32k tokens either in one pass with full causal attention (its fastest attention
implementation on this machine, chosen by timing sdpa against eager first) or as an RMT with
segments of 512 and 16 memory tokens. Both are forward passes under no_grad returning logits for
every token. Time: interleaved repeats in this process. Peak memory: one fresh subprocess per
(variant, length), peak RSS (ru_maxrss after resetting the high-water mark right before the call).

    .venv/bin/python benchmarks/fullattn.py [--quick] [--lengths 512 1024 ...] [--repeats R]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers

import rmt
from common import interleaved, isolated, md_table, target, write_result

NAME = "fullattn"
SEGMENT, MEMORY = 512, 16
QUICK_SEGMENT, QUICK_MEMORY = 64, 4
LENGTHS = [512, 1024, 2048, 4096, 8192, 16384, 32768]
QUICK_LENGTHS = [64, 256, 1024]


def build(quick: bool, attn: str, max_len: int, with_rmt: bool):
    torch.manual_seed(0)
    shape = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=688, vocab_size=256)
    if quick:
        shape = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=64, vocab_size=256)
    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=max(max_len, 1024), bos_token_id=0,
                                   eos_token_id=0, pad_token_id=0)
    cfg._attn_implementation = attn
    backbone = transformers.LlamaForCausalLM(cfg).eval()
    if not with_rmt:
        return backbone, cfg
    s, m = (QUICK_SEGMENT, QUICK_MEMORY) if quick else (SEGMENT, MEMORY)
    return rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=m, segment_size=s)).eval(), cfg


def forward_fn(model, ids: torch.Tensor, is_rmt: bool):
    def run() -> None:
        with torch.no_grad():
            if is_rmt:
                model(ids)
            else:
                model(input_ids=ids, use_cache=False)
    return run


def memory_case(quick: bool, attn: str, variant: str, length: int):
    """Worker builder: the callable whose peak RSS is measured in a fresh process."""
    model, cfg = build(quick, attn, length, with_rmt=variant == "rmt")
    ids = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    return forward_fn(model, ids, variant == "rmt")


def pick_attention(quick: bool) -> dict[str, Any]:
    """Time the full-attention backbone with sdpa and eager at moderate lengths; the faster one is used."""
    lengths = [256] if quick else [2048, 4096]
    models = {impl: build(quick, impl, max(lengths), with_rmt=False)[0] for impl in ("sdpa", "eager")}
    per_length = {}
    for T in lengths:
        ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(1))
        t = interleaved({impl: forward_fn(m, ids, False) for impl, m in models.items()}, repeats=2, warmup=1,
                        reference="sdpa")
        per_length[T] = t
    eager_over_sdpa = math.prod(per_length[T]["ratio"]["eager"] for T in lengths) ** (1 / len(lengths))
    chosen = "eager" if eager_over_sdpa < 1 else "sdpa"
    print(f"[{NAME}] attention: eager/sdpa time ratio {eager_over_sdpa:.3f} -> {chosen}", flush=True)
    return {"chosen": chosen, "eager_over_sdpa": round(eager_over_sdpa, 4), "timings": per_length}


def crossover(lengths: list[int], full_over_rmt: list[float]) -> Optional[float]:
    """First length where full attention becomes slower than RMT (ratio crosses 1), log-interpolated."""
    for i, (T, r) in enumerate(zip(lengths, full_over_rmt)):
        if r >= 1:
            if i == 0:
                return float(T)
            T0, r0 = lengths[i - 1], full_over_rmt[i - 1]
            f = (1 - r0) / (r - r0)
            return round(math.exp(math.log(T0) + f * (math.log(T) - math.log(T0))))
    return None


def main(quick: bool = False, lengths: Optional[list[int]] = None, repeats: Optional[int] = None,
         out_dir: Optional[Path] = None) -> dict[str, Any]:
    lengths = lengths or (QUICK_LENGTHS if quick else LENGTHS)
    attn = pick_attention(quick)
    chosen = attn["chosen"]
    full, cfg = build(quick, chosen, max(lengths), with_rmt=False)
    rmt_model = rmt.RecurrentMemoryTransformer(full, rmt.RMTConfig(
        num_mem_tokens=QUICK_MEMORY if quick else MEMORY, segment_size=QUICK_SEGMENT if quick else SEGMENT)).eval()
    warm = torch.randint(0, 256, (1, lengths[0]))
    forward_fn(full, warm, False)(), forward_fn(rmt_model, warm, True)()
    rows = []
    for T in lengths:
        r = repeats or (3 if T <= 8192 else 2 if T <= 16384 else 1)
        ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(1))
        t = interleaved({"full": forward_fn(full, ids, False), "rmt": forward_fn(rmt_model, ids, True)},
                        repeats=r, warmup=0, reference="rmt")
        # --quick measures memory at the longest length only, in this process (a subprocess costs seconds)
        measure = not quick or T == lengths[-1]
        mem = {v: isolated(NAME, "memory_case", in_process=quick, quick=quick, attn=chosen, variant=v, length=T)
               if measure else {} for v in ("full", "rmt")}
        row = {"length": T, "time": t, "full_over_rmt_time": t["ratio"]["full"],
               "peak_rss_mb": {v: mem[v].get("peak_rss_mb") for v in mem},
               "increment_mb": {v: mem[v].get("increment_mb") for v in mem}, "memory_runs": mem}
        inc = row["increment_mb"]
        row["full_over_rmt_peak_rss"] = round(row["peak_rss_mb"]["full"] / row["peak_rss_mb"]["rmt"], 3) \
            if None not in row["peak_rss_mb"].values() else None
        row["full_over_rmt_increment"] = round(max(inc["full"], 1.0) / max(inc["rmt"], 1.0), 3) \
            if None not in inc.values() else None
        rows.append(row)
        print(f"[{NAME}] T={T}: full {t['median_s']['full']:.3f}s rmt {t['median_s']['rmt']:.3f}s "
              f"(full/rmt {t['ratio']['full']:.2f}); peak RSS full {row['peak_rss_mb']['full']} MB "
              f"rmt {row['peak_rss_mb']['rmt']} MB", flush=True)
    xs = [r["length"] for r in rows]
    cross = crossover(xs, [r["full_over_rmt_time"] for r in rows])
    at = {r["length"]: r for r in rows}
    checkpoints = [8192, 16384] if not quick else [xs[-1]]
    targets = [target("report the crossover length (RMT faster than full attention beyond it)", cross, cross is not None)]
    for T in checkpoints:
        if T in at:
            targets.append(target(f"report time and memory ratios at {T} tokens (full / RMT)",
                                  {"time": at[T]["full_over_rmt_time"], "peak_rss": at[T]["full_over_rmt_peak_rss"],
                                   "increment": at[T]["full_over_rmt_increment"]}, True))
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0],
            "backbone": {k: getattr(cfg, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                       "intermediate_size", "vocab_size", "max_position_embeddings")},
            "segment_size": QUICK_SEGMENT if quick else SEGMENT, "num_mem_tokens": QUICK_MEMORY if quick else MEMORY,
            "attention": attn,
            "method": "time: forward under no_grad, batch 1, interleaved repeats (3 up to 8k, 2 at 16k, 1 at 32k), "
                      "median of per-repeat ratios. memory: fresh subprocess per (variant, length); peak RSS during the "
                      "call (high-water mark reset right before it, read with getrusage ru_maxrss); increment = peak "
                      "minus RSS right before the call (weights, interpreter and libraries excluded).",
            "crossover_length": cross, "rows": rows, "targets": targets}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    rows = [[r["length"], r["time"]["median_s"]["full"], r["time"]["median_s"]["rmt"], r["full_over_rmt_time"],
             r["peak_rss_mb"]["full"], r["peak_rss_mb"]["rmt"], r["increment_mb"]["full"], r["increment_mb"]["rmt"],
             r["full_over_rmt_increment"]] for r in data["rows"]]
    b = data["backbone"]
    head = (f"Backbone: Llama {b['num_hidden_layers']}L/{b['hidden_size']}d/V{b['vocab_size']}, attention "
            f"{data['attention']['chosen']} (eager/sdpa time {data['attention']['eager_over_sdpa']}); RMT segment "
            f"{data['segment_size']}, memory {data['num_mem_tokens']}. Crossover: ~{data['crossover_length']} tokens.\n\n")
    return head + md_table(["tokens", "full s", "RMT s", "full/RMT time", "full peak MB", "RMT peak MB",
                            "full +MB", "RMT +MB", "full/RMT +MB"], rows)


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per length (default 3/2/1 by length)")
    a = p.parse_args(argv)
    main(a.quick, a.lengths, a.repeats)


if __name__ == "__main__":
    cli()
