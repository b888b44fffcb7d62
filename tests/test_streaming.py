"""Chunked reading and stream() equal one call."""

import torch
from conftest import random_ids, wrap

ATOL = 1e-5

# 6. streaming
def test_chunked_reading_equals_one_call(kind, mechanism):
    model = wrap(kind, mechanism)
    ids = random_ids(2, 45)
    whole = model(ids)
    memory, pieces = None, []
    for start, stop in [(0, 16), (16, 24), (24, 45)]:  # chunk lengths 16, 8 (multiples of 8) and a tail
        out = model(ids[:, start:stop], memory=memory)
        memory = out.memory
        pieces.append(out.logits)
    torch.testing.assert_close(memory, whole.memory, atol=ATOL, rtol=0)
    if kind == "bert":
        torch.testing.assert_close(pieces[-1], whole.logits, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(torch.cat(pieces, dim=1), whole.logits, atol=ATOL, rtol=0)


def test_stream_helper_equals_one_call(kind, mechanism):
    model = wrap(kind, mechanism)
    ids = random_ids(2, 45)
    whole = model(ids, labels=None if kind == "bert" else ids)
    chunks = [ids[:, :5], ids[:, 5:30], ids[:, 30:31], ids[:, 31:]]  # any chunk sizes
    streamed = model.stream(iter(chunks), compute_loss=kind != "bert")
    torch.testing.assert_close(streamed.memory, whole.memory, atol=ATOL, rtol=0)
    assert streamed.num_tokens == 45 and streamed.num_segments == 6
    if kind == "bert":
        torch.testing.assert_close(streamed.logits, whole.logits, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(streamed.loss, whole.loss.detach(), atol=ATOL, rtol=0)
        torch.testing.assert_close(streamed.segment_losses, whole.segment_losses, atol=ATOL, rtol=0)
        torch.testing.assert_close(streamed.logits, whole.logits[:, -1], atol=ATOL, rtol=0)
