"""The analysis scripts in examples/ on a tiny trained run: what they count is what the model does."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from rmt.training import TrainConfig, load_run, train
from rmt.training.trainer import make_tasks

EXAMPLES = Path(__file__).parents[1] / "examples"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def armt_run(tmp_path_factory):
    """A tiny BERT ARMT trained (2 steps) on the demo's task: detect & memorize, six places."""
    out = tmp_path_factory.mktemp("armt") / "run"
    config = TrainConfig.from_dict({
        "task": "detect-and-memorize", "task_args": {"kind": "classification", "decoy_rate": 0.2}, "tokenizer": "word",
        "backbone": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64},
        "rmt": {"memory": "armt", "num_mem_tokens": 2, "segment_size": 32, "d_mem": 8}, "curriculum": [2],
        "steps_per_stage": 2, "batch_size": 2, "eval_examples": 2, "eval_every": 2, "save_every": 2,
        "out_dir": str(out)})
    train(config, progress=False)
    return out


def test_accuracy_by_answer_counts_each_examples_own_prediction(armt_run, capsys):
    _script("accuracy_by_answer").main([str(armt_run), "--segments", "3", "--examples", "12", "--batch-size", "5",
                                        "--task-arg", "decoy_rate=0"])
    printed = capsys.readouterr().out.splitlines()
    model, config = load_run(armt_run)
    task = make_tasks(TrainConfig.from_dict({**config.to_dict(), "task_args": {"kind": "classification"}}))(3)
    size = model.rmt_config.segment_size
    truth, wrong = Counter(), {True: 0, False: 0}  # wrong on facts cut by a segment boundary / whole
    cut = [(f := task.spans(i, "validation")["facts"][0])["start"] // size != (f["end"] - 1) // size for i in range(12)]
    with torch.no_grad():  # one example at a time, without decoys
        for i in range(12):
            example = task.example(i, "validation")
            guess = model.eval()(**task.collate([example])).logits.argmax(-1).item()
            truth[task.label_names[example["label"]], task.label_names[guess]] += 1
            wrong[cut[i]] += guess != example["label"]
    right = sum(n for (a, g), n in truth.items() if a == g)
    assert printed[0].endswith(f"accuracy {right / 12:.3f}")
    assert printed[-2:] == [f"  facts cut by a segment boundary: {wrong[True]} of {sum(cut)} wrong",
                            f"  facts whole in one segment: {wrong[False]} of {12 - sum(cut)} wrong"]
    counted = Counter()
    for line in printed[1:-2]:
        answer, got, asked, rest = re.fullmatch(r"  (\w+): (\d+)/(\d+) right(?:; answered (.*))?", line).groups()
        counted[answer, answer] = int(got)
        for item in (rest.split(", ") if rest else []):
            guess, n = item.split()
            counted[answer, guess] = int(n)
        assert int(asked) == sum(n for (a, _), n in truth.items() if a == answer)
    assert +counted == +truth


def test_armt_writes_counts_gates_above_the_level_asked(armt_run, capsys):
    script = _script("armt_writes")
    script.main([str(armt_run), "--segments", "4", "--examples", "3", "--above", "0", "--show", "3"])
    printed = capsys.readouterr().out
    # every gate is above 0: every memory token writes, at the fact and on every background segment
    assert re.findall(r"layer \d: gates writing at the fact 1.000, on the background 1.00000", printed)
    assert len(re.findall(r"^layer \d", printed, re.M)) == 2 and "segment" in printed and "written" in printed
    script.main([str(armt_run), "--segments", "4", "--examples", "3", "--above", "1", "--show", "3"])
    printed = capsys.readouterr().out
    assert len(re.findall(r"gates writing at the fact 0.000, on the background 0.00000 \(0 of", printed)) == 2
    assert "written:" not in printed
