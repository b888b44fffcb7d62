"""The segment schedule: which sample reads which tokens at each step. Pure tensor functions.

Every sample's real tokens are packed to the left of its row (padding may be anywhere in the
caller's tensor), cut into ``segment_size`` segments, and the samples are aligned at their *last*
segment: a shorter sample simply starts later, and its memory waits unchanged until then. Step
``j`` runs the backbone on the samples active at ``j`` only, so padding never touches a memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Plan:
    """Where each sample's segments are: real tokens packed to the left, one row per sample."""

    ids: torch.Tensor  # (B, Lmax) real tokens first
    positions: torch.Tensor  # (B, Lmax) their positions in the caller's tensor
    lengths: torch.Tensor  # (B,) real tokens per sample
    num_segments: torch.Tensor  # (B,)
    num_steps: int
    segment_size: int
    alignment: str

    @property
    def uniform(self) -> bool:
        """No padding: every sample has the full width, so segments tile the input in order."""
        return bool((self.lengths == self.ids.shape[1]).all())


@dataclass
class Step:
    """The samples active at one step and the tokens each reads."""

    rows: torch.Tensor  # (b,) samples active in this step
    index: torch.Tensor  # (b, w) indices into the packed rows
    valid: torch.Tensor  # (b, w) bool, False on padding
    lengths: torch.Tensor  # (b,) real tokens per active row

    @property
    def rows_index(self) -> torch.Tensor:
        """(b, 1): with `index`, picks each active row's (b, w) tokens without copying whole rows,
        so a step costs O(segment) however long the input is."""
        return self.rows.view(-1, 1)

    def gather(self, packed: torch.Tensor, fill: int) -> torch.Tensor:
        """This step's (b, w) slice of a packed (B, Lmax) tensor, `fill` on padding."""
        return packed[self.rows_index, self.index].masked_fill(~self.valid, fill)


def plan(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], segment_size: int,
         alignment: str = "left") -> Plan:
    """Pack each sample's real tokens (attention_mask 1) to the left and count its segments."""
    B, T = input_ids.shape
    if attention_mask is None or bool(attention_mask.all()):
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        ids = input_ids
        lengths = torch.full((B,), T, device=input_ids.device)
    else:
        keep = attention_mask.bool()
        # real tokens first, in order: a stable sort of the padding flags
        positions = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # (B, T)
        ids = input_ids.gather(1, positions)
        lengths = keep.sum(1)
    num_segments = (lengths + segment_size - 1) // segment_size
    return Plan(ids, positions, lengths, num_segments, int(num_segments.max()), segment_size, alignment)


def step(p: Plan, j: int) -> Step:
    """Which samples read which tokens at step j (samples are aligned at their last segment)."""
    s, n = p.segment_size, p.num_segments
    rows = torch.nonzero(j >= p.num_steps - n).squeeze(1)  # (b,)
    k = j - (p.num_steps - n[rows])  # each active sample's own segment index
    L = p.lengths[rows]
    if p.alignment == "left":
        start = k * s
        end = torch.minimum(start + s, L)
    else:  # the last segment is full, the first may be partial
        end = L - (n[rows] - 1 - k) * s
        start = (end - s).clamp(min=0)
    lengths = end - start
    w = int(lengths.max())
    offsets = torch.arange(w, device=start.device).view(1, -1)
    valid = offsets < lengths.view(-1, 1)  # (b, w)
    index = (start.view(-1, 1) + offsets).clamp(max=p.ids.shape[1] - 1)  # (b, w)
    return Step(rows, index, valid, lengths)


def pack(labels: torch.Tensor, p: Plan, shift: bool) -> torch.Tensor:
    """Per-token labels (B, T) packed like the plan's tokens, -100 past each sample's end; with
    `shift`, token t is labelled with t+1 over the whole input, across segment boundaries."""
    packed = labels.gather(1, p.positions)  # (B, Lmax)
    in_range = torch.arange(packed.shape[1], device=packed.device).view(1, -1) < p.lengths.view(-1, 1)
    packed = packed.masked_fill(~in_range, -100)
    if not shift:
        return packed
    return torch.cat([packed[:, 1:], packed.new_full((packed.shape[0], 1), -100)], dim=1)


def assemble(parts: list, uniform: bool, B: int, T: int) -> torch.Tensor:
    """Per-step outputs back into (B, T, ...): concatenated when segments tile the input, else
    scattered from (rows, positions, values) to the caller's positions (zeros at padding)."""
    if uniform:
        return torch.cat(parts, dim=1)  # (B, T, ...)
    b_idx, t_idx, values = (torch.cat(column) for column in zip(*parts))
    return values.new_zeros((B, T, *values.shape[1:])).index_put((b_idx, t_idx), values)
