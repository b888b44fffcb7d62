"""Forward: memory 0 is the backbone, memory carries information, losses, alignment, the LM head."""

import pytest
import torch
import torch.nn.functional as F
from conftest import SINK, VOCAB, labels_for, max_diff, random_ids, with_specials, wrap

ATOL = 1e-5


# 1. no memory, one segment: the backbone's own outputs
def test_no_memory_one_segment_is_the_backbone(kind, mechanism):
    model = wrap(kind, mechanism, num_mem_tokens=0, segment_size=16)
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


def test_memory_carries_information_between_segments(kind, mechanism):
    """Changing the first segment changes the last segment's outputs only through memory."""
    model = wrap(kind, mechanism)
    a = random_ids(1, 24, seed=1)
    b = a.clone()
    b[:, :8] = random_ids(1, 8, seed=2)
    # BERT's tiny random classifier barely moves its logits, so look at the last segment's memory
    last = (lambda o: o.memory) if kind == "bert" else (lambda o: o.logits[:, 16:])
    if not model.mechanism.carries_memory:  # the Memory Transformer baseline: nothing crosses segments
        assert max_diff(last(model(a)), last(model(b))) < 1e-6
        return
    assert max_diff(last(model(a)), last(model(b))) > 1e-4
    last = (lambda o: o.logits) if kind == "bert" else last
    no_mem = wrap(kind, mechanism.split("+")[0], num_mem_tokens=0)  # no memory and no cache
    torch.testing.assert_close(last(no_mem(a)), last(no_mem(b)))


# losses
def test_lm_loss_spans_segment_boundaries_and_weights_by_tokens(decoder_kind, mechanism):
    model = wrap(decoder_kind, mechanism)
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



@pytest.mark.parametrize("ragged", [False, True])
def test_lm_head_projects_only_token_positions(decoder_kind, ragged, mechanism):
    """Memory and sink positions never go through the vocabulary projection (the largest matmul of
    a small model): the head sees exactly each segment's token positions."""
    model = wrap(decoder_kind, mechanism)
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
def test_predictions_are_the_argmax_of_the_logits_without_keeping_logits(decoder_kind, ragged, mechanism):
    model = wrap(decoder_kind, mechanism)
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
