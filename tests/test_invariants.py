"""The invariants of DESIGN.md, each on GPT-2 (absolute positions), Llama (rotary) and BERT (encoder)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import CLS, SEP, SINK, VOCAB, random_ids, wrap

import rmt

ATOL = 1e-5


def labels_for(kind: str, ids: torch.Tensor) -> torch.Tensor:
    if kind == "bert":
        return torch.arange(ids.shape[0]) % 3
    return ids.clone()


def with_specials(ids: torch.Tensor) -> torch.Tensor:
    b = ids.shape[0]
    return torch.cat([torch.full((b, 1), CLS), ids, torch.full((b, 1), SEP)], dim=1)


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


# 1. no memory, one segment: the backbone's own outputs
def test_no_memory_one_segment_is_the_backbone(kind):
    model = wrap(kind, num_mem_tokens=0, segment_size=16)
    ids = random_ids(2, 16)
    labels = labels_for(kind, ids)
    out = model(ids, labels=labels)
    if kind.endswith("-sink"):  # the backbone reading [sink] + ids, the sink neither scored nor predicting
        sink = torch.full((2, 1), SINK)
        ref = model.backbone(torch.cat([sink, ids], dim=1), labels=torch.cat([torch.full((2, 2), -100), labels[:, 1:]], dim=1))
        ref_logits = ref.logits[:, 1:]
        ref_loss = F.cross_entropy(ref_logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        torch.testing.assert_close(ref.loss, ref_loss, atol=ATOL, rtol=0)
    else:
        ref = model.backbone(with_specials(ids) if kind == "bert" else ids, labels=labels)
        ref_logits, ref_loss = ref.logits, ref.loss
    torch.testing.assert_close(out.logits, ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss, atol=ATOL, rtol=0)


# 2. the wrapper is the recurrence
def test_wrapper_equals_hand_written_loop(kind):
    model = wrap(kind)
    ids = random_ids(3, 32)
    out = model(ids)
    logits, memory = hand_loop(model, ids)
    torch.testing.assert_close(out.logits, logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.memory, memory, atol=ATOL, rtol=0)


def test_memory_carries_information_between_segments(kind):
    """Changing the first segment changes the last segment's outputs only through memory."""
    model = wrap(kind)
    a = random_ids(1, 24, seed=1)
    b = a.clone()
    b[:, :8] = random_ids(1, 8, seed=2)
    # BERT's tiny random classifier barely moves its logits, so look at the last segment's memory
    last = (lambda o: o.memory) if kind == "bert" else (lambda o: o.logits[:, 16:])
    assert (last(model(a)) - last(model(b))).abs().max() > 1e-4
    last = (lambda o: o.logits) if kind == "bert" else last
    no_mem = wrap(kind, num_mem_tokens=0)
    torch.testing.assert_close(last(no_mem(a)), last(no_mem(b)))


# 3. BPTT
def segment_input_grads(model, ids, labels, loss_on_last_segment_only=True):
    """Gradient norm reaching each segment's token embeddings from the loss."""
    captured = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured.append(output)

    if model.is_causal and loss_on_last_segment_only:
        labels = labels.clone()
        # keep only the tokens predicted inside the last segment (its first token is predicted
        # by the segment before, so it goes too)
        labels[:, : ids.shape[1] - model.rmt_config.segment_size + 1] = -100
    handle = model.backbone.get_input_embeddings().register_forward_hook(keep)
    try:
        model.train()
        model(ids, labels=labels).loss.backward()
    finally:
        handle.remove()
        model.eval()
    token_embeds = [t for t in captured if t.shape[1] == model.rmt_config.segment_size]
    return [0.0 if t.grad is None else float(t.grad.norm()) for t in token_embeds]


@pytest.mark.parametrize("depth,connected", [(None, 5), (0, 1), (1, 2), (3, 4), (4, 5), (9, 5)])
def test_bptt_depth_limits_how_far_gradients_reach(kind, depth, connected):
    model = wrap(kind, bptt_depth=depth)
    for p in model.parameters():
        p.requires_grad_(True)
    ids = random_ids(2, 40)  # 5 segments
    norms = segment_input_grads(model, ids, labels_for(kind, ids))
    assert len(norms) == 5
    reached = [n > 0 for n in norms]
    assert reached == [False] * (5 - connected) + [True] * connected, norms


def test_initial_memory_learns_from_the_first_segment_even_with_bptt_zero(decoder_kind):
    model = wrap(decoder_kind, bptt_depth=0)
    ids = random_ids(2, 24)
    model(ids, labels=ids).loss.backward()
    assert model.initial_memory.grad is not None and model.initial_memory.grad.abs().sum() > 0


