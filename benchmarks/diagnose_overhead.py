"""Where the RMT's time over the bare backbone goes (a diagnostic, not part of run_all).

Times, interleaved on the same segments: the backbone alone; `RecurrentMemoryTransformer.forward`;
the wrapper's own per-segment step (`model._segment`, private) in a plain loop with the outputs
concatenated once (what forward costs without its general (B, T, V) output assembly: boolean
gathers, a zero-filled (B, T, V) tensor and an index_put); and the same loop with the LM head
applied to the s token positions only (not to the 2m memory positions). Checks all four give
the same logits / loss.

    .venv/bin/python benchmarks/diagnose_overhead.py [--backbone gpt2|smollm2] [--layers N] [--mode forward train]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F

from common import interleaved
from overhead import DEFAULT_LAYERS, build_pair


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--backbone", default="gpt2", choices=["gpt2", "smollm2"])
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    a = p.parse_args(argv)
    s, m = 512, 16
    backbone, model, cfg = build_pair(a.backbone, False, a.layers or DEFAULT_LAYERS[a.backbone], s, m)
    ids = torch.randint(0, cfg.vocab_size, (1, a.segments * s), generator=torch.Generator().manual_seed(1))
    segs = ids.split(s, dim=1)
    base, head = backbone.base_model, backbone.get_output_embeddings()
    lengths = torch.full((1,), s)

    def loss_of(logits: torch.Tensor) -> torch.Tensor:  # next-token loss over the whole input, as forward's
        return F.cross_entropy(logits[0, :-1], ids[0, 1:])

    def loop_cat() -> torch.Tensor:
        memory, outs = model.init_memory(1), []
        for seg in segs:
            memory, out, _ = model._segment(seg, lengths, memory)
            outs.append(out)
        return torch.cat(outs, dim=1)  # (1, T, V)

    def tokens_only_head() -> torch.Tensor:
        memory, outs = model.init_memory(1), []
        for seg in segs:
            x = torch.cat([memory, backbone.get_input_embeddings()(seg), memory], dim=1)  # (1, s + 2m, d)
            h = base(inputs_embeds=x, use_cache=False).last_hidden_state
            memory = h[:, m + s:]
            outs.append(head(h[:, m:m + s]))  # the head on token positions only
        return torch.cat(outs, dim=1)

    with torch.no_grad():
        ref = model(ids).logits
        for f in (loop_cat, tokens_only_head):
            assert torch.allclose(f(), ref, atol=1e-4), f.__name__
    params = list(model.parameters())

    def variant(fn, train: bool):
        def run() -> None:
            if not train:
                model.eval()
                with torch.no_grad():
                    fn(False)
                return
            model.train()
            for q in params:
                q.grad = None
            fn(True).backward()
        return run

    fns = {
        "backbone": lambda t: (sum(backbone(input_ids=x, labels=x if t else None, use_cache=False).loss for x in segs)
                               if t else [backbone(input_ids=x, use_cache=False) for x in segs]),
        "rmt_forward": lambda t: model(ids, labels=ids).loss if t else model(ids),
        "segment_loop_cat": lambda t: loss_of(loop_cat()) if t else loop_cat(),
        "tokens_only_head": lambda t: loss_of(tokens_only_head()) if t else tokens_only_head(),
    }
    floor = (s + 2 * m) / s
    for mode in a.mode:
        t = interleaved({k: variant(f, mode == "train") for k, f in fns.items()}, repeats=a.repeats,
                        warmup=1 if mode == "forward" else 0, reference="backbone")
        print(f"{a.backbone} {cfg.num_hidden_layers}L {mode} (floor {floor:.4f}):")
        for k in fns:
            print(f"  {k:18s} {t['median_s'][k]:7.3f}s  x{t['ratio'][k]:.3f} of backbone  "
                  f"ratio/floor {t['ratio'][k] / floor:.3f}")


if __name__ == "__main__":
    main()
