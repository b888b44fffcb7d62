"""`rmt demo` end to end at a tiny size, the word tokenizer, and `rmt eval` on its runs."""

import json
import subprocess
import sys

import pytest

from rmt.cli import main
from rmt.data import load_tokenizer, word_tokenizer
from rmt.evaluation import by_length

TINY = ["--set", "curriculum=[{segments: 1, max_steps: 2}, {segments: 2, max_steps: 2}, 4]", "--set", "steps_per_stage=2", "--set", "eval_every=2", "--set", "eval_examples=4", "--set", "batch_size=4",
        "--set", "backbone.hidden_size=32", "--set", "backbone.intermediate_size=37",
        "--segments", "1,2,3", "--examples", "6"]


def test_word_tokenizer_is_deterministic_and_knows_the_task_words():
    a, b = word_tokenizer(500), word_tokenizer.__wrapped__(500)  # the cached one and a fresh build
    assert a.get_vocab() == b.get_vocab()
    ids = a.encode("Sandra journeyed to the hallway. Where is Sandra?", add_special_tokens=False)
    assert a.unk_token_id not in ids and len(ids) == 10  # 8 words, "." and "?"
    assert (a.cls_token_id, a.sep_token_id, a.pad_token_id) == (2, 3, 0)


def test_load_tokenizer_specs():
    assert load_tokenizer(None).vocab_size == load_tokenizer("byte").vocab_size == 262
    assert len(load_tokenizer("word:300")) == 300
    with pytest.raises(ValueError, match="must be a number"):
        load_tokenizer("word:many")
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        load_tokenizer("/no/such/tokenizer")


def test_demo_writes_results_table_and_plot(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--out", str(tmp_path)] + TINY) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval_segments"] == [1, 2, 3]
    assert results["train_segments"] == [1, 2, 3, 4]  # curriculum [1, 2, 4] with shorter lengths mixed in
    for key in ("rmt_accuracy", "armt_accuracy", "baseline_accuracy"):
        assert len(results[key]) == 3 and all(0 <= v <= 1 for v in results[key])
    assert results["seconds"] > 0
    assert (tmp_path / "generalization.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "accuracy by input length" in printed and "baseline" in printed and "armt" in printed
    assert json.loads((tmp_path / "armt" / "train_config.json").read_text())["rmt"]["memory"] == "armt"
    # the runs can be evaluated again with `rmt eval`
    assert main(["eval", str(tmp_path / "rmt"), "--baseline", f"no_memory={tmp_path / 'baseline'}",
                 "--segments", "1,2", "--examples", "4", "--out", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(again) >= {"rmt_accuracy", "no_memory_accuracy", "eval_segments"}
    # one example at a time (what inputs of millions of tokens need) scores the same
    assert main(["eval", str(tmp_path / "rmt"), "--baseline", f"no_memory={tmp_path / 'baseline'}",
                 "--segments", "1,2", "--examples", "4", "--batch-size", "1", "--out", str(tmp_path / "eval1")]) == 0
    single = json.loads((tmp_path / "eval1" / "results.json").read_text())
    assert (single["rmt_accuracy"], single["no_memory_accuracy"]) == (again["rmt_accuracy"], again["no_memory_accuracy"])
    # --task-arg evaluates on the task with an argument changed, and says so in results.json
    assert again["task_args"] == {"kind": "classification"}
    assert main(["eval", str(tmp_path / "rmt"), "--segments", "1,2", "--examples", "4", "--task-arg", "decoy_rate=0",
                 "--out", str(tmp_path / "eval0")]) == 0
    zero = json.loads((tmp_path / "eval0" / "results.json").read_text())
    assert zero["task_args"] == {"kind": "classification", "decoy_rate": 0} and zero["rmt_accuracy"] == again["rmt_accuracy"]
    for bad, says in (("decoy_rate=-1", "decoy_rate must be a number"), ("decoy_rate", "NAME=VALUE")):
        result = subprocess.run([sys.executable, "-m", "rmt.cli", "eval", str(tmp_path / "rmt"), "--segments", "2",
                                 "--examples", "2", "--task-arg", bad, "--out", str(tmp_path / "bad")],
                                capture_output=True, text=True)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and says in result.stderr
    # --write-threshold reads an ARMT with another gate level (the demo's ARMT was trained with none), and
    # says so; a token-memory run has no such gate
    readings = []
    for extra, name in (([], "armt-as-trained"), (["--write-threshold", "0"], "armt-0"), (["--write-threshold", "0.9"], "armt-09"),
                        (["--seed", "0"], "armt-seed0"), (["--seed", "1"], "armt-seed1")):
        assert main(["eval", str(tmp_path / "armt"), "--segments", "2", "--examples", "4", "--out", str(tmp_path / name)] + extra) == 0
        readings.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert readings[0]["rmt_accuracy"] == readings[1]["rmt_accuracy"] and "write_threshold" not in readings[0]
    assert (readings[1]["write_threshold"], readings[2]["write_threshold"]) == (0.0, 0.9)
    # --seed draws other examples: the run's own seed (0 here) reads as without it, and is recorded
    assert readings[3]["rmt_accuracy"] == readings[0]["rmt_accuracy"] and (readings[3]["seed"], readings[4]["seed"]) == (0, 1)
    read = []
    monkeypatch.setattr(by_length, "metric_by_length", lambda models, tasks, *a, **k: read.append(tasks(2)) or {"rmt": [0.5]})
    for seed in ("0", "1"):
        assert main(["eval", str(tmp_path / "armt"), "--segments", "2", "--examples", "1", "--seed", seed, "--out", str(tmp_path / "s")]) == 0
    assert [t.seed for t in read] == [0, 1] and read[0].example(0, "validation") != read[1].example(0, "validation")
    result = subprocess.run([sys.executable, "-m", "rmt.cli", "eval", str(tmp_path / "rmt"), "--segments", "2",
                             "--examples", "2", "--write-threshold", "0.5", "--out", str(tmp_path / "bad")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "memory='armt'" in result.stderr


def test_cli_bad_paths_are_one_line_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rmt.cli", "eval", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "train_config.json not found" in result.stderr
