"""The registry, shared Task behaviour, and the ``rmt tasks`` subcommand."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
from pathlib import Path

import pytest

from rmt.data import ByteTokenizer
from rmt.tasks import Task, get_task, list_tasks, register
from rmt.tasks.cli import add_subparser

EXPECTED = {"copy", "reverse", "associative-retrieval", "quadratic-equations", "memorize", "detect-and-memorize",
            "reasoning", "language-modeling", "language-modeling-last-segment", "text-classification",
            *(f"babi-qa{i}" for i in range(1, 6)), *(f"babilong-qa{i}" for i in range(1, 6))}
SMALL = {"memorize": {"length": 300}, "detect-and-memorize": {"length": 300}, "reasoning": {"length": 300},
         "language-modeling": {"segment_size": 32}, "language-modeling-last-segment": {"segment_size": 32},
         **{f"babilong-qa{i}": {"length": "2k", "babi": "generated"} for i in range(1, 6)}}
GENERATED = sorted(EXPECTED - {"text-classification"})
BABI_DIR = Path(__file__).parents[2] / "shared" / "babi" / "en"


def test_registry_lists_every_task_and_rejects_unknown_names():
    assert set(list_tasks()) >= EXPECTED
    with pytest.raises(ValueError, match="known tasks: .*copy"):
        get_task("no-such-task")
    with pytest.raises(ValueError, match="already registered"):
        register("copy")(Task)


@pytest.mark.parametrize("name", GENERATED)
def test_every_task_follows_the_contract(name):
    task = get_task(name, seed=7, **SMALL.get(name, {}))
    assert task.kind in ("causal-lm", "classification") and isinstance(task.tokenizer, ByteTokenizer)
    exs = [task.example(i, "validation") for i in range(3)]
    assert exs == [get_task(name, seed=7, **SMALL.get(name, {})).example(i, "validation") for i in range(3)]
    batch = task.collate(exs)
    width = max(len(e["input_ids"]) for e in exs)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
    if task.kind == "causal-lm":
        assert batch["labels"].shape == (3, width)
        assert all(len(e["labels"]) == len(e["input_ids"]) for e in exs)
        assert all(any(l != -100 for l in e["labels"]) for e in exs)
        preds = [task.target_ids(e) for e in exs]
    else:
        assert batch["labels"].shape == (3,) and 0 <= min(e["label"] for e in exs) < task.num_labels
        preds = [e["label"] for e in exs]
    assert all(v == 1.0 for v in task.score(preds, exs).values())
    # evaluation keeps only what scoring needs; the scores are the same, right or wrong
    views = [task.scoring_view(e) for e in exs]
    assert all("input_ids" not in v for v in views)
    wrong = ([[t + 1 for t in p] for p in preds] if task.kind == "causal-lm"
             else [(p + 1) % task.num_labels for p in preds])
    for guesses in (preds, wrong, preds[:1] + wrong[1:]):
        assert task.score(guesses, views) == task.score(guesses, exs)
    assert isinstance(task.describe(), str) and len(task.dataset(4, "test")) == 4
    with pytest.raises(ValueError, match="split"):
        task.example(0, "dev")


def _cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="rmt")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_cli_lists_and_samples(capsys):
    code, out = _cli(["tasks"], capsys)
    assert code == 0 and all(name in out for name in EXPECTED) and len(out.splitlines()) == len(list_tasks())
    code, out = _cli(["tasks", "memorize", "--seed", "3", "--length", "400"], capsys)
    assert code == 0 and "400 tokens" in out and "label" in out
    with pytest.raises(SystemExit, match="no --length option"):
        _cli(["tasks", "copy", "--length", "5"], capsys)
    with pytest.raises(SystemExit, match="unknown task"):
        _cli(["tasks", "nope"], capsys)


@pytest.mark.skipif(not BABI_DIR.is_dir(), reason=f"no bAbI data at {BABI_DIR}")
def test_cli_samples_babilong_from_the_babi_folder_in_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("RMT_BABI_DIR", str(BABI_DIR))
    code, out = _cli(["tasks", "babilong-qa1", "--length", "1M", "--split", "test"], capsys)
    assert code == 0 and "</context>" in out and "999700 of context" in out and len(out) < 10_000


def test_any_transformers_tokenizer_works():
    from transformers import ByT5Tokenizer  # byte-level, needs no files

    tok = ByT5Tokenizer()
    assert len(get_task("memorize", tokenizer=tok, length=300).example(0)["input_ids"]) == 300
    task = get_task("babilong-qa2", tokenizer=tok, length="2k", babi="generated")
    assert sum(len(piece) for piece in task.iter_context(0)) == 1700
    ex = get_task("reverse", tokenizer=tok, source_length=5).example(0)
    assert ex["input_ids"][5] == tok.eos_token_id  # no sep token: eos marks the start of the target
