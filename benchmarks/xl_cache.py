"""Benchmark 7: the Transformer-XL cache (Tr-XL + RMT) against RMT alone.

One GPT-2-shaped backbone (4 layers, hidden 512, 8 heads, vocab 8192) wrapped twice: token memory
(``[read | segment | write]``, s + 2m positions) and the same with ``xl_cache=N``, where every
segment also attends to the cached keys and values of the previous N token positions (N slots
from the first segment on, the empty ones masked). 4 segments of 512 tokens, 16 memory tokens,
N = 512; forward (no_grad, eval) and training step (forward + backward) interleaved.

Floor: the cache adds only attention work, N more keys for each of the s + 2m queries in every
layer (logits, softmax, reduction; `rmt.analysis.flops`'s per-term count), so the floor on the
time ratio is the FLOPs ratio. Target: the measured ratio within 1.10x of that floor, both modes
(the keeping of the cache after each segment, a gather of N + s keys per layer, is extra).

    .venv/bin/python benchmarks/xl_cache.py [--quick] [--repeats R]
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
from common import QUICK_GPT2, WRAPPER_MODES, interleaved, md_table, random_gpt2, target, write_result
from rmt.analysis.flops import forward_flops, from_hf_config

NAME = "xl_cache"
TARGET = 1.10  # measured ratio / FLOPs floor


def build_pair(quick: bool):
    """One GPT-2 backbone wrapped twice: RMT, and RMT with an XL cache."""
    segment, memory, cache, segments = (64, 4, 64, 3) if quick else (512, 16, 512, 4)
    shape = QUICK_GPT2 if quick else dict(n_layer=4, n_embd=512, n_head=8, vocab_size=8192)
    backbone = random_gpt2(shape, segment + 2 * memory + cache)
    cfg = backbone.config
    plain = rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=memory, segment_size=segment))
    xl = rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=memory, segment_size=segment,
                                                                xl_cache=cache))
    return {"rmt": plain, "xl": xl}, cfg, segment, memory, cache, segments


def flops_floor(cfg: transformers.PretrainedConfig, segment: int, memory: int, cache: int) -> float:
    """FLOPs of one segment with the cache over those without: N more keys for L = s + 2m queries."""
    shape = from_hf_config(cfg)
    L, d, h = segment + 2 * memory, shape.d_model, shape.num_heads
    extra = shape.num_layers * (2 * L * cache * d + 3 * h * L * cache + 2 * L * cache * d)  # QK^T, softmax, AV
    plain = forward_flops(shape, L)
    return (plain + extra) / plain


def timing(quick: bool, repeats: int) -> dict[str, Any]:
    models, cfg, segment, memory, cache, segments = build_pair(quick)
    torch.manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, segments * segment))

    floor = flops_floor(cfg, segment, memory, cache)
    out: dict[str, Any] = {"shape": {k: getattr(cfg, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size")},
                           "segment_size": segment, "num_mem_tokens": memory, "xl_cache": cache, "segments": segments,
                           "flops_floor": round(floor, 4)}
    for mode, make in WRAPPER_MODES:
        t = interleaved({name: make(m, ids) for name, m in models.items()}, repeats=repeats, warmup=1, reference="rmt")
        ratio = t["ratio"]["xl"]
        out[mode] = {**t, "ratio_xl_over_rmt": ratio, "ratio_over_floor": round(ratio / floor, 4)}
        print(f"[{NAME}] {mode}: rmt {t['median_s']['rmt']:.3f}s xl+rmt {t['median_s']['xl']:.3f}s "
              f"ratio {ratio:.3f} (FLOPs floor {floor:.3f})", flush=True)
    return out


def main(quick: bool = False, repeats: Optional[int] = None, out_dir: Optional[Path] = None) -> dict[str, Any]:
    rows = timing(quick, repeats or (2 if quick else 5))
    targets = [target(f"XL+RMT/RMT {mode} time within {TARGET}x of the FLOPs floor {rows['flops_floor']:.3f}",
                      rows[mode]["ratio_over_floor"], rows[mode]["ratio_over_floor"] <= TARGET)
               for mode in ("forward", "train_step")]
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0],
            "method": "interleaved repeats (one warm-up), median of per-repeat ratios, fp32 CPU, random weights, sdpa; "
                      "both wrappers share one backbone; return_logits=False, the training step with labels.",
            "timing": rows, "targets": targets}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    t = data["timing"]
    s = t["shape"]
    rows = [[f"GPT-2 {s['n_layer']}L/{s['n_embd']}d/V{s['vocab_size']}", mode,
             f"{t['segments']}x{t['segment_size']}, N={t['xl_cache']}", t[mode]["median_s"]["rmt"],
             t[mode]["median_s"]["xl"], t[mode]["ratio_xl_over_rmt"], t["flops_floor"], t[mode]["ratio_over_floor"]]
            for mode in ("forward", "train_step")]
    return md_table(["backbone", "mode", "segments, cache", "RMT s", "XL+RMT s", "XL+RMT/RMT", "FLOPs floor",
                     "ratio/floor"], rows)


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    main(a.quick, a.repeats)


if __name__ == "__main__":
    cli()
