"""Evaluation by length: every model scored on the same examples, generated one batch at a time."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

import rmt
from rmt.data import ByteTokenizer
from rmt.evaluation.by_length import evaluate, evaluate_models, metric_by_length
from rmt.tasks import get_task


def byte_bert(seed: int, num_mem_tokens: int) -> rmt.RecurrentMemoryTransformer:
    tok = ByteTokenizer()
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64, num_labels=6)
    config = rmt.RMTConfig(num_mem_tokens=num_mem_tokens, segment_size=32, cls_token_id=tok.cls_token_id,
                           sep_token_id=tok.sep_token_id)
    return rmt.RecurrentMemoryTransformer(transformers.BertForSequenceClassification(cfg), config).eval()


class CountingTask:
    """A task wrapper that records which examples it generated, in order."""

    def __init__(self, task):
        self.task, self.made = task, []

    def __getattr__(self, name):
        return getattr(self.task, name)

    def example(self, index, split="train"):
        self.made.append(index)
        return self.task.example(index, split)


def test_models_share_examples_that_are_made_once_a_batch_at_a_time():
    models = {"rmt": byte_bert(0, 4), "no_memory": byte_bert(1, 0)}
    task = CountingTask(get_task("detect-and-memorize", length=96))
    seen = {name: [] for name in models}  # examples made so far, at each forward call of each model
    for name, model in models.items():
        model.register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(len(task.made)))
    together = evaluate_models(models, task, num_examples=10, batch_size=4)
    assert task.made == list(range(10))  # each example once, in order, whatever the number of models
    assert seen == {name: [4, 8, 10] for name in models}  # one batch is made, every model reads it, then the next
    for name, model in models.items():
        alone = evaluate(model, get_task("detect-and-memorize", length=96), 10, batch_size=3)
        assert alone["accuracy"] == together[name]["accuracy"]
        assert abs(alone["loss"] - together[name]["loss"]) < 1e-5
    by_length = metric_by_length(models, lambda n: get_task("detect-and-memorize", length=32 * n), [3], 10,
                                 batch_size=5, progress=False)
    assert by_length == {name: [together[name]["accuracy"]] for name in models}


def test_causal_lm_evaluation_reads_predictions_not_logits():
    """Scores from the per-position argmax ids equal those from the full (B, T, V) logits, and no
    logits are returned to evaluation."""
    from rmt.tasks.base import predictions_from_logits

    tok = ByteTokenizer()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = rmt.RecurrentMemoryTransformer(transformers.GPT2LMHeadModel(cfg), rmt.RMTConfig(num_mem_tokens=4, segment_size=16)).eval()
    task = get_task("copy", source_length=12)
    examples = [task.example(i, "validation") for i in range(6)]
    batch = task.collate(examples)
    with torch.no_grad():
        from_logits = predictions_from_logits(model(**batch).logits, batch["labels"])
    returned = []
    model.register_forward_hook(lambda mod, args, out: returned.append(out))
    got = evaluate(model, task, 6, batch_size=6)
    (out,) = returned
    assert out.logits is None
    assert predictions_from_logits(out.predictions, batch["labels"]) == from_logits
    expected = task.score(from_logits, examples)
    assert {k: got[k] for k in expected} == expected
