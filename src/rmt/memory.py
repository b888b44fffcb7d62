"""One segment: put memory next to the token embeddings, and read the new memory back out.

Two layouts, chosen from the backbone (see `layout_for`):

* decoder (causal) models: ``[read mem | segment | write mem]``; the write positions see the whole
  segment, so their last hidden state is the next memory (Bulatov et al., 2022, Fig. 1). Optionally
  a fixed sink token goes first, ``[sink | read mem | segment | write mem]``, to take the attention
  that pretrained decoders put on their first position away from the memory.
* encoder models: ``[CLS] mem segment [SEP]``; every position sees everything, so the outputs at
  the memory positions are the next memory (Bulatov et al., 2023, the scaling report).

Segments in one step may have different lengths (ragged batches, the last partial segment).
Sequences are right-padded after the layout, so each sample's positions are exactly what they
would be alone: positions restart at 0 every segment and padding is masked out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn.utils.rnn import pad_sequence


@dataclass
class SegmentInputs:
    inputs_embeds: torch.Tensor  # (b, L, d)
    attention_mask: torch.Tensor  # (b, L), 1 on memory, tokens and special tokens, 0 on padding


class DecoderLayout:
    """``[read mem | segment | write mem]`` for causal models, or ``[sink | read mem | segment | write mem]``."""

    is_causal = True

    def __init__(self, num_mem_tokens: int, sink: bool = False):
        self.m = num_mem_tokens
        self.num_special = int(sink)  # the sink token, if any
        self.prefix = self.num_special + num_mem_tokens  # positions before the first token

    def head(self, memory: torch.Tensor, specials: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(b, prefix, d): what comes before the tokens, ``[sink] read mem``; specials (1, d) the sink embedding."""
        if not self.num_special:
            return memory
        b, _, d = memory.shape
        return torch.cat([specials[0].to(memory.dtype).expand(b, 1, d), memory], dim=1)

    def build(self, embeds: torch.Tensor, lengths: torch.Tensor, memory: torch.Tensor,
              specials: Optional[torch.Tensor] = None) -> SegmentInputs:
        """embeds (b, w, d) right-padded tokens, lengths (b,) real tokens per row, memory (b, m, d)."""
        b, w, _ = embeds.shape
        head = self.head(memory, specials)
        if bool((lengths == w).all()):
            x = torch.cat([head, embeds, memory], dim=1)  # (b, prefix + w + m, d)
            mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
            return SegmentInputs(x, mask)
        # ragged: the write memory goes right after each row's last real token
        rows = [torch.cat([head[i], embeds[i, : int(lengths[i])], memory[i]]) for i in range(b)]
        x = pad_sequence(rows, batch_first=True)  # (b, L, d)
        mask = _length_mask(lengths + self.prefix + self.m, x.shape[1])
        return SegmentInputs(x, mask)

    def read(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """hidden (b, L, d) -> the next memory (b, m, d) at the write positions."""
        start = (self.prefix + lengths).view(-1, 1)  # (b, 1)
        idx = start + torch.arange(self.m, device=hidden.device).view(1, -1)  # (b, m)
        return hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


class EncoderLayout:
    """``[CLS] mem segment [SEP]`` for bidirectional encoders."""

    is_causal = False
    num_special = 2

    def __init__(self, num_mem_tokens: int):
        self.m = num_mem_tokens
        self.prefix = 1 + num_mem_tokens

    def build(self, embeds: torch.Tensor, lengths: torch.Tensor, memory: torch.Tensor,
              specials: Optional[torch.Tensor] = None) -> SegmentInputs:
        """As DecoderLayout.build; specials (2, d) are the [CLS] and [SEP] embeddings."""
        b, w, d = embeds.shape
        cls = specials[0].to(embeds.dtype).expand(b, 1, d)
        sep = specials[1].to(embeds.dtype)
        if bool((lengths == w).all()):
            x = torch.cat([cls, memory, embeds, sep.expand(b, 1, d)], dim=1)  # (b, 1 + m + w + 1, d)
            mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
            return SegmentInputs(x, mask)
        rows = [torch.cat([cls[i], memory[i], embeds[i, : int(lengths[i])], sep.view(1, d)]) for i in range(b)]
        x = pad_sequence(rows, batch_first=True)
        mask = _length_mask(lengths + self.m + 2, x.shape[1])
        return SegmentInputs(x, mask)

    def read(self, hidden: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return hidden[:, 1 : 1 + self.m]  # (b, m, d)


def _length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(b,) lengths -> (b, width) long mask with ones on the first `length` positions."""
    return (torch.arange(width, device=lengths.device).view(1, -1) < lengths.view(-1, 1)).long()
