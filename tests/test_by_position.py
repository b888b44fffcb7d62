"""Loss by position in the last segment (the scaling report's Fig. 8)."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rmt import RecurrentMemoryTransformer, RMTConfig
from rmt.evaluation.by_position import loss_by_position
from rmt.tasks import get_task, task_at

SIZE = 8


def lm(num_mem_tokens: int = 2, **extra) -> RecurrentMemoryTransformer:
    torch.manual_seed(0)
    backbone = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=128))
    return RecurrentMemoryTransformer(backbone, RMTConfig(num_mem_tokens=num_mem_tokens, segment_size=SIZE, **extra)).eval()


def test_the_mean_over_positions_is_the_models_own_loss_on_the_last_segment():
    model, task = lm(), task_at("language-modeling-last-segment", 3, SIZE)
    losses = loss_by_position(model, task, num_examples=5, batch_size=2)
    assert len(losses) == SIZE and all(math.isfinite(v) for v in losses)
    batch = task.collate([task.example(i, "validation") for i in range(5)])
    with torch.no_grad():
        own = model(**batch).loss  # every scored token weighs the same: the mean over positions, as every row has all
    assert sum(losses) / SIZE == pytest.approx(float(own), abs=1e-5)


def test_with_the_whole_window_cached_it_is_the_backbones_loss_at_each_position():
    model, task = lm(num_mem_tokens=0, xl_cache=4 * SIZE), task_at("language-modeling-last-segment", 4, SIZE)
    losses = loss_by_position(model, task, num_examples=3, batch_size=3)
    batch = task.collate([task.example(i, "validation") for i in range(3)])
    with torch.no_grad():
        logits = model.backbone(batch["input_ids"]).logits
    per_token = torch.nn.functional.cross_entropy(logits[:, -SIZE - 1:-1].transpose(1, 2), batch["input_ids"][:, -SIZE:],
                                                  reduction="none").mean(0)
    assert losses == pytest.approx(per_token.tolist(), abs=1e-4)
    # the model without the cache reads the last segment alone: worse at its start, where it lacks context
    alone = loss_by_position(lm(num_mem_tokens=0), task, num_examples=3, batch_size=3)
    assert alone != pytest.approx(losses, abs=1e-3)


def test_a_single_segment_has_no_prediction_for_its_first_token_and_a_classifier_is_refused():
    losses = loss_by_position(lm(), task_at("language-modeling-last-segment", 1, SIZE), num_examples=2)
    assert math.isnan(losses[0]) and all(math.isfinite(v) for v in losses[1:])
    with pytest.raises(ValueError, match="causal language-modelling task"):
        loss_by_position(lm(), get_task("memorize", kind="classification", num_segments=1, segment_size=SIZE), 2)
