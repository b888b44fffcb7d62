"""Output types of the recurrent memory wrapper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput


@dataclass
class RMTOutput(ModelOutput):
    """What one call of `RecurrentMemoryTransformer` returns.

    Attributes:
        loss: scalar, or None without labels. Causal LM: token cross-entropy over every segment's
            labelled tokens, weighted by token count. Classification: the last segment's loss.
        logits: causal LM (and other per-token heads): (B, T, V) at the input's positions (zeros at
            padding); sequence classification: (B, num_labels) from each sample's last segment.
        memory: (B, m, d), the memory after each sample's last segment; pass it back as
            ``memory=`` to continue reading.
        segment_losses: (S,) mean loss of each segment step (NaN where a step has no labelled
            token); None without labels.
        last_hidden_state: (B, T, d) token outputs of a backbone without a head, else None.
        predictions: (B, T) argmax token at every position (0 at padding), with
            ``return_predictions=True``; else None.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    memory: Optional[torch.Tensor] = None
    segment_losses: Optional[torch.Tensor] = None
    last_hidden_state: Optional[torch.Tensor] = None
    predictions: Optional[torch.Tensor] = None


@dataclass
class RMTStreamOutput(ModelOutput):
    """What `RecurrentMemoryTransformer.stream` returns after reading a long input.

    Attributes:
        memory: (B, m, d) after the last segment.
        loss: mean next-token loss over the whole stream (causal LM with ``compute_loss=True``).
        num_tokens: tokens read per sample.
        num_segments: segments processed.
        segment_losses: (S,) per-segment mean loss, when the loss is computed.
        logits: the last segment's logits (sequence classification: (B, num_labels); causal LM:
            the last position's (B, V)).
    """

    memory: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    num_tokens: Optional[int] = None
    num_segments: Optional[int] = None
    segment_losses: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
