"""Benchmark 1: RMT overhead against the bare backbone on the same segments.

The RMT reads k segments of s tokens, each as ``[read mem | segment | write mem]`` (s + 2m
positions); the baseline runs the same backbone on the same k segments of s tokens without
memory. Every layer's cost is at least linear in positions, so the floor on the ratio is
(s + 2m) / s; the target is a measured ratio within 1.10x of that floor. Forward (no_grad, eval)
and training step (forward + backward, train mode) are timed interleaved; random weights, fp32.

    .venv/bin/python benchmarks/overhead.py [--quick] [--layers N] [--segments K] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers

import rmt
from common import interleaved, md_table, target, write_result

NAME = "overhead"
TARGET = 1.10  # measured ratio / floor


# default depth of the timed runs: the real widths, heads and vocabularies, fewer layers to keep
# `make bench` short on 2 shared cores (--full-depth runs 12 and 30). Fewer layers make the
# per-token vocabulary projection a larger share of the time, so the overhead is if anything overstated.
DEFAULT_LAYERS = {"gpt2": 6, "smollm2": 10}
FULL_LAYERS = {"gpt2": 12, "smollm2": 30}


def backbone_config(kind: str, quick: bool, layers: Optional[int], positions: int) -> transformers.PretrainedConfig:
    """GPT-2-small shape or SmolLM2-135M shape (random weights, dropout off), or tiny ones for --quick."""
    if kind == "gpt2":
        shape = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)
        if quick:
            shape = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0)
        if layers:
            shape["n_layer"] = layers
        return transformers.GPT2Config(**shape, n_positions=positions, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0, loss_type="ForCausalLM")
    shape = dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152)
    if quick:
        shape = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=1000)
    if layers:
        shape["num_hidden_layers"] = layers
    return transformers.LlamaConfig(**shape, max_position_embeddings=positions, tie_word_embeddings=True,
                                    loss_type="ForCausalLM")


def build_pair(kind: str, quick: bool, layers: Optional[int], segment: int, memory: int):
    torch.manual_seed(0)
    cfg = backbone_config(kind, quick, layers, positions=segment + 2 * memory)
    cfg._attn_implementation = "sdpa"
    backbone = transformers.AutoModelForCausalLM.from_config(cfg)
    model = rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=memory, segment_size=segment))
    return backbone, model, cfg


def step_functions(backbone, model, ids: torch.Tensor, segment: int) -> dict[str, dict[str, Callable[[], Any]]]:
    segments = ids.split(segment, dim=1)
    params = list(model.parameters())

    def clear() -> None:
        for p in params:
            p.grad = None

    def fwd_backbone() -> None:
        backbone.eval()
        with torch.no_grad():
            for seg in segments:
                backbone(input_ids=seg, use_cache=False)

    def fwd_rmt() -> None:
        model.eval()
        with torch.no_grad():
            model(ids)

    def train_backbone() -> None:
        backbone.train()
        clear()
        loss = sum(backbone(input_ids=seg, labels=seg, use_cache=False).loss for seg in segments) / len(segments)
        loss.backward()

    def train_rmt() -> None:
        model.train()
        clear()
        model(ids, labels=ids).loss.backward()

    return {"forward": {"backbone": fwd_backbone, "rmt": fwd_rmt},
            "train_step": {"backbone": train_backbone, "rmt": train_rmt}}


def run_one(kind: str, quick: bool, layers: Union[int, dict, None], segments: int, batch: int, repeats: int) -> dict[str, Any]:
    segment, memory = (64, 4) if quick else (512, 16)
    layers = None if quick else (layers if isinstance(layers, int) else None) or DEFAULT_LAYERS[kind]
    backbone, model, cfg = build_pair(kind, quick, layers, segment, memory)
    torch.manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch, segments * segment))
    floor = (segment + 2 * memory) / segment
    out: dict[str, Any] = {
        "backbone": kind, "full_depth": FULL_LAYERS[kind],
        "shape": {k: getattr(cfg, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")},
        "num_key_value_heads": getattr(cfg, "num_key_value_heads", None),
        "segment_size": segment, "num_mem_tokens": memory, "segments": segments, "batch": batch,
        "floor": round(floor, 4),
    }
    for mode, variants in step_functions(backbone, model, ids, segment).items():
        # the forward warm-up also warms the training step's kernels; its own would cost minutes
        t = interleaved(variants, repeats=repeats, warmup=1 if mode == "forward" else 0, reference="backbone")
        ratio = t["ratio"]["rmt"]
        out[mode] = {**t, "ratio_rmt_over_backbone": ratio, "ratio_over_floor": round(ratio / floor, 4),
                     "tokens_per_s_rmt": round(batch * segments * segment / t["median_s"]["rmt"], 1),
                     "tokens_per_s_backbone": round(batch * segments * segment / t["median_s"]["backbone"], 1)}
        print(f"[{NAME}] {kind} {mode}: backbone {t['median_s']['backbone']:.3f}s rmt {t['median_s']['rmt']:.3f}s "
              f"ratio {ratio:.3f} floor {floor:.4f} ratio/floor {ratio / floor:.3f}", flush=True)
    return out


def main(quick: bool = False, layers: Union[int, dict, None] = None, segments: Optional[int] = None, batch: int = 1,
         repeats: Optional[int] = None, backbones: tuple[str, ...] = ("gpt2", "smollm2"),
         out_dir: Optional[Path] = None) -> dict[str, Any]:
    segments = segments or 2
    repeats = repeats or (2 if quick else 3)
    results = [run_one(kind, quick, layers.get(kind) if isinstance(layers, dict) else layers, segments, batch, repeats)
               for kind in backbones]
    targets = []
    for r in results:
        for mode in ("forward", "train_step"):
            x = r[mode]["ratio_over_floor"]
            targets.append(target(f"{r['backbone']} {mode}: RMT/backbone time within {TARGET}x of the floor "
                                  f"(s+2m)/s = {r['floor']}", x, x <= TARGET))
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0],
            "method": "interleaved repeats (order reversed every other repeat), median of per-repeat ratios; fp32 CPU, "
                      "random weights, sdpa attention; forward under no_grad in eval mode, training step = forward + "
                      "backward with labels in train mode (dropout 0). Real widths/heads/vocabularies; depth reduced "
                      "(see shape vs full_depth) unless --full-depth.",
            "results": results, "targets": targets}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    rows = []
    for r in data["results"]:
        s = r["shape"]
        shape = (f"{r['backbone']} {s['num_hidden_layers']}L (of {r['full_depth']})/{s['hidden_size']}d/"
                 f"V{s['vocab_size']}")
        for mode in ("forward", "train_step"):
            x = r[mode]
            rows.append([shape, mode, f"{r['segments']}x{r['segment_size']}", x["median_s"]["backbone"],
                         x["median_s"]["rmt"], x["ratio_rmt_over_backbone"], r["floor"], x["ratio_over_floor"]])
    return md_table(["backbone", "mode", "segments", "backbone s", "RMT s", "RMT/backbone", "floor (s+2m)/s",
                     "ratio/floor"], rows)


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--layers", type=int, default=None, help=f"layers of both backbones (default {DEFAULT_LAYERS})")
    p.add_argument("--full-depth", action="store_true", help=f"the real depths {FULL_LAYERS} (slow)")
    p.add_argument("--segments", type=int, default=None, help="segments per input (default 2)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3; 2 with --quick)")
    p.add_argument("--backbones", nargs="+", default=["gpt2", "smollm2"], choices=["gpt2", "smollm2"])
    a = p.parse_args(argv)
    main(a.quick, FULL_LAYERS if a.full_depth else a.layers, a.segments, a.batch, a.repeats, tuple(a.backbones))


if __name__ == "__main__":
    cli()
