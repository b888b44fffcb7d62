"""Generation equals argmax decoding through forward, across segment boundaries."""

import pytest
import torch
from conftest import random_ids, wrap

ATOL = 1e-5

# 7. generation
def argmax_decode(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("prompt_len", [5, 8, 19])
def test_greedy_generate_equals_argmax_decoding(decoder_kind, prompt_len, mechanism):
    model = wrap(decoder_kind, mechanism)
    model.backbone.generation_config.eos_token_id = None  # decode the full length
    ids = random_ids(2, prompt_len)
    steps = 21  # crosses two or three segment boundaries
    generated = model.generate(ids, max_new_tokens=steps, do_sample=False)
    assert generated.shape == (2, prompt_len + steps)
    assert torch.equal(generated, argmax_decode(model, ids, steps))


def test_generate_writes_memory_at_segment_boundaries(decoder_kind, mechanism):
    """If memory were not written while decoding, tokens after a boundary would not depend on
    the prompt's first segment; with memory they do."""
    model = wrap(decoder_kind, mechanism)
    if not model.mechanism.carries_memory:
        pytest.skip("a Memory Transformer writes no memory")
    if mechanism.endswith("+xl"):
        pytest.skip("without memory, the XL cache's deeper layers still carry the first segment (their states saw it); "
                    "writes at boundaries are checked by the argmax test")
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(1, 8)
    other = random_ids(1, 8, seed=9)
    # read and decode: the first segment is the prompt; compare later logits through forward
    a, b = model.generate(ids, max_new_tokens=17), model.generate(other, max_new_tokens=17)
    assert not torch.equal(a[:, 8:], b[:, 8:])
    no_mem = wrap(decoder_kind, mechanism, num_mem_tokens=0)
    no_mem.backbone.generation_config.eos_token_id = None
    x = torch.cat([ids, a[:, 8:16]], dim=1)
    y = torch.cat([other, a[:, 8:16]], dim=1)
    # without memory the third segment ignores the first; the RMT's does not
    assert torch.equal(no_mem.generate(x, max_new_tokens=9)[:, 16:], no_mem.generate(y, max_new_tokens=9)[:, 16:])
    assert not torch.allclose(model(x).logits[:, -1], model(y).logits[:, -1])


def test_generate_with_sampling_is_seeded(decoder_kind, mechanism):
    model = wrap(decoder_kind, mechanism)
    ids = random_ids(2, 11)
    torch.manual_seed(0)
    a = model.generate(ids, max_new_tokens=12, do_sample=True, top_k=10, temperature=1.5)
    torch.manual_seed(0)
    b = model.generate(ids, max_new_tokens=12, do_sample=True, top_k=10, temperature=1.5)
    assert torch.equal(a, b) and a.shape == (2, 23)


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_ragged_prompts_match_single_prompts(decoder_kind, side, mechanism):
    """A ragged batch decodes together: prompts of 19, 13 and 5 tokens (2, 1 and 0 full segments
    of 8 before the last) each get what they would get alone, across memory writes at different
    steps, returned left-padded."""
    model = wrap(decoder_kind, mechanism)
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(3, 19)
    lengths = [19, 13, 5]
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    if side == "left":
        mask = mask.flip(1)
    steps = 20
    out = model.generate(ids, attention_mask=mask, max_new_tokens=steps)
    assert out.shape == (3, 19 + steps)
    for i, n in enumerate(lengths):
        alone = model.generate(ids[i : i + 1][:, mask[i].bool()], max_new_tokens=steps)[0]
        assert torch.equal(out[i, 19 - n :], alone), i
        assert bool((out[i, : 19 - n] == (model.backbone.generation_config.pad_token_id or 0)).all())
        assert torch.equal(alone[None], argmax_decode(model, alone[None, :n], steps))


def test_generate_ragged_batch_pads_after_each_samples_eos(decoder_kind, mechanism):
    model = wrap(decoder_kind, mechanism)
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(2, 11)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    free = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    eos = int(free[0, 11 + 2])  # sample 0's third new token ends it
    model.backbone.generation_config.eos_token_id = eos
    pad = model.backbone.generation_config.pad_token_id
    pad = eos if pad is None else pad  # what the wrapper pads with
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    first_eos = [int((row[11:] == eos).nonzero()[0]) if bool((row[11:] == eos).any()) else None for row in free]
    for i, start in enumerate((0, 4)):  # where each prompt starts (left-padded)
        stop = first_eos[i]
        if stop is None:  # never ends: decodes the whole budget
            assert torch.equal(out[i, start:], free[i, start:])
        else:
            assert torch.equal(out[i, start : 11 + stop + 1], free[i, start : 11 + stop + 1])
            assert bool((out[i, 11 + stop + 1 :] == pad).all())


def test_generate_stops_at_eos(decoder_kind, mechanism):
    model = wrap(decoder_kind, mechanism)
    ids = random_ids(1, 6)
    first = model.generate(ids, max_new_tokens=1)[0, -1].item()
    model.backbone.generation_config.eos_token_id = first
    out = model.generate(ids, max_new_tokens=30)
    assert out.shape[1] == 7 and out[0, -1] == first
