"""Benchmark 3: against the peer implementation `recurrent-memory-transformer-pytorch` (lucidrains).

Matched depth, width, heads (head dim 64), feed-forward width, vocabulary, segment and memory
sizes. Ours wraps a Llama-shaped transformers backbone (RMSNorm, gated FF of 2/3 * 4 * d, no
biases), the closest HF architecture to the peer's own transformer. The peer runs in two
configurations: `peer` = matched (sdpa attention, no XL memories and no hyper-connections, which
ours does not have) and `peer_default` = its defaults for those three options (einsum attention,
XL memories, 4 residual streams). Forward (no_grad, eval) and training step (forward + backward
of the LM loss, train mode) are timed interleaved; peak memory of each in a fresh subprocess.
The target: ours at least as fast as the matched peer.

    .venv/bin/python benchmarks/peer.py [--quick] [--depth N] [--dim D] [--segments K] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers

import rmt
from common import interleaved, isolated, md_table, target, write_result

NAME = "peer"
PEER_PACKAGE = "recurrent-memory-transformer-pytorch"
VARIANTS = ("rmt", "peer", "peer_default")


def shape(quick: bool, depth: Optional[int] = None, dim: Optional[int] = None, segments: Optional[int] = None
          ) -> dict[str, int]:
    s = dict(depth=4, dim=512, heads=8, vocab=8192, segment=512, memory=16, segments=3, batch=1)
    if quick:
        s = dict(depth=2, dim=64, heads=2, vocab=512, segment=64, memory=4, segments=2, batch=1)
    for k, v in (("depth", depth), ("dim", dim), ("segments", segments)):
        if v:
            s[k] = v
    s["heads"] = s["dim"] // 64 if not quick else s["heads"]
    s["ff_inner"] = int(s["dim"] * 4 * 2 / 3)  # the peer's GEGLU width for ff_mult=4
    return s


def build(variant: str, s: dict[str, int]) -> torch.nn.Module:
    torch.manual_seed(0)
    if variant == "rmt":
        cfg = transformers.LlamaConfig(
            num_hidden_layers=s["depth"], hidden_size=s["dim"], num_attention_heads=s["heads"],
            num_key_value_heads=s["heads"], intermediate_size=s["ff_inner"], vocab_size=s["vocab"],
            max_position_embeddings=s["segment"] + 2 * s["memory"], tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=0, pad_token_id=0, loss_type="ForCausalLM")
        cfg._attn_implementation = "sdpa"
        return rmt.RecurrentMemoryTransformer(transformers.LlamaForCausalLM(cfg),
                                              rmt.RMTConfig(num_mem_tokens=s["memory"], segment_size=s["segment"]))
    from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformer, RecurrentMemoryTransformerWrapper

    options = (dict(use_flash_attn=True, use_xl_memories=False, num_residual_streams=1) if variant == "peer"
               else dict(use_flash_attn=False, use_xl_memories=True, num_residual_streams=4))
    net = RecurrentMemoryTransformer(s["dim"], num_tokens=s["vocab"], depth=s["depth"], num_memory_tokens=s["memory"],
                                     seq_len=s["segment"], causal=True, dim_head=64 if s["dim"] >= 64 else s["dim"] // s["heads"],
                                     heads=s["heads"], ff_mult=4, **options)
    return RecurrentMemoryTransformerWrapper(net)


def step(variant: str, model: torch.nn.Module, ids: torch.Tensor, mode: str) -> Callable[[], Any]:
    """ids: (B, k*s + 1); both sides predict tokens 1.. from tokens ..k*s-1 over k full segments."""
    params = list(model.parameters())
    x = ids[:, :-1]

    def run() -> None:
        if mode == "forward":
            model.eval()
            with torch.no_grad():
                if variant == "rmt":
                    model(x)
                else:
                    model(x)  # (logits, memories)
            return
        model.train()
        for p in params:
            p.grad = None
        if variant == "rmt":
            loss = model(x, labels=x).loss
        else:
            loss, _ = model(ids, return_loss=True)  # splits ids into x = ids[:, :-1], labels = ids[:, 1:]
        loss.backward()

    return run


def inputs(s: dict[str, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, s["vocab"], (s["batch"], s["segments"] * s["segment"] + 1), generator=g)


def memory_case(variant: str, mode: str, s: dict[str, int]):
    """Worker builder for the peak-RSS measurement."""
    return step(variant, build(variant, s), inputs(s), mode)


def peer_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PEER_PACKAGE)
    except PackageNotFoundError:
        return None


def main(quick: bool = False, depth: Optional[int] = None, dim: Optional[int] = None, segments: Optional[int] = None,
         repeats: Optional[int] = None, out_dir: Optional[Path] = None) -> dict[str, Any]:
    s = shape(quick, depth, dim, segments)
    version = peer_version()
    if version is None:
        data = {"quick": quick, "skipped": f"{PEER_PACKAGE} is not installed: "
                f".venv/bin/pip install --no-deps {PEER_PACKAGE} einops hyper-connections torch-einops-utils",
                "targets": [target("ours at least as fast as the peer", None, False)]}
        write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
        print(f"[{NAME}] skipped: {data['skipped']}")
        return data
    repeats = repeats or (1 if quick else 3)
    models = {v: build(v, s) for v in VARIANTS}
    ids = inputs(s)
    tokens = s["batch"] * s["segments"] * s["segment"]
    results: dict[str, Any] = {}
    for mode in ("forward", "train_step"):
        t = interleaved({v: step(v, m, ids, mode) for v, m in models.items()}, repeats=repeats, warmup=1, reference="rmt")
        mem = {v: isolated(NAME, "memory_case", in_process=quick, variant=v, mode=mode, s=s) for v in VARIANTS}
        results[mode] = {
            "time": t,
            "tokens_per_s": {v: round(tokens / t["median_s"][v], 1) for v in VARIANTS},
            "peer_over_rmt_time": {v: t["ratio"][v] for v in VARIANTS if v != "rmt"},
            "peak_rss_mb": {v: mem[v].get("peak_rss_mb") for v in VARIANTS},
            "increment_mb": {v: mem[v].get("increment_mb") for v in VARIANTS},
            "memory_runs": mem,
        }
        print(f"[{NAME}] {mode}: " + ", ".join(f"{v} {t['median_s'][v]:.3f}s ({tokens / t['median_s'][v]:.0f} tok/s, "
                                              f"peak {mem[v].get('peak_rss_mb')} MB)" for v in VARIANTS), flush=True)
    targets = [target(f"{mode}: ours at least as fast as the matched peer (peer time / our time >= 1)",
                      results[mode]["peer_over_rmt_time"]["peer"], results[mode]["peer_over_rmt_time"]["peer"] >= 1.0)
               for mode in ("forward", "train_step")]
    params = {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()}
    data = {"quick": quick, "description": __doc__.strip().splitlines()[0], "peer_version": version, "shape": s,
            "parameters": params,
            "method": "interleaved repeats (median of per-repeat ratios), batch 1, fp32, random weights; peak RSS in a "
                      "fresh subprocess per (variant, mode), high-water mark reset right before the call.",
            "results": results, "targets": targets}
    write_result(NAME, data, **({"out_dir": out_dir} if out_dir else {}))
    return data


def markdown(data: dict[str, Any]) -> str:
    if "skipped" in data:
        return f"Skipped: {data['skipped']}"
    s = data["shape"]
    head = (f"Shape: depth {s['depth']}, width {s['dim']}, {s['heads']} heads, FF {s['ff_inner']}, vocab {s['vocab']}, "
            f"{s['segments']} segments of {s['segment']}, memory {s['memory']}; peer {data['peer_version']} "
            f"(`peer` = matched options, `peer_default` = its defaults).\n\n")
    rows = []
    for mode in ("forward", "train_step"):
        r = data["results"][mode]
        for v in VARIANTS:
            rows.append([mode, v, r["time"]["median_s"][v], r["tokens_per_s"][v], r["time"]["ratio"][v],
                         r["peak_rss_mb"][v], r["increment_mb"][v]])
    return head + md_table(["mode", "implementation", "s", "tokens/s", "time / ours", "peak MB", "+MB"], rows)


def cli(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--dim", type=int, default=None, help="width (heads = dim / 64)")
    p.add_argument("--segments", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    main(a.quick, a.depth, a.dim, a.segments, a.repeats)


if __name__ == "__main__":
    cli()
