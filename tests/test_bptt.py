"""Truncated BPTT and gradient checkpointing."""

import pytest
import torch
from conftest import VOCAB, labels_for, random_ids, wrap

ATOL = 1e-5

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
def test_bptt_depth_limits_how_far_gradients_reach(kind, depth, connected, mechanism):
    model = wrap(kind, mechanism, bptt_depth=depth)
    for p in model.parameters():
        p.requires_grad_(True)
    ids = random_ids(2, 40)  # 5 segments
    norms = segment_input_grads(model, ids, labels_for(kind, ids))
    assert len(norms) == 5
    reached = [n > 0 for n in norms]
    if not model.mechanism.carries_memory:  # a baseline whose memory does not cross segments
        connected = 1
    assert reached == [False] * (5 - connected) + [True] * connected, norms


def test_gradient_checkpointing_gives_the_same_gradients(kind, mechanism):
    grads = []
    for flag in (False, True):
        model = wrap(kind, mechanism, gradient_checkpointing=flag)
        ids = random_ids(2, 24)
        model(ids, labels=labels_for(kind, ids)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_keeps_less_for_the_backward_pass(kind, mechanism):
    """The option must not silently do nothing: count what autograd saves during the forward."""
    saved = {}
    for flag in (False, True):
        model = wrap(kind, mechanism, gradient_checkpointing=flag)
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


def test_forward_without_logits_gives_the_same_loss_and_gradients(decoder_kind, mechanism):
    grads, losses = [], []
    for keep in (True, False):
        model = wrap(decoder_kind, mechanism)
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


def test_checkpointed_training_keeps_no_per_token_logits(decoder_kind, mechanism):
    """The token loss is computed inside each checkpointed segment: what a step keeps for the
    backward pass is less than one copy of the logits, whatever the number of segments."""
    model = wrap(decoder_kind, mechanism, gradient_checkpointing=True)
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
