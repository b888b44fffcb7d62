"""Generation with memory: read the full segments, then decode with the backbone's KV cache.

Decoding runs the backbone's own `generate` on ``[what the mechanism puts before the tokens |
the last partial segment]``, inside the mechanism's decoding context (layer hooks, for a memory
that lives in the layers; a pre-hook that puts the XL cache in front of the backbone's own KV
cache). When a segment fills up, its memory is written through `forward` (the one segment loop)
and decoding continues in a new segment.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from . import schedule


def _check(model: Any, max_new_tokens: Any, generate_kwargs: dict) -> None:
    if not (model.is_causal and model.head.per_token and model.head.has_loss):
        raise ValueError(f"generate() needs a causal language model; {type(model.backbone).__name__} is not one")
    if model.rmt_config.alignment != "left":
        raise ValueError("generate() writes memory as segments fill up from the left, which needs "
                         "RMTConfig(alignment='left'); with 'right' every new token would re-cut all segments")
    if model.rmt_config.bidirectional_memory:
        raise ValueError("generate() decodes with the backbone's causal KV cache, which cannot give memory blocks the "
                         "bidirectional attention of bidirectional_memory=True; evaluate such models with forward()")
    if "max_length" in generate_kwargs:
        raise ValueError("pass max_new_tokens, not max_length: the input may be far longer than the backbone's context")
    if "min_length" in generate_kwargs:
        raise ValueError("pass min_new_tokens, not min_length: the input may be far longer than the backbone's context")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    low = generate_kwargs.get("min_new_tokens", 0)
    if isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be an int from 0 to max_new_tokens={max_new_tokens}, got {low!r}")


@torch.no_grad()
def generate(model: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], max_new_tokens: int,
             memory: Optional[Any], **generate_kwargs: Any) -> torch.Tensor:
    """See `RecurrentMemoryTransformer.generate`."""
    _check(model, max_new_tokens, generate_kwargs)
    min_left = generate_kwargs.pop("min_new_tokens", 0) or 0  # spread over the per-segment generate calls
    model._check_ids(input_ids, attention_mask)
    B = input_ids.shape[0]
    mech = model.mechanism
    state = mech.check_state(memory, B)
    s = model.rmt_config.segment_size
    plan = schedule.plan(input_ids, attention_mask, s)  # each prompt's real tokens, packed to the left
    if bool((plan.lengths == 0).any()):
        raise ValueError("a prompt has no tokens (its attention_mask is all 0); give every sample at least one")
    gen_cfg = generate_kwargs.get("generation_config") or model.backbone.generation_config
    for name in ("num_beams", "num_return_sequences"):
        if (generate_kwargs.get(name) or getattr(gen_cfg, name, 1) or 1) != 1:
            raise ValueError(f"generate() decodes one sequence per prompt, greedily or by sampling: {name} must be 1 "
                             "(a beam search would restart at every segment boundary)")
    eos = gen_cfg.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else (eos[0] if eos else 0)
    generate_kwargs.setdefault("pad_token_id", pad)

    lengths = plan.lengths.tolist()
    full = [(n - 1) // s * s for n in lengths]  # tokens in full segments before each last (non-empty) one
    device = input_ids.device
    if max(full):
        read = torch.arange(max(full), device=device).view(1, -1) < torch.tensor(full, device=device).view(-1, 1)
        state = model(plan.ids[:, : max(full)], attention_mask=read.long(), memory=state, return_logits=False).memory
    segments = [plan.ids[i, full[i] : lengths[i]] for i in range(B)]  # each (1..s,)
    new_tokens: list[torch.Tensor] = []
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    remaining = max_new_tokens
    while remaining > 0:
        # decode until the first segment fills up; one more token is predicted from a full
        # segment and opens its next one
        count = min(remaining, min(s - seg.shape[0] + 1 for seg in segments))
        prefix, reading = mech.decoding(state, model._specials())
        embeds, mask = _decoding_inputs(model, prefix, segments)
        with reading:
            out = model.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=count,
                                          min_new_tokens=min(count, min_left), **generate_kwargs)
        out = out[:, -count:] if out.shape[1] > count else out  # new tokens only, (B, <= count)
        out = out.masked_fill(finished.view(-1, 1), pad)
        if eos:
            hit = torch.isin(out, torch.tensor(eos, device=out.device))
            after = hit.long().cumsum(1) - hit.long() > 0  # positions after each sample's first eos
            out = out.masked_fill(after, pad)
            finished |= hit.any(1)
        new_tokens.append(out)
        remaining -= out.shape[1]
        min_left = max(0, min_left - out.shape[1])
        if bool(finished.all()) or out.shape[1] < count:
            break
        segments = [torch.cat([seg, row]) for seg, row in zip(segments, out)]
        filled = [i for i, seg in enumerate(segments) if seg.shape[0] > s]
        if filled:  # write the memory of every segment that filled up
            rows = torch.tensor(filled, device=device)
            written = model(torch.stack([segments[i][:s] for i in filled]), memory=mech.select(state, rows),
                            return_logits=False).memory
            state = mech.scatter(state, rows, written)
            for i in filled:
                segments[i] = segments[i][s:]
    width = max(lengths)
    prompts = torch.stack([F.pad(plan.ids[i, : lengths[i]], (width - lengths[i], 0), value=pad) for i in range(B)])
    return torch.cat([prompts, *new_tokens], dim=1)


def _decoding_inputs(model: Any, prefix: torch.Tensor, segments: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``prefix | segment`` embeddings (B, L, d) and their mask (B, L) for decoding."""
    rows = [torch.cat([h, model._embed(seg)]) for h, seg in zip(prefix, segments)]
    width = max(r.shape[0] for r in rows)
    embeds = torch.stack([F.pad(r, (0, 0, width - r.shape[0], 0)) for r in rows])  # (B, L, d)
    mask = torch.stack([(torch.arange(width, device=r.device) >= width - r.shape[0]).long() for r in rows])
    return embeds, mask