# 4. ragged batches
@pytest.mark.parametrize("side", ["right", "left"])
def test_ragged_batch_equals_each_sample_alone(kind, side):
    model = wrap(kind)
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
        torch.testing.assert_close(out.memory[i : i + 1], alone.memory, atol=ATOL, rtol=0)
        if kind == "bert":
            torch.testing.assert_close(out.logits[i : i + 1], alone.logits, atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(out.logits[i : i + 1, real], alone.logits, atol=ATOL, rtol=0)
            assert (out.logits[i, ~real] == 0).all()  # padding positions get no prediction
            total += float(alone.loss.detach()) * (n - 1)
            count += n - 1
    if kind != "bert":  # the batch loss weights every real token equally
        assert abs(float(out.loss.detach()) - total / count) < 1e-5


def test_padding_never_changes_memory(kind):
    model = wrap(kind)
    ids = random_ids(2, 16)
    start = model(ids)
    mask = torch.ones_like(ids)
    mask[1] = 0  # the second sample has only padding in this chunk
    if kind == "bert":
        out = model(ids, attention_mask=mask, memory=start.memory)
    else:
        out = model(ids, attention_mask=mask, memory=start.memory, labels=ids.masked_fill(mask == 0, -100))
    torch.testing.assert_close(out.memory[1], start.memory[1], atol=0, rtol=0)
    assert (out.memory[0] - start.memory[0]).abs().max() > 0
    # the padded sample's ids do not matter at all
    other = ids.clone()
    other[1] = random_ids(1, 16, seed=5)
    torch.testing.assert_close(model(other, attention_mask=mask, memory=start.memory).memory, out.memory)


def test_ragged_gradients_are_finite(kind):
    model = wrap(kind)
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


# 5. save / load
def test_save_and_load_round_trip(kind, tmp_path):
    model = wrap(kind)
    with torch.no_grad():
        model.initial_memory.add_(1.0)  # a trained-looking memory, not the constructor's
    ids = random_ids(2, 27)
    before = model(ids)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"rmt_config.json", "model.safetensors", "backbone"} <= files
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # no pickles
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path).eval()
    assert loaded.rmt_config == model.rmt_config
    after = loaded(ids)
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    torch.testing.assert_close(after.memory, before.memory, atol=0, rtol=0)


# 6. streaming
def test_chunked_reading_equals_one_call(kind):
    model = wrap(kind)
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


def test_stream_helper_equals_one_call(kind):
    model = wrap(kind)
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


# 7. generation
def argmax_decode(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("prompt_len", [5, 8, 19])
def test_greedy_generate_equals_argmax_decoding(decoder_kind, prompt_len):
    model = wrap(decoder_kind)
    model.backbone.generation_config.eos_token_id = None  # decode the full length
    ids = random_ids(2, prompt_len)
    steps = 21  # crosses two or three segment boundaries
    generated = model.generate(ids, max_new_tokens=steps, do_sample=False)
    assert generated.shape == (2, prompt_len + steps)
    assert torch.equal(generated, argmax_decode(model, ids, steps))


def test_generate_writes_memory_at_segment_boundaries(decoder_kind):
    """If memory were not written while decoding, tokens after a boundary would not depend on
    the prompt's first segment; with memory they do."""
    model = wrap(decoder_kind)
    model.backbone.generation_config.eos_token_id = None
    ids = random_ids(1, 8)
    other = random_ids(1, 8, seed=9)
    # read and decode: the first segment is the prompt; compare later logits through forward
    a, b = model.generate(ids, max_new_tokens=17), model.generate(other, max_new_tokens=17)
    assert not torch.equal(a[:, 8:], b[:, 8:])
    no_mem = wrap(decoder_kind, num_mem_tokens=0)
    no_mem.backbone.generation_config.eos_token_id = None
    x = torch.cat([ids, a[:, 8:16]], dim=1)
    y = torch.cat([other, a[:, 8:16]], dim=1)
    # without memory the third segment ignores the first; the RMT's does not
    assert torch.equal(no_mem.generate(x, max_new_tokens=9)[:, 16:], no_mem.generate(y, max_new_tokens=9)[:, 16:])
    assert not torch.allclose(model(x).logits[:, -1], model(y).logits[:, -1])


def test_generate_with_sampling_is_seeded(decoder_kind):
    model = wrap(decoder_kind)
    ids = random_ids(2, 11)
    torch.manual_seed(0)
    a = model.generate(ids, max_new_tokens=12, do_sample=True, top_k=10, temperature=1.5)
    torch.manual_seed(0)
    b = model.generate(ids, max_new_tokens=12, do_sample=True, top_k=10, temperature=1.5)
    assert torch.equal(a, b) and a.shape == (2, 23)


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_ragged_prompts_match_single_prompts(decoder_kind, side):
    """A ragged batch decodes together: prompts of 19, 13 and 5 tokens (2, 1 and 0 full segments
    of 8 before the last) each get what they would get alone, across memory writes at different
    steps, returned left-padded."""
    model = wrap(decoder_kind)
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


def test_generate_ragged_batch_pads_after_each_samples_eos(decoder_kind):
    model = wrap(decoder_kind)
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


def test_generate_stops_at_eos(decoder_kind):
    model = wrap(decoder_kind)
    ids = random_ids(1, 6)
    first = model.generate(ids, max_new_tokens=1)[0, -1].item()
    model.backbone.generation_config.eos_token_id = first
    out = model.generate(ids, max_new_tokens=30)
    assert out.shape[1] == 7 and out[0, -1] == first


# losses
def test_lm_loss_spans_segment_boundaries_and_weights_by_tokens(decoder_kind):
    model = wrap(decoder_kind)
    ids = random_ids(2, 20)
    labels = ids.clone()
    labels[0, :15] = -100
    out = model(ids, labels=labels)
    logits = out.logits
    # token t predicts t+1 over the whole input, also from the last token of a segment
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref, atol=ATOL, rtol=0)
    assert out.segment_losses.shape == (3,)


