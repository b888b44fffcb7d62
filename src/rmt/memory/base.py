"""What every memory mechanism says, in one place.

A mechanism owns its parameters (a learned initial memory, projections, ...), its *state* (what
crosses from one segment to the next: a tensor or a tuple/namedtuple of tensors, batch first), and
its segment layout. The wrapper's one segment loop asks it four things:

* `init_state(batch_size)`: the state before the first segment;
* `segment(run, embeds, lengths, state, specials)`: lay out one segment's inputs around the token
  embeddings, run the backbone through `run`, and return the backbone's output and the next state
  (read from the outputs, or collected by layer hooks while `run` runs);
* `decoding(state, specials)`: what comes before the tokens while the backbone decodes with its KV
  cache, and a context in which the decoded tokens read the state;
* `extra_positions(config, is_causal)`: how many positions a segment needs besides its tokens.

Selecting a state for the active rows of a ragged step, scattering it back, detaching it for
truncated BPTT and checking a state given by the caller work on any such state (`select`,
`scatter`, `detach`, `check_state`); a mechanism overrides them only if its state is unusual.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils._pytree import tree_flatten, tree_map

State = Any  # a tensor, or a tuple / namedtuple / list of tensors, each (B, ...)
Run = Callable[..., Any]  # run(inputs_embeds=, attention_mask=, **backbone_kwargs) -> the backbone's output


@dataclass
class BackboneInfo:
    """What a mechanism may know about the model it is attached to."""

    model: nn.Module  # the backbone as given (possibly a peft model)
    base: nn.Module  # the transformers model under a peft wrapper (or the backbone itself)
    is_causal: bool
    hidden_size: int
    embeddings: nn.Embedding
    num_special: int  # special tokens around each segment: 1 sink (decoders, optional), [CLS] + [SEP] (encoders)


@dataclass
class SegmentInputs:
    """One segment laid out for the backbone; rows right-padded, so positions restart at 0."""

    inputs_embeds: torch.Tensor  # (b, L, d)
    attention_mask: torch.Tensor  # (b, L), 1 on memory, tokens and special tokens, 0 on padding
    after: torch.Tensor  # (b,) position of the first slot after each row's tokens
    extra: dict = field(default_factory=dict)  # further backbone kwargs


def expand(vector: torch.Tensor, batch: int) -> torch.Tensor:
    """(d,) -> (batch, 1, d)."""
    return vector.view(1, 1, -1).expand(batch, 1, -1)


def arrange(before: list[torch.Tensor], embeds: torch.Tensor, lengths: torch.Tensor,
            after: list[torch.Tensor]) -> SegmentInputs:
    """``[before | tokens | after]`` for each row: before/after blocks (b, k, d) go around each row's
    `lengths` real tokens of `embeds` (b, w, d), the after blocks right after its last real token."""
    b, w, _ = embeds.shape
    head = torch.cat(before, dim=1) if before else embeds[:, :0]  # (b, p, d)
    tail = torch.cat(after, dim=1) if after else embeds[:, :0]  # (b, a, d)
    p, a = head.shape[1], tail.shape[1]
    if bool((lengths == w).all()):
        x = torch.cat([head, embeds, tail], dim=1)  # (b, p + w + a, d)
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
    else:
        rows = [torch.cat([head[i], embeds[i, : int(lengths[i])], tail[i]]) for i in range(b)]
        x = pad_sequence(rows, batch_first=True)  # (b, L, d)
        mask = (torch.arange(x.shape[1], device=x.device).view(1, -1) < (lengths + p + a).view(-1, 1)).long()
    return SegmentInputs(x, mask, p + lengths)


def block_attention(mask: torch.Tensor, starts: list[torch.Tensor], count: int, dtype: torch.dtype) -> torch.Tensor:
    """A 4-D additive attention mask (b, 1, L, L): causal, padding masked out, and within each memory
    block (`count` positions from each row's start (b,)) every position sees every other (the
    NeurIPS 2022 RMT's attention inside read and write memory blocks, its Fig. 6(d))."""
    b, L = mask.shape
    pos = torch.arange(L, device=mask.device)
    allowed = (pos.view(1, L, 1) >= pos.view(1, 1, L)).expand(b, L, L).clone()  # causal: query >= key
    for start in starts:
        inside = (pos.view(1, -1) >= start.view(-1, 1)) & (pos.view(1, -1) < start.view(-1, 1) + count)  # (b, L)
        allowed |= inside.unsqueeze(2) & inside.unsqueeze(1)
    allowed &= mask.bool().unsqueeze(1)  # no query sees padding
    allowed |= torch.eye(L, dtype=torch.bool, device=mask.device)  # a padding query sees itself (no empty rows)
    additive = torch.zeros(b, 1, L, L, dtype=dtype, device=mask.device)
    return additive.masked_fill(~allowed.unsqueeze(1), torch.finfo(dtype).min)


def take(hidden: torch.Tensor, start: torch.Tensor, count: int) -> torch.Tensor:
    """hidden (b, L, d) -> (b, count, d) from each row's own `start` (b,)."""
    idx = start.view(-1, 1) + torch.arange(count, device=hidden.device).view(1, -1)  # (b, count)
    return hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


class MemoryMechanism(nn.Module):
    """Base class of the memory mechanisms (see the module docstring for the contract)."""

    name: ClassVar[str]
    carries_memory: ClassVar[bool] = True  # False for baselines whose memory does not cross segments
    token_start: int  # where the tokens start in every laid-out row (the LM head projects from here)

    def __init__(self, config: Any, backbone: BackboneInfo):
        super().__init__()
        self.num_mem_tokens = config.num_mem_tokens
        self.is_causal = backbone.is_causal

    @classmethod
    def extra_positions(cls, config: Any, is_causal: bool) -> int:
        raise NotImplementedError

    def init_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def segment(self, run: Run, embeds: torch.Tensor, lengths: torch.Tensor, state: State,
                specials: Optional[torch.Tensor]) -> tuple[Any, State]:
        raise NotImplementedError

    def decoding(self, state: State, specials: Optional[torch.Tensor]) -> tuple[torch.Tensor, AbstractContextManager]:
        raise NotImplementedError

    def memory_embeddings(self) -> Optional[torch.Tensor]:
        """The learned (m, d) memory vectors, if the mechanism has them (None otherwise)."""
        return None

    def layout(self, length: int) -> list[tuple[str, int]]:
        """The row `segment` lays out for a segment of `length` tokens, as (role, size) blocks in order.

        Roles: ``tokens``; ``sink``, ``cls``, ``sep`` (special tokens); ``read`` (memory the tokens
        read), ``write`` (memory positions whose outputs are written to the next state) and
        ``memory`` (an encoder's block, read and written at the same positions). Attention maps
        (`rmt.analysis.attention`) name positions with it; a test holds it to what `segment` builds.
        """
        raise NotImplementedError(f"the {self.name!r} memory does not describe its segment layout")

    # ------------------------------------------------------------------ any state

    @staticmethod
    def select(state: State, rows: torch.Tensor) -> State:
        return tree_map(lambda t: t.index_select(0, rows), state)

    @staticmethod
    def scatter(state: State, rows: torch.Tensor, new: State) -> State:
        return tree_map(lambda full, part: full.index_copy(0, rows, part.to(full.dtype)), state, new)

    @staticmethod
    def detach(state: State) -> State:
        return tree_map(torch.Tensor.detach, state)

    def check_state(self, state: Optional[State], batch_size: int) -> State:
        """The caller's state (``memory=``), checked against a fresh one; None gives the initial state."""
        fresh = self.init_state(batch_size)
        if state is None:
            return fresh
        want, want_spec = tree_flatten(fresh)
        got, got_spec = tree_flatten(state)
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in got]
        if got_spec != want_spec or any(not isinstance(t, torch.Tensor) for t in got) or \
                shapes != [tuple(t.shape) for t in want]:
            expected = [tuple(t.shape) for t in want]
            raise ValueError(
                f"memory does not fit the {self.name!r} memory of this model for a batch of {batch_size}: expected "
                f"{expected[0] if len(expected) == 1 else expected}, got {shapes[0] if len(shapes) == 1 else shapes}; "
                "pass the .memory of a previous output for the same batch, or model.init_memory(batch_size)")
        for t in got:
            if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                raise ValueError("memory holds NaN or inf values; it cannot be read (was it produced by a diverged model?)")
        return tree_map(lambda t, ref: t.to(ref.dtype), state, fresh)
