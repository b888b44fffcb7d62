"""Ragged batches: each sample as alone; padding never moves memory."""

import pytest
import torch
from conftest import labels_for, max_diff, random_ids, state_rows, wrap

ATOL = 1e-5

# 4. ragged batches
@pytest.mark.parametrize("side", ["right", "left"])
def test_ragged_batch_equals_each_sample_alone(kind, side, mechanism):
    model = wrap(kind, mechanism)
    lengths = [29, 11, 3, 24]
    T = max(lengths)
    ids = random_ids(len(lengths), T)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, T - n :] = 1
    labels = labels_for(kind, ids)
    if kind != "bert":
        labels = labels.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    total, count = 0.0, 0
    for i, n in enumerate(lengths):
        real = mask[i].bool()
        alone = model(ids[i : i + 1, real], labels=labels[i : i + 1, real] if kind != "bert" else labels[i : i + 1])
        torch.testing.assert_close(state_rows(out.memory, slice(i, i + 1)), alone.memory, atol=ATOL, rtol=0)
        if kind == "bert":
            torch.testing.assert_close(out.logits[i : i + 1], alone.logits, atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(out.logits[i : i + 1, real], alone.logits, atol=ATOL, rtol=0)
            assert (out.logits[i, ~real] == 0).all()  # padding positions get no prediction
            total += float(alone.loss.detach()) * (n - 1)
            count += n - 1
    if kind != "bert":  # the batch loss weights every real token equally
        assert abs(float(out.loss.detach()) - total / count) < 1e-5


def test_padding_never_changes_memory(kind, mechanism):
    model = wrap(kind, mechanism)
    ids = random_ids(2, 16)
    start = model(ids)
    mask = torch.ones_like(ids)
    mask[1] = 0  # the second sample has only padding in this chunk
    if kind == "bert":
        out = model(ids, attention_mask=mask, memory=start.memory)
    else:
        out = model(ids, attention_mask=mask, memory=start.memory, labels=ids.masked_fill(mask == 0, -100))
    torch.testing.assert_close(state_rows(out.memory, 1), state_rows(start.memory, 1), atol=0, rtol=0)
    if model.mechanism.carries_memory:
        assert max_diff(state_rows(out.memory, 0), state_rows(start.memory, 0)) > 0
    # the padded sample's ids do not matter at all
    other = ids.clone()
    other[1] = random_ids(1, 16, seed=5)
    torch.testing.assert_close(model(other, attention_mask=mask, memory=start.memory).memory, out.memory)


def test_ragged_gradients_are_finite(kind, mechanism):
    model = wrap(kind, mechanism)
    ids = random_ids(2, 20)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    labels = labels_for(kind, ids)
    if kind != "bert":
        labels = labels.masked_fill(mask == 0, -100)
    model.train()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
