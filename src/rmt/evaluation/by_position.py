"""Where in a segment memory helps: the mean loss at each position of the last segment.

The scaling report (Bulatov et al., 2024, Fig. 8) plots a language model's loss by position inside
a segment: a model that reads each segment alone is worst at the segment's start, where it has no
context, and memory (or a cache of the previous segment) should help most there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..recurrent import RecurrentMemoryTransformer
from ..tasks.base import IGNORE_INDEX, Task


@torch.no_grad()
def loss_by_position(model: RecurrentMemoryTransformer, task: Task, num_examples: int, batch_size: int = 8,
                     split: str = "validation") -> list[float]:
    """Mean next-token loss at each position ``j`` of the last segment: the input's last
    ``segment_size`` positions (the model's), one value each.

    Position ``j`` is the loss of predicting the last segment's token ``j`` (from the logits one
    position earlier, so ``j = 0`` is predicted from the previous segment's last token; NaN when
    nothing precedes it or when no example labels it). Examples must be of one length (a language
    modelling task's windows), so that the last segment is the same positions in every row.
    """
    if task.kind != "causal-lm":
        raise ValueError(f"loss_by_position needs a causal language-modelling task, got {task.name!r} ({task.kind})")
    size = model.rmt_config.segment_size
    sums, counts = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for start in range(0, num_examples, batch_size):
        batch = task.collate([task.example(i, split) for i in range(start, min(start + batch_size, num_examples))])
        if "attention_mask" in batch and not bool(batch["attention_mask"].all()):
            raise ValueError("loss_by_position needs examples of one length (no padding), as language-modelling "
                             "windows are; this task's examples differ in length")
        ids, labels = batch["input_ids"].to(model.device), batch["labels"].to(model.device)
        T = ids.shape[1]
        first = T - min(size, T)  # the last segment's first position
        logits = model(ids, attention_mask=torch.ones_like(ids)).logits
        target = labels[:, first:]
        # position j of the last segment is predicted at position first + j - 1 (none for the input's first token)
        context = logits[:, max(first - 1, 0):T - 1].float()
        if first == 0:
            target = target[:, 1:]
        losses = F.cross_entropy(context.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        scored = (target != IGNORE_INDEX).double()
        offset = size - target.shape[1]  # 1 when the input's first token is unpredicted
        sums[offset:offset + target.shape[1]] += (losses.double().cpu() * scored.cpu()).sum(0)
        counts[offset:offset + target.shape[1]] += scored.cpu().sum(0)
    model.train(was_training)
    return [float(s / c) if c else math.nan for s, c in zip(sums.tolist(), counts.tolist())]
