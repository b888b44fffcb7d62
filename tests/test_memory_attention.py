"""bidirectional_memory: memory positions see their whole block, sequence tokens stay causal; the
Memory Transformer baseline carries nothing."""

import pytest
import torch
from conftest import SINK, random_ids, tiny_bert, wrap

import rmt


def last_hidden(model, ids, memory=None) -> torch.Tensor:
    """The backbone's last hidden states of the first segment's laid-out row, (1, L, d)."""
    captured = []
    hook = model.backbone.register_forward_hook(lambda mod, args, kwargs, out: captured.append(out.hidden_states[-1]),
                                                with_kwargs=True)
    try:
        model(ids, memory=memory)
    finally:
        hook.remove()
    return captured[0]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-sink"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_read_slot_sees_the_later_slots_of_its_block_only_when_asked(kind, bidirectional):
    model = wrap(kind, num_mem_tokens=4, bidirectional_memory=bidirectional)
    ids = random_ids(1, 8)
    memory = model.init_memory(1).clone()
    changed = memory.clone()
    changed[:, 3] += torch.randn(changed.shape[-1])  # read slot 3 (and write slot 3); not a constant, which LayerNorm removes
    a, b = last_hidden(model, ids, memory), last_hidden(model, ids, changed)
    start = int(kind.endswith("-sink"))
    moved = (a[:, start : start + 3] - b[:, start : start + 3]).abs().max() > 1e-5  # read slots 0-2
    assert bool(moved) == bidirectional
    write = start + 4 + 8  # write slot 0 sees write slot 3 only in its block
    moved_write = (a[:, write] - b[:, write]).abs().max()
    assert moved_write > 0  # it always sees read slot 3


@pytest.mark.parametrize("mechanism", ["rmt", "armt"])
def test_no_sequence_token_sees_a_later_token(mechanism):
    model = wrap("llama", mechanism, bidirectional_memory=True)
    ids = random_ids(1, 8)
    other = ids.clone()
    other[0, 5] = (other[0, 5] + 1) % 90 + 3
    a, b = model(ids).logits, model(other).logits
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-5


def test_armt_memory_tokens_see_each_other_with_bidirectional_memory():
    for bidirectional in (False, True):
        model = wrap("gpt2", "armt", num_mem_tokens=4, bidirectional_memory=bidirectional)
        ids = random_ids(1, 8)
        a = last_hidden(model, ids)
        with torch.no_grad():
            model.mechanism.initial_memory[3] += torch.randn(32)
        b = last_hidden(model, ids)
        moved = (a[:, 8] - b[:, 8]).abs().max() > 1e-5  # memory slot 0 comes right after the 8 tokens
        assert bool(moved) == bidirectional


def test_bidirectional_memory_errors():
    with pytest.raises(ValueError, match="for decoders"):
        rmt.RecurrentMemoryTransformer(tiny_bert(), rmt.RMTConfig(num_mem_tokens=2, segment_size=8, cls_token_id=1,
                                                                  sep_token_id=2, bidirectional_memory=True))
    model = wrap("gpt2", bidirectional_memory=True)
    with pytest.raises(ValueError, match="bidirectional"):
        model.generate(random_ids(1, 5), max_new_tokens=2)


@pytest.mark.parametrize("kind", ["gpt2", "llama-sink"])
def test_memory_transformer_is_mem_then_segment_with_nothing_carried(kind):
    model = wrap(kind, "mt", num_mem_tokens=3)
    ids = random_ids(2, 24)
    emb = model.backbone.get_input_embeddings()
    mem = model.initial_memory.expand(2, -1, -1)
    sink = kind.endswith("-sink")
    pieces = []
    for start in range(0, 24, 8):
        x = torch.cat([mem, emb(ids[:, start : start + 8])], dim=1)
        if sink:
            x = torch.cat([emb(torch.full((2, 1), SINK)), x], dim=1)
        pieces.append(model.backbone(inputs_embeds=x).logits[:, sink + 3 :])
    out = model(ids)
    torch.testing.assert_close(out.logits, torch.cat(pieces, dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.memory, mem)  # the same memory for the next call
