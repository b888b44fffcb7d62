"""Batching: right padding with the pad id, attention mask 0 on padding, labels -100 on padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def _mask(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    lengths = torch.tensor([len(r) for r in rows])
    return (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, T)


def collate_causal_lm(examples: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` (B, T) from ``{"input_ids", "labels"}`` dicts."""
    ids = [e["input_ids"] for e in examples]
    return {"input_ids": _pad(ids, pad_token_id), "attention_mask": _mask(ids),
            "labels": _pad([e["labels"] for e in examples], -100)}


def collate_classification(examples: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (B, T) and ``labels`` (B,) from ``{"input_ids", "label"}`` dicts."""
    ids = [e["input_ids"] for e in examples]
    return {"input_ids": _pad(ids, pad_token_id), "attention_mask": _mask(ids),
            "labels": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)}
