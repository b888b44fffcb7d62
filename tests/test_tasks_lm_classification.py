"""Language modelling with histories, and long-text classification from local files."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import json

import pytest

from rmt.tasks import LanguageModelingTask, get_task


def test_lm_windows_all_tokens_scored():
    task = get_task("language-modeling", segment_size=64, history_segments=2, seed=0)
    ex = task.example(0)
    assert len(ex["input_ids"]) == 192 and ex["labels"] == ex["input_ids"]
    assert ex == get_task("language-modeling", segment_size=64, history_segments=2, seed=0).example(0)
    assert ex != get_task("language-modeling", segment_size=64, history_segments=2, seed=1).example(0)
    assert task.score([task.target_ids(ex)], [ex]) == {"token_accuracy": 1.0}


def test_lm_last_segment_given_history():
    task = get_task("language-modeling-last-segment", segment_size=32, history_segments=3)
    ex = task.example(5, "validation")
    assert len(ex["input_ids"]) == 128
    assert ex["labels"][:96] == [-100] * 96 and ex["labels"][96:] == ex["input_ids"][96:]


def test_lm_splits_are_disjoint_parts_of_the_corpus():
    task = get_task("language-modeling", segment_size=256, history_segments=0)
    texts = {s: {task.decode(task.example(i, s)["input_ids"]) for i in range(30)} for s in ("train", "test")}
    assert not any(t in task.splits["test"].text[:100] for t in texts["train"])  # sanity: real text
    train_region = range(task.splits["train"]._lo, task.splits["train"]._hi)
    test_region = range(task.splits["test"]._lo, task.splits["test"]._hi)
    assert set(train_region).isdisjoint(test_region)
    m = LanguageModelingTask.loss_metrics(0.6931471805599453)
    assert m["perplexity"] == pytest.approx(2.0) and m["bits_per_token"] == pytest.approx(1.0)


def test_lm_from_local_files(tmp_path):
    (tmp_path / "doc.txt").write_text("A tiny corpus. It repeats. " * 300)
    task = get_task("language-modeling", source=str(tmp_path), segment_size=16, history_segments=1)
    assert "corpus" in task.decode(task.example(0)["input_ids"]) + task.decode(task.example(1)["input_ids"])


def _rows(n):
    return [{"body": f"document {i} " + "word " * (i % 7), "bias": ["left", "right", "center"][i % 3]} for i in range(n)]


def test_classification_from_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(30)))
    task = get_task("text-classification", data_files=str(path), text_field="body", label_field="bias", seed=0)
    assert task.kind == "classification" and task.label_names == ["center", "left", "right"] and task.num_labels == 3
    ex = task.example(0)
    text = task.decode(ex["input_ids"])
    i = int(text.split()[1])
    assert task.label_names[ex["label"]] == _rows(30)[i]["bias"]
    assert ex == get_task("text-classification", data_files=str(path), text_field="body", label_field="bias",
                          seed=0).example(0)
    other = get_task("text-classification", data_files=str(path), text_field="body", label_field="bias", seed=1)
    assert [task.example(k) for k in range(5)] != [other.example(k) for k in range(5)]
    batch = task.collate([task.example(k) for k in range(4)])
    assert batch["labels"].shape == (4,) and batch["attention_mask"].sum(1).tolist() == [
        len(task.example(k)["input_ids"]) for k in range(4)]
    with pytest.raises(ValueError, match="no 'test' split"):
        task.example(0, "test")
    with pytest.raises(ValueError, match="no column"):
        get_task("text-classification", data_files=str(path))


def test_classification_from_csv_splits_and_truncation(tmp_path):
    for split, n in (("train", 12), ("test", 6)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": "x" * 50, "label": k % 2} for k in range(n))
    files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    task = get_task("text-classification", data_files=files, max_length=10, truncation="tail")
    assert task.label_names == ["0", "1"] and task.num_examples("test") == 6
    ex = task.example(2, "test")
    assert len(ex["input_ids"]) == 10 and ex["label"] in (0, 1)
    with pytest.raises(ValueError, match="exactly one of"):
        get_task("text-classification")
    with pytest.raises(ValueError, match="not found"):
        get_task("text-classification", data_files=str(tmp_path / "nope.jsonl"))
