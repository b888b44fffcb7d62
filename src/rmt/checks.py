"""Input checks: every mistake a caller can make is a clear error here, before torch sees the input."""

from __future__ import annotations

from typing import Any, Optional

import torch

INT_DTYPES = (torch.int32, torch.int64)


def check_ids(input_ids: Any, attention_mask: Any, vocab: int, cls_id: Optional[int] = None) -> None:
    """input_ids (B, T) integer ids in the vocabulary; attention_mask of the same shape, 0/1."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}; "
                         "add a batch dimension with input_ids[None]")
    if input_ids.dtype not in INT_DTYPES:
        raise TypeError(f"input_ids must be integer token ids (int64 or int32), got dtype {input_ids.dtype}; "
                        "convert with input_ids.long()")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token per sample")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"input_ids hold ids in [{low}, {high}] but the backbone's vocabulary has {vocab} tokens "
                         f"(ids 0..{vocab - 1}); was the input made with another tokenizer?")
    if cls_id is not None and bool((input_ids[:, :1] == cls_id).all()):
        raise ValueError("input_ids already start with the [CLS] token; encoder inputs are given without special "
                         "tokens (tokenizer(text, add_special_tokens=False)): the wrapper adds [CLS]/[SEP] per segment")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        if not bool(attention_mask.any()):
            raise ValueError("attention_mask is all 0: no sample has a token to read; give at least one")


def check_token_labels(labels: Any, shape: torch.Size, vocab: int) -> None:
    """Per-token labels: the shape of input_ids, integer ids in the vocabulary or -100."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.dtype not in INT_DTYPES:
        raise TypeError(f"labels must be int64 token ids (-100 where unscored), got dtype {labels.dtype}")
    scored = labels[labels != -100]
    if scored.numel() and (int(scored.min()) < 0 or int(scored.max()) >= vocab):
        raise ValueError(f"labels hold ids in [{int(scored.min())}, {int(scored.max())}] but the vocabulary has {vocab} "
                         "tokens; use -100 for positions that are not scored")


def check_sequence_labels(labels: Any, batch: int, num_labels: int, lengths: torch.Tensor) -> None:
    """Classification labels: (B,) class ids (or (B, C) for multi-label / regression)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 0 or labels.shape[0] != batch or labels.dim() > 2:
        raise ValueError(f"classification labels must have shape (batch,) = ({batch},) "
                         f"(or (batch, num_labels) for multi-label), got {tuple(labels.shape)}")
    if labels.dim() == 1 and not labels.dtype.is_floating_point:
        if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
            raise ValueError(f"labels hold classes in [{int(labels.min())}, {int(labels.max())}] but the classifier "
                             f"has {num_labels} labels (0..{num_labels - 1})")
    if bool((lengths == 0).any()):
        raise ValueError("a sample has no tokens (its attention_mask is all 0); a classifier needs at least one")
