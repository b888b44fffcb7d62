"""Every registered task trains one step and evaluates through `rmt train` / `rmt eval`, its length
following the number of segments as the task says."""

import json
from pathlib import Path

import pytest
import yaml

from rmt.cli import main
from rmt.tasks import get_task, list_tasks, task_at

BABI = Path(__file__).resolve().parents[2] / "shared" / "babi"
DECODER = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}
ENCODER = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 37}


def task_args(name: str, tmp_path: Path) -> dict:
    if name == "text-classification":
        rows = [{"text": f"a {'good' if i % 2 else 'bad'} long story number {i}", "label": i % 2} for i in range(12)]
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"data_files": {"train": str(path), "validation": str(path)}}
    if name.startswith("babilong-"):
        if BABI.is_dir():
            return {"babi": str(BABI), "prompt": "none"}
        # without the real files, the generated qa1 and qa4 stories are short enough for 256-byte segments
        return {"babi": "generated", "prompt": "none"} if int(name.split("qa")[1]) in (1, 4) else None
    if name in ("memorize", "detect-and-memorize", "reasoning"):
        return {"kind": "classification"}
    return {}


def sized(name: str) -> bool:
    """Whether the task's length follows the number of segments (else it trains on 1 segment)."""
    from rmt.tasks.base import _REGISTRY, Task

    cls = getattr(_REGISTRY[name], "task_class", _REGISTRY[name])
    return cls.length_for_segments.__func__ is not Task.length_for_segments.__func__


@pytest.mark.slow
@pytest.mark.parametrize("name", list_tasks())
def test_every_task_trains_and_evaluates_through_the_cli(name, tmp_path):
    args = task_args(name, tmp_path)
    if args is None:
        pytest.skip(f"{name} needs the bAbI files of ../shared/babi")
    probe = get_task(name, **{**args, **({"length": 64} if name.startswith("babilong-") else {})})
    segments = [1, 2] if sized(name) else [1]
    segment_size = 256 if name.startswith("babilong-") else 24  # a bAbI story's facts need the room (bytes)
    config = {"task": name, "task_args": args, "backbone": ENCODER if probe.kind == "classification" else DECODER,
              "rmt": {"num_mem_tokens": 2, "segment_size": segment_size}, "metric": probe.metric,
              "curriculum": segments, "steps_per_stage": 1,
              "batch_size": 2, "eval_every": 1, "eval_examples": 2, "save_every": 1, "tokenizer": "byte"}
    if probe.kind == "classification" and name != "text-classification":
        config["tokenizer"] = "word"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [s["segments"] for s in state["stages"]] == segments
    assert main(["eval", str(tmp_path / "run"), "--segments", ",".join(map(str, segments)), "--examples", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    values = results[f"rmt_{results['metric']}"]
    assert len(values) == len(segments) and all(v == v for v in values)  # a number (not NaN) at every length


def test_lengths_follow_the_number_of_segments():
    s = 16
    assert len(task_at("memorize", 3, s).example(0)["input_ids"]) == 3 * s
    copy = task_at("copy", 3, s).example(0)["input_ids"]
    assert 3 * s - 3 <= len(copy) <= 3 * s  # source, start token, the source twice
    reverse = task_at("reverse", 3, s).example(0)["input_ids"]
    assert 3 * s - 2 <= len(reverse) <= 3 * s
    retrieval = task_at("associative-retrieval", 2, s).example(0)["input_ids"]
    assert 2 * s - 2 <= len(retrieval) <= 2 * s
    lm = task_at("language-modeling", 4, s)
    assert (lm.segment_size, lm.history_segments) == (s, 3) and len(lm.example(0)["input_ids"]) == 4 * s
    assert task_at("babilong-qa1", 5, s, babi="generated").length == 5 * s


def test_a_task_without_a_length_says_so():
    with pytest.raises(ValueError, match="quadratic-equations.*no length to set.*curriculum: \\[1\\]"):
        task_at("quadratic-equations", 2, 16)
    with pytest.raises(ValueError, match="babi-qa1.*their stories"):
        task_at("babi-qa1", 3, 16)
    with pytest.raises(ValueError, match="source_length follow from the number of segments"):
        task_at("reverse", 2, 16, source_length=5)
    assert task_at("quadratic-equations", 1, 16).example(0)["input_ids"]  # one segment count: its own length


def test_text_classification_reports_accuracy_and_f1(tmp_path):
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(4)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("text-classification", data_files=str(path))
    examples = [task.example(i) for i in range(4)]
    scores = task.score([1, 1, 0, 0], examples)  # labels 0 1 0 1: one hit each way
    assert scores == {"accuracy": 0.5, "f1": 0.5}
