"""Token memory, the original RMT: memory vectors beside each segment, their outputs the next memory.

Two layouts, chosen from the backbone:

* decoder (causal) models: ``[read mem | segment | write mem]``; the write positions see the whole
  segment, so their last hidden state is the next memory (Bulatov et al., 2022, Fig. 1). Optionally
  a fixed sink token goes first, ``[sink | read mem | segment | write mem]``, to take the attention
  that pretrained decoders put on their first position away from the memory.
* encoder models: ``[CLS] mem segment [SEP]``; every position sees everything, so the outputs at
  the memory positions are the next memory (Bulatov et al., 2023, the scaling report).

The state is the memory itself, a (B, m, d) tensor. With ``bidirectional_memory`` a decoder's
memory positions see all of their own block (read or write), as in the NeurIPS 2022 paper; the
sequence tokens stay causal.

`MemoryTransformer` is the Memory Transformer baseline (Burtsev et al., 2020) of the NeurIPS
paper: ``[mem | segment]`` with the same learned memory on every segment, nothing carried.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

import torch
from torch import nn

from .base import BackboneInfo, MemoryMechanism, Run, arrange, block_attention, expand, take


def scaled_memory(m: int, embeddings: nn.Embedding) -> nn.Parameter:
    """(m, d) random vectors scaled like the token embeddings (Bulatov et al., 2022)."""
    weight = embeddings.weight
    init = torch.randn(m, embeddings.embedding_dim, dtype=weight.dtype, device=weight.device)
    return nn.Parameter(init * weight.detach().float().std().to(weight.dtype))


class TokenMemory(MemoryMechanism):
    """RMT's memory tokens, read before (decoders: and written after) every segment."""

    name = "rmt"
    write_block = True  # decoders: the write memory after the tokens, whose outputs are the next memory

    def __init__(self, config: Any, backbone: BackboneInfo):
        super().__init__(config, backbone)
        m = config.num_mem_tokens
        self.sink = backbone.is_causal and backbone.num_special == 1
        self.token_start = (int(self.sink) + m) if backbone.is_causal else 1 + m
        self.bidirectional = config.bidirectional_memory
        self.initial_memory = scaled_memory(m, backbone.embeddings)

    @classmethod
    def extra_positions(cls, config: Any, is_causal: bool) -> int:
        m = config.num_mem_tokens
        return (1 + cls.write_block) * m + int(config.sink_token_id is not None) if is_causal else m + 2

    def memory_embeddings(self) -> torch.Tensor:
        return self.initial_memory

    def init_state(self, batch_size: int) -> torch.Tensor:
        return self.initial_memory.unsqueeze(0).expand(batch_size, -1, -1)  # (B, m, d)

    def layout(self, length: int) -> list[tuple[str, int]]:
        m = self.num_mem_tokens
        if self.is_causal:
            blocks = [("sink", int(self.sink)), ("read", m), ("tokens", length), ("write", m * self.write_block)]
        else:  # one block, read by the tokens and (unless nothing is carried) the next memory
            blocks = [("cls", 1), ("memory" if self.carries_memory else "read", m), ("tokens", length), ("sep", 1)]
        return [(role, n) for role, n in blocks if n]

    def _prefix(self, memory: torch.Tensor, specials: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """What comes before the tokens: ``[sink] read mem`` (decoders) or ``[CLS] mem`` (encoders)."""
        b = memory.shape[0]
        if not self.is_causal:
            return [expand(specials[0], b), memory]
        return [expand(specials[0], b), memory] if self.sink else [memory]

    def segment(self, run: Run, embeds: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor,
                specials: Optional[torch.Tensor]) -> tuple[Any, torch.Tensor]:
        memory = state.to(embeds.dtype)  # (b, m, d)
        m = self.num_mem_tokens
        if self.is_causal:
            after = [memory] if self.write_block else []
        else:
            after = [expand(specials[1], embeds.shape[0])]
        seg = arrange(self._prefix(memory, specials), embeds, lengths, after)
        mask = seg.attention_mask
        if self.bidirectional and m:
            blocks = [torch.full_like(lengths, int(self.sink))] + ([seg.after] if self.write_block else [])
            mask = block_attention(mask, blocks, m, embeds.dtype)
        out = run(inputs_embeds=seg.inputs_embeds, attention_mask=mask)
        if not self.carries_memory:  # re-initialised every segment
            return out, state
        hidden = out.hidden_states[-1]  # (b, L, d)
        start = seg.after if self.is_causal else torch.ones_like(lengths)  # write slots, or the mem after [CLS]
        return out, take(hidden, start, m).to(state.dtype)

    def decoding(self, state: torch.Tensor, specials: Optional[torch.Tensor]):
        prefix = self._prefix(state.to(self.initial_memory.dtype), specials)
        return torch.cat(prefix, dim=1), nullcontext()  # (b, token_start, d)


class MemoryTransformer(TokenMemory):
    """Memory Transformer: ``[mem | segment]`` (encoders ``[CLS] mem segment [SEP]``) with the same
    learned memory on every segment; nothing crosses segments (the NeurIPS 2022 baseline)."""

    name = "mt"
    write_block = False
    carries_memory = False
