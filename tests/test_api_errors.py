"""Inputs that used to fail deep inside torch, or silently, get a clear error before torch sees them."""

import pytest
import torch
from conftest import random_ids, wrap


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_an_all_padding_batch_is_refused(kind, mechanism):
    model = wrap(kind, mechanism)
    ids = random_ids(2, 12)
    with pytest.raises(ValueError, match="attention_mask is all 0"):
        model(ids, attention_mask=torch.zeros_like(ids))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float32, torch.bool])
def test_ids_must_be_int64_or_int32(dtype):
    model = wrap("gpt2")
    with pytest.raises(TypeError, match="integer token ids"):
        model(random_ids(1, 5).to(dtype))
    assert model(random_ids(1, 5).int()).logits.shape == (1, 5, 99)


def test_labels_are_checked():
    model = wrap("gpt2")
    ids = random_ids(2, 9)
    with pytest.raises(ValueError, match="labels hold ids in"):
        model(ids, labels=ids.masked_fill(ids == ids[0, 0], 500))
    with pytest.raises(TypeError, match="labels must be int64"):
        model(ids, labels=ids.float())
    bert = wrap("bert")
    with pytest.raises(ValueError, match="classifier has 3 labels"):
        bert(ids, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        bert(ids, labels=torch.tensor(1))


def test_memory_with_nan_or_the_wrong_shape_is_refused(mechanism):
    model = wrap("gpt2", mechanism)
    ids = random_ids(2, 9)
    state = model(ids).memory
    from torch.utils._pytree import tree_map

    with pytest.raises(ValueError, match="NaN or inf"):
        model(ids, memory=tree_map(lambda t: t * float("nan"), state))
    with pytest.raises(ValueError, match="does not fit"):  # one sample's memory is not broadcast to two
        model(ids, memory=tree_map(lambda t: t[:1], state))
    with pytest.raises(ValueError, match="NaN or inf"):
        model.generate(ids, memory=tree_map(lambda t: t * float("inf"), state), max_new_tokens=2)


def test_generate_takes_min_new_tokens(mechanism):
    model = wrap("llama", mechanism)
    ids = random_ids(1, 6)
    first = model.generate(ids, max_new_tokens=1)[0, -1].item()
    model.backbone.generation_config.eos_token_id = first  # would stop at once
    out = model.generate(ids, max_new_tokens=12, min_new_tokens=10)  # crosses a segment boundary
    assert out.shape[1] >= 6 + 10
    assert first not in out[0, 6 : 6 + 10].tolist()
    with pytest.raises(ValueError, match="min_new_tokens"):
        model.generate(ids, max_new_tokens=3, min_new_tokens=4)


def test_stream_refuses_text():
    model = wrap("gpt2")
    with pytest.raises(TypeError, match="not text"):
        model.stream("some text")
    with pytest.raises(TypeError, match="chunks must be"):
        model.stream([["a", "b"]])
