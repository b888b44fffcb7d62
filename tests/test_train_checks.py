"""A run that would go wrong stops before it starts, or at the step it goes wrong, saying why."""

import math
from pathlib import Path

import pytest
from test_training import TINY, tiny_config

from rmt.training import TrainConfig, train
from rmt.training import TrainingDiverged

ONE_STAGE = {"curriculum": [1], "steps_per_stage": 3, "eval_every": 1, "save_every": 1}


@pytest.mark.parametrize("learning_rate", [1e3, 1e6])
def test_a_diverging_run_stops_at_the_step_and_keeps_no_nan_model(tmp_path, learning_rate):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"stage 1, step \d+: .* is (nan|inf)"):
        train(tiny_config(out, learning_rate=learning_rate, **{**ONE_STAGE, "steps_per_stage": 12}), progress=False)
    assert not (out / "state.json").exists()  # the stage is not recorded as done
    from safetensors.torch import load_file

    for best in out.rglob("best"):  # whatever was kept as best before the blow-up is finite
        weights = load_file(best / "model.safetensors")
        assert all(bool(v.isfinite().all()) for v in weights.values())


@pytest.mark.parametrize("key,value,match", [
    ("learning_rate", float("inf"), "learning_rate must be a finite number"),
    ("learning_rate", "nan", "learning_rate must be a finite number"),
    ("max_grad_norm", -1, "max_grad_norm must be > 0"),
    ("max_grad_norm", 0, "max_grad_norm must be > 0"),
    ("greater_is_better", "maybe", "greater_is_better must be true or false"),
    ("seed", "abc", "seed must be an int"),
    ("curriculum", 3, "curriculum must be a list"),
])
def test_bad_values_are_refused_by_the_config(key, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({**TINY, key: value})


def test_the_metric_brings_its_direction():
    assert TrainConfig(metric="loss").greater_is_better is False
    assert TrainConfig(metric="perplexity").greater_is_better is False
    assert TrainConfig(metric="accuracy").greater_is_better is True
    assert TrainConfig(metric="loss", greater_is_better=False).greater_is_better is False
    with pytest.raises(ValueError, match="contradicts metric 'loss', which is better when lower"):
        TrainConfig(metric="loss", greater_is_better=True)
    with pytest.raises(ValueError, match="direction of metric 'f1' is not known"):
        TrainConfig(metric="f1")
    assert TrainConfig(metric="f1", greater_is_better=True).greater_is_better is True


def test_metric_loss_keeps_the_lowest_loss_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rmt.evaluation.by_length import evaluate
    from rmt.training.trainer import make_tasks

    config = tiny_config(tmp_path / "run", metric="loss", learning_rate=0.05, **{**ONE_STAGE, "steps_per_stage": 6})
    result = train(config, progress=False)
    logs = next((tmp_path / "run" / "logs").rglob("events.out.tfevents*")).parent
    events = EventAccumulator(str(logs))
    events.Reload()
    losses = [e.value for e in events.Scalars("eval/loss")]
    assert len(losses) == 6 and max(losses) > min(losses)  # a worse checkpoint was there to keep
    best = result.stages[0]["best_metric"]
    assert best == pytest.approx(min(losses), abs=1e-6)
    kept = evaluate(result.load_model().eval(), make_tasks(config)(1), config.eval_examples, config.eval_batch_size)
    assert kept["loss"] == pytest.approx(best, abs=1e-6)  # and best/ holds that model


def test_a_tied_metric_keeps_the_checkpoint_with_the_lower_loss(tmp_path):
    """Exact match at 0 all stage long (a long copy, a few steps): best/ is the lowest-loss model,
    not the first one evaluated."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tmp_path / "run", task="copy", task_args={}, metric="exact_match", learning_rate=0.02,
                         backbone={"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4},
                         rmt={"num_mem_tokens": 2, "segment_size": 48}, **{**ONE_STAGE, "steps_per_stage": 6})
    result = train(config, progress=False)
    events = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    exact = [e.value for e in events.Scalars("eval/exact_match")]
    losses = {e.step: e.value for e in events.Scalars("eval/loss")}
    assert exact == [0.0] * 6 and len(set(losses.values())) > 1  # a tie, and checkpoints to choose between
    stage = result.stages[0]
    assert stage["best_metric"] == 0.0 and losses[stage["best_step"]] == min(losses.values())


def test_an_unknown_metric_fails_before_the_run_folder_exists(tmp_path):
    with pytest.raises(ValueError, match=r"metric 'exact_match' is not one of task 'detect-and-memorize'.*: accuracy, loss"):
        train(tiny_config(tmp_path / "run", metric="exact_match"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_the_cpu_is_refused(tmp_path, precision):
    with pytest.raises(ValueError, match=f"mixed_precision={precision} needs a CUDA GPU"):
        train(tiny_config(tmp_path / "run", mixed_precision=precision), progress=False)
    assert not (tmp_path / "run").exists()


def test_no_clipping_with_max_grad_norm_null(tmp_path):
    config = tiny_config(tmp_path / "run", max_grad_norm=None, **ONE_STAGE)
    assert config.max_grad_norm is None
    result = train(config, progress=False)
    assert math.isfinite(result.stages[0]["best_metric"]) and Path(result.best_dir).is_dir()
