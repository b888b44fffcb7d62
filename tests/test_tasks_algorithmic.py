"""Copy, reverse, associative retrieval, quadratic equations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from rmt.data import ByteTokenizer
from rmt.tasks import get_task, predictions_from_logits

TOK = ByteTokenizer()


def _parts(ex):
    prompt = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l == -100]
    target = [l for l in ex["labels"] if l != -100]
    assert ex["input_ids"] == prompt + target  # target is a suffix, labels equal the ids there
    return TOK.decode(prompt), TOK.decode(target)


@pytest.mark.parametrize("name", ["copy", "reverse", "associative-retrieval", "quadratic-equations"])
def test_determinism(name):
    a, b = get_task(name, seed=1), get_task(name, seed=2)
    assert a.example(3) == get_task(name, seed=1).example(3)
    assert a.example(3) != b.example(3)
    assert a.example(3, "train") != a.example(3, "test")


def test_copy_and_reverse_layout_and_lengths():
    copy = get_task("copy", seed=0)  # paper: 24 source, 48 target
    for i in range(50):
        prompt, target = _parts(copy.example(i))
        src, sep = prompt[:-5], prompt[-5:]
        assert sep == "<sep>" and len(src) == 24 and target == src * 2
    rev = get_task("reverse", source_length=7)
    prompt, target = _parts(rev.example(0))
    assert target == prompt[:-5][::-1] and len(target) == 7
    with pytest.raises(ValueError, match="multiple"):
        get_task("copy", source_length=5, target_length=7)
    with pytest.raises(ValueError, match="positive"):
        get_task("reverse", source_length=0)


def test_associative_retrieval_answer_is_the_keys_value():
    task = get_task("associative-retrieval", seed=0)
    for i in range(200):
        prompt, target = _parts(task.example(i))
        pairs, key = prompt[:-5].split("?")
        table = dict(zip(pairs[::2], pairs[1::2]))
        assert len(table) == 10 and table[key] == target


def test_quadratic_answer_solves_the_equation_and_only_the_answer_is_scored():
    task = get_task("quadratic-equations", seed=0)
    for i in range(100):
        ex = task.example(i)
        prompt, target = _parts(ex)
        a, rest = prompt[:-5].split("*x^2")
        b, c = rest[:-2].split("*x")
        answer = TOK.decode(task.target_ids(ex)[-ex["answer_length"] :])
        assert target.endswith("answer:" + answer)
        for root in answer[2:].split(","):
            x = int(root)
            assert int(a) * x * x + int(b) * x + int(c) == 0
    ex = task.example(0)
    target = task.target_ids(ex)
    wrong_solution = [0] * (len(target) - ex["answer_length"]) + target[-ex["answer_length"] :]
    assert task.score([wrong_solution], [ex]) == {"token_accuracy": 1.0, "exact_match": 1.0}
    short = get_task("quadratic-equations", loss_on_solution=False).example(0)
    assert sum(l != -100 for l in short["labels"]) == short["answer_length"]


def test_score_token_accuracy_and_exact_match():
    task = get_task("reverse", source_length=4)
    exs = [task.example(i) for i in range(2)]
    perfect = [task.target_ids(e) for e in exs]
    assert task.score(perfect, exs) == {"token_accuracy": 1.0, "exact_match": 1.0}
    one_wrong = [perfect[0], [perfect[1][0] + 1, *perfect[1][1:]]]
    assert task.score(one_wrong, exs) == {"token_accuracy": 7 / 8, "exact_match": 0.5}
    with pytest.raises(ValueError, match="one per example"):
        task.score(perfect[:1], exs)


def test_collate_and_predictions_from_logits_round_trip():
    task = get_task("copy", source_length=3)
    exs = [task.example(i) for i in range(3)]
    batch = task.collate(exs)
    assert batch["input_ids"].shape == (3, 3 + 1 + 6) and batch["labels"].shape == batch["input_ids"].shape
    # logits that put all mass on the next true token predict the target exactly
    ids = batch["input_ids"]
    logits = torch.full((*ids.shape, TOK.vocab_size), -1e4)
    logits[:, :-1].scatter_(-1, ids[:, 1:, None], 0.0)
    preds = predictions_from_logits(logits, batch["labels"])
    assert task.score(preds, exs)["exact_match"] == 1.0
    assert task.dataset(5)[4] == task.example(4) and len(task.dataset(5)) == 5


def test_character_level_refuses_multi_token_characters():
    class Wordy(ByteTokenizer):
        def encode(self, text, add_special_tokens=False):
            return super().encode(text * 2)

    with pytest.raises(ValueError, match="one token per character"):
        get_task("copy", tokenizer=Wordy()).example(0)
