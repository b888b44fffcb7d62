"""The Transformer-XL cache: the whole input at once when it holds everything, exact rotary
distances when it does not, token positions only, and no gradient into the cache."""

import warnings

import pytest
import torch
from conftest import SINK, random_ids, tiny_gpt2, tiny_llama, wrap
from transformers import DynamicCache

import rmt


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_cache_as_long_as_the_input_reads_like_the_whole_input_at_once(kind):
    model = wrap(kind, num_mem_tokens=0, xl_cache=32)
    ids = random_ids(2, 27)
    out = model(ids, labels=ids)
    ref = model.backbone(ids, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    mask = torch.ones_like(ids)
    mask[1, :10] = 0  # a ragged batch: each sample as the backbone reads it alone
    ragged = model(ids, attention_mask=mask)
    alone = model.backbone(ids[1:, 10:]).logits
    torch.testing.assert_close(ragged.logits[1:, 10:], alone, atol=1e-5, rtol=0)
    assert out.memory.length.tolist() == [27, 27]  # token positions only


@pytest.mark.parametrize("kind", ["gpt2-sink", "llama-sink"])
def test_with_a_sink_a_cache_as_long_as_the_input_reads_like_the_whole_input_after_one_sink(kind):
    """The sink stays an attention sink under a cache: position 0, seeing only itself, with the cache
    after it, so a cache holding the whole input reads like the backbone on [sink | input] (a sink
    left to follow the cache was a stray token in mid-text: perplexity x4 on SmolLM2)."""
    model = wrap(kind.replace("gpt2-sink", "gpt2"), num_mem_tokens=0, xl_cache=32, sink_token_id=SINK)
    ids = random_ids(2, 27)
    out = model(ids).logits
    ref = model.backbone(torch.cat([torch.full((2, 1), SINK), ids], dim=1)).logits[:, 1:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    mask = torch.ones_like(ids)
    mask[1, :10] = 0  # ragged: a row that starts later reads as it would alone
    alone = model.backbone(torch.cat([torch.full((1, 1), SINK), ids[1:, 10:]], dim=1)).logits[:, 1:]
    torch.testing.assert_close(model(ids, attention_mask=mask).logits[1:, 10:], alone, atol=1e-5, rtol=0)


def test_rotary_keys_are_rebased_so_distances_stay_exact():
    """A cache of one segment on Llama equals a reference with global positions (0, 1, 2, ... over the
    whole input, nothing re-based): rotary attention depends only on distances."""
    model = wrap("llama", num_mem_tokens=0, xl_cache=8)
    ids = random_ids(1, 24)
    ours = model(ids).logits
    bb, s = model.backbone, 8
    pieces, cache = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(3):
            seg = ids[:, k * s : (k + 1) * s]
            past = 0 if cache is None else 8
            out = bb(seg, position_ids=torch.arange(k * s, (k + 1) * s).view(1, -1), use_cache=True,
                     past_key_values=cache, attention_mask=torch.ones(1, past + s, dtype=torch.long))
            pieces.append(out.logits)
            layers = out.past_key_values.layers
            cache = DynamicCache(ddp_cache_data=[(l.keys[:, :, -s:], l.values[:, :, -s:]) for l in layers])
    torch.testing.assert_close(ours, torch.cat(pieces, dim=1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_no_gradient_reaches_a_cached_segment(kind):
    model = wrap(kind, num_mem_tokens=0, xl_cache=8)
    embeds = []

    def keep(module, inputs, output) -> None:
        output.retain_grad()
        embeds.append(output)

    hook = model.backbone.get_input_embeddings().register_forward_hook(keep)
    ids = random_ids(1, 16)
    labels = ids.clone()
    labels[:, :9] = -100  # only the second segment's own predictions
    model(ids, labels=labels).loss.backward()
    hook.remove()
    first, second = [e for e in embeds if e.shape[1] == 8]
    assert first.grad is None or float(first.grad.abs().sum()) == 0.0
    assert float(second.grad.abs().sum()) > 0


def test_the_position_check_counts_the_cache():
    ok = rmt.RecurrentMemoryTransformer(tiny_gpt2(64), rmt.RMTConfig(num_mem_tokens=4, segment_size=8, xl_cache=48))
    assert ok.rmt_config.xl_cache == 48
    with pytest.raises(ValueError, match=r"needs 65 positions \(with an XL cache of 49\).*largest segment_size that fits is 7"):
        rmt.RecurrentMemoryTransformer(tiny_gpt2(64), rmt.RMTConfig(num_mem_tokens=4, segment_size=8, xl_cache=49))
    with pytest.raises(ValueError, match="for decoders"):
        wrap("bert", xl_cache=8)


def test_xl_state_with_memory_and_errors():
    model = wrap("llama", num_mem_tokens=4, xl_cache=12)
    state = model(random_ids(2, 20)).memory
    assert state.inner.shape == (2, 4, 32) and state.keys.shape == (2, 2, 2, 12, 8)
    assert state.length.tolist() == [12, 12]
    with pytest.raises(ValueError):
        rmt.RecurrentMemoryTransformer(tiny_llama(), rmt.RMTConfig(xl_cache=0))


# generation: decoding reads the cache as forward does


def argmax_decode(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoded_logits_equal_forward_logits(kind):
    """Inside the decoding context the backbone, fed [prefix | tokens] and then one token at a time
    with its own KV cache, gives forward's logits: it attends to the cached keys and values at
    forward's positions (rows with 12 and 8 cached tokens, the shorter one left-padded)."""
    from rmt.generation import _decoding_inputs

    model = wrap(kind, num_mem_tokens=4, xl_cache=12)
    mech = model.mechanism
    ids = random_ids(2, 20)
    read = torch.ones(2, 16, dtype=torch.long)
    read[1, 8:] = 0  # row 1 reads one segment, row 0 two
    state = model(ids[:, :16], attention_mask=read).memory
    assert state.length.tolist() == [12, 8]
    ends = [16, 8]  # where each row's partial segment starts
    segments = [ids[0, 16:19], ids[1, 8:10]]  # 3 and 2 tokens
    prefix, reading = mech.decoding(state, model._specials())
    embeds, mask = _decoding_inputs(model, prefix, segments)
    with reading:
        first = model.backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=True)
        nxt = torch.stack([ids[0, 19], ids[1, 10]]).view(2, 1)
        cache = getattr(first, "cache", None) or first.past_key_values
        step = model.backbone(input_ids=nxt, attention_mask=torch.cat([mask, torch.ones_like(nxt)], dim=1),
                              use_cache=True, **{mech._cache_kwarg: cache})
    for i, (start, seg) in enumerate(zip(ends, segments)):
        n = seg.shape[0]
        ref = model(ids[i : i + 1, : start + n + 1]).logits[0, start:]  # (n + 1, V)
        torch.testing.assert_close(first.logits[i, -n:], ref[:n], atol=1e-5, rtol=0)
        torch.testing.assert_close(step.logits[i, -1], ref[n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-sink"])
@pytest.mark.parametrize("xl_cache", [5, 20])  # less than a segment of 8; more than two
def test_tr_xl_generate_equals_argmax_decoding(kind, xl_cache):
    """num_mem_tokens=0: the Transformer-XL baseline, prompt 11 + 21 new tokens across 3 boundaries."""
    model = wrap(kind, num_mem_tokens=0, xl_cache=xl_cache)
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(2, 11)
    assert torch.equal(model.generate(ids, max_new_tokens=21), argmax_decode(model, ids, 21))


@pytest.mark.parametrize("kind", ["gpt2", "llama-sink"])
def test_armt_with_a_cache_generates_as_argmax_decoding(kind):
    """Around ARMT the cache's decoding context holds ARMT's layer hooks as well."""
    model = wrap(kind, "armt", xl_cache=12)
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(2, 11)
    assert torch.equal(model.generate(ids, max_new_tokens=21), argmax_decode(model, ids, 21))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_with_a_cache_as_long_as_the_input_generate_is_the_backbones(kind):
    """No memory, a cache of 48 positions, 8-token segments: prompts of 10 and 6 tokens (a ragged,
    left-padded batch) and 30 new ones decode as the backbone's own greedy generate of each alone."""
    model = wrap(kind, num_mem_tokens=0, xl_cache=48)
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False)
    for i, start in enumerate((0, 4)):
        alone = model.backbone.generate(ids[i : i + 1, start:], max_new_tokens=30, do_sample=False)
        assert torch.equal(out[i, start:], alone[0]), i


def test_generate_with_xl_refuses_bad_input():
    with pytest.raises(ValueError, match="for decoders"):
        wrap("bert", xl_cache=8)
    with pytest.raises(ValueError, match="alignment='left'"):
        wrap("llama", xl_cache=8, alignment="right").generate(random_ids(1, 12))
    model = wrap("llama", xl_cache=8)
    ids = random_ids(1, 5)
    with pytest.raises(ValueError, match="another non-empty KV cache"):
        model.generate(ids, max_new_tokens=2, **{model.mechanism._cache_kwarg: model.backbone(ids).past_key_values})
