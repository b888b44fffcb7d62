"""The token memory (RMT) against the recurrence written out by hand."""

import torch
from conftest import CLS, SEP, SINK, random_ids, wrap

import rmt

ATOL = 1e-5


def hand_loop(model: rmt.RecurrentMemoryTransformer, ids: torch.Tensor):
    """The RMT recurrence written out directly: equal-length segments, no padding."""
    s, m = model.rmt_config.segment_size, model.num_mem_tokens
    emb = model.backbone.get_input_embeddings()
    memory = model.initial_memory.expand(ids.shape[0], -1, -1)
    sink = model.rmt_config.sink_token_id is not None
    outputs = []
    for start in range(0, ids.shape[1], s):
        seg = emb(ids[:, start : start + s])
        if model.is_causal:
            x = torch.cat([memory, seg, memory], dim=1)
            if sink:
                x = torch.cat([emb(torch.full((ids.shape[0], 1), SINK)), x], dim=1)
            out = model.backbone(inputs_embeds=x, output_hidden_states=True)
            outputs.append(out.logits[:, sink + m : sink + m + seg.shape[1]])
            memory = out.hidden_states[-1][:, -m:]
        else:
            b = ids.shape[0]
            cls, sep = emb(torch.full((b, 1), CLS)), emb(torch.full((b, 1), SEP))
            out = model.backbone(inputs_embeds=torch.cat([cls, memory, seg, sep], dim=1), output_hidden_states=True)
            outputs.append(out.logits)
            memory = out.hidden_states[-1][:, 1 : 1 + m]
    return (torch.cat(outputs, dim=1) if model.is_causal else outputs[-1]), memory

# 2. the wrapper is the recurrence
def test_wrapper_equals_hand_written_loop(kind):
    model = wrap(kind)
    ids = random_ids(3, 32)
    out = model(ids)
    logits, memory = hand_loop(model, ids)
    torch.testing.assert_close(out.logits, logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.memory, memory, atol=ATOL, rtol=0)


def test_initial_memory_learns_from_the_first_segment_even_with_bptt_zero(decoder_kind):
    model = wrap(decoder_kind, bptt_depth=0)
    ids = random_ids(2, 24)
    model(ids, labels=ids).loss.backward()
    assert model.initial_memory.grad is not None and model.initial_memory.grad.abs().sum() > 0
