"""Wrap a model, read an input far longer than its context, continue the read, stream, generate.

Runs offline in seconds: the backbone is a small random GPT-2 (swap in any
`AutoModelForCausalLM.from_pretrained(...)`).
"""

import torch
import transformers

import rmt

backbone = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128))
model = rmt.RecurrentMemoryTransformer(backbone, rmt.RMTConfig(num_mem_tokens=8, segment_size=96))

ids = torch.randint(0, backbone.config.vocab_size, (2, 1000))  # 8x the backbone's 128 positions
out = model(ids, labels=ids)
print(f"loss {out.loss:.3f} over {out.segment_losses.numel()} segments; logits {tuple(out.logits.shape)}; "
      f"memory {tuple(out.memory.shape)}")
out.loss.backward()  # backpropagation through time over all 11 segments

model.eval()  # no dropout from here on
more = model(ids[:, :192], memory=out.memory)  # continue the read where it stopped
read = model.stream((ids[:, i : i + 300] for i in range(0, 1000, 300)), compute_loss=True)  # any chunking
print(f"streamed {read.num_tokens} tokens in {read.num_segments} segments, loss {read.loss:.3f}")

print("generated:", model.generate(ids[:, :200], max_new_tokens=10)[:, 200:].tolist())