def test_classification_loss_is_the_last_segments():
    model = wrap("bert")
    ids = random_ids(2, 30)
    labels = torch.tensor([0, 2])
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    torch.testing.assert_close(out.loss.detach(), out.segment_losses[-1])


@pytest.mark.parametrize("alignment", ["left", "right"])
def test_alignment_decides_where_segments_are_cut(alignment):
    model = wrap("gpt2", alignment=alignment, num_mem_tokens=0)
    ids = random_ids(1, 12)  # 8 + 4 (left) or 4 + 8 (right)
    cut = 8 if alignment == "left" else 4
    with_memory_free_segments = torch.cat([model.backbone(ids[:, :cut]).logits, model.backbone(ids[:, cut:]).logits], 1)
    torch.testing.assert_close(model(ids).logits, with_memory_free_segments, atol=ATOL, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(kind):
    grads = []
    for flag in (False, True):
        model = wrap(kind, gradient_checkpointing=flag)
        ids = random_ids(2, 24)
        model(ids, labels=labels_for(kind, ids)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_keeps_less_for_the_backward_pass(kind):
    """The option must not silently do nothing: count what autograd saves during the forward."""
    saved = {}
    for flag in (False, True):
        model = wrap(kind, gradient_checkpointing=flag)
        ids = random_ids(2, 40)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(ids, labels=labels_for(kind, ids)).loss
        saved[flag] = total[0]
        loss.backward()
    assert saved[True] < saved[False] / 3, saved


def test_forward_without_logits_gives_the_same_loss_and_gradients(decoder_kind):
    grads, losses = [], []
    for keep in (True, False):
        model = wrap(decoder_kind)
        ids = random_ids(2, 27)
        mask = torch.ones_like(ids)
        mask[1, 20:] = 0
        out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), return_logits=keep)
        assert (out.logits is None) != keep
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_checkpointed_training_keeps_no_per_token_logits(decoder_kind):
    """The token loss is computed inside each checkpointed segment: what a step keeps for the
    backward pass is less than one copy of the logits, whatever the number of segments."""
    model = wrap(decoder_kind, gradient_checkpointing=True)
    ids = random_ids(2, 64)  # 8 segments
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(ids, labels=ids, return_logits=False)
    out.loss.backward()
    assert out.logits is None
    assert total[0] < 2 * 64 * VOCAB * 4, total[0]  # (B, T, V) float32 logits would be 50,688 bytes


@pytest.mark.parametrize("ragged", [False, True])
def test_lm_head_projects_only_token_positions(decoder_kind, ragged):
    """Memory and sink positions never go through the vocabulary projection (the largest matmul of
    a small model): the head sees exactly each segment's token positions."""
    model = wrap(decoder_kind)
    ids = random_ids(2, 19)  # segments of 8, 8, 3
    mask = torch.ones_like(ids)
    if ragged:
        mask[1, 12:] = 0
    widths = []
    hook = model.backbone.get_output_embeddings().register_forward_hook(lambda mod, inp, out: widths.append(inp[0].shape[1]))
    try:
        out = model(ids, attention_mask=mask, labels=ids)
    finally:
        hook.remove()
    # samples are aligned at their last segment: the ragged one (8, 4 tokens) reads in steps 2 and 3
    assert widths == ([8, 8, 4] if ragged else [8, 8, 3])
    assert out.logits.shape == (2, 19, VOCAB)


@pytest.mark.parametrize("ragged", [False, True])
def test_predictions_are_the_argmax_of_the_logits_without_keeping_logits(decoder_kind, ragged):
    model = wrap(decoder_kind)
    ids = random_ids(2, 19)
    mask = torch.ones_like(ids)
    if ragged:
        mask[1, :6] = 0
    full = model(ids, attention_mask=mask)
    out = model(ids, attention_mask=mask, return_logits=False, return_predictions=True)
    assert out.logits is None and out.predictions.shape == (2, 19)
    real = mask.bool()
    assert torch.equal(out.predictions[real], full.logits.argmax(-1)[real])
    assert bool((out.predictions[~real] == 0).all())
    with pytest.raises(ValueError, match="per-token head"):
        wrap("bert")(random_ids(1, 5), return_predictions=True)
