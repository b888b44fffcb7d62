"""Reading an input of any length (millions of tokens) under no_grad, at constant memory.

Chunks of any lengths are re-cut into segments, each read through the wrapper's one segment loop.
A segment is read once the token after it has arrived (or the input has ended), so that its last
token's loss has its target: the loss of every position belongs to the segment it is in, as in
`forward`, and the result does not depend on how the input was chunked.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from . import schedule
from .outputs import RMTStreamOutput


def _chunks(tokens: Any, segment_size: int) -> Iterable[Any]:
    if isinstance(tokens, (str, bytes)):
        raise TypeError("stream() reads token ids, not text: tokenize first (tokenizer(text).input_ids) and pass the ids")
    if isinstance(tokens, torch.Tensor):
        return tokens.split(segment_size * 64, dim=1) if tokens.dim() == 2 else [tokens]
    try:
        return iter(tokens)
    except TypeError:
        raise TypeError(f"stream() takes a (B, T) tensor or an iterable of chunks of ids, got {type(tokens).__name__}") from None


def _as_ids(chunk: Any, device: torch.device) -> torch.Tensor:
    if isinstance(chunk, (str, bytes)):
        raise TypeError("stream() chunks must be token ids, got text: tokenize first")
    if not isinstance(chunk, torch.Tensor):
        if not isinstance(chunk, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in chunk):
            raise TypeError(f"stream() chunks must be tensors or lists of int ids, got {type(chunk).__name__}")
        chunk = torch.tensor(chunk, dtype=torch.long)
    chunk = chunk.to(device)
    return chunk.view(1, -1) if chunk.dim() == 1 else chunk


@torch.no_grad()
def stream(model: Any, tokens: Any, memory: Optional[Any] = None, *, compute_loss: bool = False,
           progress: bool = False) -> RMTStreamOutput:
    """See `RecurrentMemoryTransformer.stream`."""
    if model.rmt_config.alignment != "left":
        raise ValueError("stream() reads segments as they arrive, which needs RMTConfig(alignment='left')")
    if compute_loss and not (model.is_causal and model.head.per_token and model.head.has_loss):
        raise ValueError("compute_loss=True needs a causal language model")
    from tqdm.auto import tqdm

    s = model.rmt_config.segment_size
    device = model.special_ids.device
    bar = tqdm(unit="tok", disable=not progress, desc="reading")
    state: Any = memory
    sums: list[tuple[float, int]] = []  # per segment: loss sum, predicted tokens
    num_tokens = num_segments = 0
    last_logits = None

    def consume(seg: torch.Tensor, following: Optional[torch.Tensor]) -> None:
        """Read one segment (B, <= s); `following` (B,) is the next token, if any."""
        nonlocal state, num_tokens, num_segments, last_logits
        if num_segments == 0:  # the caller's state (or the initial one), checked once
            state = model.mechanism.check_state(state, seg.shape[0])
        plan = schedule.plan(seg, None, s)
        targets = None
        if compute_loss:
            tail = seg.new_full((seg.shape[0], 1), -100) if following is None else following.view(-1, 1)
            targets = torch.cat([seg[:, 1:], tail], dim=1)  # (B, w): each token's next token
        for state, result in model._advance(plan, state, targets, keep=True):
            outputs = result.outputs
            last_logits = outputs if not model.head.per_token else outputs[:, -1]
            if result.token_loss is not None:
                sums.append((float(result.token_loss), result.count))
        num_tokens += seg.shape[1]
        num_segments += 1
        bar.update(seg.shape[1])

    buffer: Optional[torch.Tensor] = None
    for chunk in _chunks(tokens, s):
        chunk = _as_ids(chunk, device)
        if chunk.shape[1] == 0:
            continue
        model._check_ids(chunk, None)
        if buffer is not None and chunk.shape[0] != buffer.shape[0]:
            raise ValueError(f"stream() chunks must keep the batch size: a chunk of {chunk.shape[0]} rows came "
                             f"after chunks of {buffer.shape[0]}; stream each batch of samples on its own")
        buffer = chunk if buffer is None else torch.cat([buffer, chunk], dim=1)
        while buffer.shape[1] > s:  # a segment and the token after it
            consume(buffer[:, :s], buffer[:, s])
            buffer = buffer[:, s:]
    if buffer is not None and buffer.shape[1] > 0:
        consume(buffer, None)
    bar.close()
    if num_tokens == 0:
        raise ValueError("stream() got no tokens")
    loss = segment_losses = None
    if compute_loss:
        total, count = sum(t for t, _ in sums), sum(c for _, c in sums)
        loss = torch.tensor(total / count if count else float("nan"))
        segment_losses = torch.tensor([t / c if c else float("nan") for t, c in sums])
    return RMTStreamOutput(memory=state, loss=loss, num_tokens=num_tokens, num_segments=num_segments,
                           segment_losses=segment_losses, logits=last_logits)
