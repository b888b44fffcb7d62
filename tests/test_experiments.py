"""`rmt reproduce`: experiments are configs plus one command, resumable, with results and a plot."""

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from rmt.cli import main
from rmt.experiments import Experiment, experiment_path, read_suite
from rmt.training.trainer import _check_tasks, build_model

TINY_BASE = dict(
    task="detect-and-memorize", task_args={"kind": "classification"}, tokenizer="word",
    backbone={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 37},
    rmt={"num_mem_tokens": 2, "segment_size": 16}, curriculum=[1, 2], steps_per_stage=2, batch_size=4,
    eval_every=2, eval_examples=4, eval_batch_size=4, save_every=2,
)


def write(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"title": "tiny", "base": TINY_BASE, **spec}, sort_keys=False))
    return path


def test_runs_train_evaluate_and_resume_without_training_again(tmp_path, capsys):
    path = write(tmp_path, runs={"rmt": {}, "no-memory": {"rmt.num_mem_tokens": 0, "curriculum": [1]}},
                 eval={"segments": [1, 3], "examples": 4})
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"rmt", "no-memory"}
    for entry in results["runs"].values():
        measured = entry["eval"]["final"]
        assert measured["segments"] == [1, 3] and all(0 <= v <= 1 for v in measured["accuracy"])
    assert [s["segments"] for s in results["runs"]["rmt"]["stages"]] == [1, 2]
    assert results["runs"]["no-memory"]["config"]["rmt"]["num_mem_tokens"] == 0  # the override reached the run
    assert (out / "tiny.png").stat().st_size > 0
    kept = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in (out / "evals").iterdir()}
    stages = (out / "rmt" / "state.json").read_text()
    assert main(["reproduce", str(path), "--out", str(out)]) == 0  # again: nothing is trained or measured twice
    assert (out / "rmt" / "state.json").read_text() == stages
    assert {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in (out / "evals").iterdir()} == kept
    assert json.loads((out / "results.json").read_text())["runs"]["rmt"]["eval"] == results["runs"]["rmt"]["eval"]


def test_every_metric_of_the_task_is_kept_and_shown_beside_the_runs_own(tmp_path, capsys):
    from rmt.evaluation.by_length import evaluate
    from rmt.training.trainer import load_trained, make_tasks

    base = {**TINY_BASE, "task": "copy", "task_args": {}, "tokenizer": None, "metric": "exact_match",
            "backbone": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4}}
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump({"title": "copy", "base": base, "runs": {"rmt": {}},
                                    "eval": {"segments": [1, 2], "examples": 4}}))
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    entry = json.loads((out / "results.json").read_text())["runs"]["rmt"]
    measured = entry["eval"]["final"]
    experiment = Experiment.load(str(path), out)
    config = experiment.runs["rmt"]
    model = load_trained(config, entry["stages"][-1]["best_dir"])
    for i, n in enumerate([1, 2]):
        direct = evaluate(model, make_tasks(config)(n), 4, config.eval_batch_size)
        assert {k: measured[k][i] for k in direct} == direct  # exact match, token accuracy and the loss
    printed = capsys.readouterr().out
    assert "rmt: exact_match by segments" in printed and "rmt: token_accuracy by segments" in printed


def test_stages_mode_evaluates_every_checkpoint_to_a_multiple_of_its_length(tmp_path):
    path = write(tmp_path, runs={"rmt": {}}, eval={"stages": True, "up_to": 2, "examples": 4})
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    evals = json.loads((out / "results.json").read_text())["runs"]["rmt"]["eval"]
    assert {k: v["segments"] for k, v in evals.items()} == {"1": [1, 2], "2": [1, 2, 3, 4]}
    assert (out / "tiny.png").stat().st_size > 0


def test_a_changed_evaluation_is_measured_again(tmp_path):
    out = tmp_path / "out"
    assert main(["reproduce", str(write(tmp_path, runs={"rmt": {}}, eval={"segments": [1], "examples": 4})),
                 "--out", str(out)]) == 0
    assert main(["reproduce", str(write(tmp_path, runs={"rmt": {}}, eval={"segments": [1], "examples": 8})),
                 "--out", str(out)]) == 0
    cache = json.loads((out / "evals" / "rmt-final.json").read_text())
    assert cache["spec"]["examples"] == 8


def test_eval_task_args_evaluate_on_the_task_with_those_arguments_changed(tmp_path):
    from rmt.evaluation.by_length import evaluate
    from rmt.training.trainer import load_trained, make_tasks

    out = tmp_path / "out"
    spec = {"runs": {"rmt": {"task_args.decoy_rate": 0.5}},
            "eval": {"segments": [2], "examples": 8, "task_args": {"decoy_rate": 0}}}
    assert main(["reproduce", str(write(tmp_path, **spec)), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["rmt"]["config"]["task_args"]["decoy_rate"] == 0.5  # trained with decoys
    cache = json.loads((out / "evals" / "rmt-final.json").read_text())
    assert cache["spec"]["task_args"] == {"kind": "classification", "decoy_rate": 0}
    experiment = Experiment.load(str(tmp_path / "tiny.yaml"), out)
    trained = experiment.runs["rmt"]
    plain = make_tasks(type(trained).from_dict({**trained.to_dict(), "task_args": {"kind": "classification"}}))
    model = load_trained(trained, results["runs"]["rmt"]["stages"][-1]["best_dir"])
    expected = evaluate(model, plain(2), 8, 4)
    assert results["runs"]["rmt"]["eval"]["final"]["loss"] == [pytest.approx(expected["loss"])]


def _bundled_experiments() -> list:
    """Every bundled experiment; those on a packaged pretrained backbone carry the `pretrained` marker."""
    paths = sorted(Path(str(resources.files("rmt") / "configs" / "experiments")).glob("*.yaml"))
    base = lambda p: yaml.safe_load(p.read_text()).get("base")
    pretrained = lambda p: isinstance(base(p), dict) and isinstance(base(p).get("backbone"), str)
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.pretrained] if pretrained(p) else []) for p in paths]


@pytest.mark.parametrize("path", _bundled_experiments())
def test_every_bundled_experiment_is_a_valid_config(path, tmp_path):
    suite = read_suite(path)
    if suite is not None:  # a suite: its parts are bundled experiments, each checked on its own
        assert all(experiment_path(part).parent == path.parent for part in suite["parts"])
        return
    experiment = Experiment.load(str(path), tmp_path)
    assert experiment.runs and experiment.title
    assert experiment.stages or experiment.segments
    for config in experiment.runs.values():  # what `train` checks before it starts: every length can be made
        _, tasks = build_model(config)
        _check_tasks(config, tasks)
        for n in experiment.segments:
            if n * tasks.segment_size <= 20_000:  # the longest inputs differ only in how much background they hold
                tasks(n).example(0, "validation")
    assert main(["reproduce", "--list"]) == 0


@pytest.mark.parametrize("spec, message", [
    ({"runs": {"rmt": {}}, "eval": {"segments": [1]}, "colour": 1}, "unknown keys"),
    ({"runs": {}, "eval": {"segments": [1]}}, "`runs` must map"),
    ({"runs": {"rmt": {"learning_rate": -1}}, "eval": {"segments": [1]}}, "run 'rmt': learning_rate"),
    ({"runs": {"rmt": {}}}, "eval needs"),
    ({"runs": {"rmt": {}}, "eval": {"segments": [1], "lengths": 3}}, "unknown eval keys"),
    ({"runs": {"rmt": {}}, "eval": {"segments": [1], "task_args": [1]}}, "eval.task_args must map"),
])
def test_bad_experiments_exit_2_with_one_line(tmp_path, capsys, spec, message):
    assert main(["reproduce", str(write(tmp_path, **spec)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unknown_experiment_name_lists_the_bundled_ones(capsys):
    assert main(["reproduce", "no-such-figure"]) == 2
    err = capsys.readouterr().err
    assert "fig4-heatmap" in err and len(err.strip().splitlines()) == 1


def test_a_run_can_start_from_an_earlier_run_of_the_experiment(tmp_path):
    path = write(tmp_path, runs={"short": {"curriculum": [1]}, "longer": {"init_from": "@short", "curriculum": [2]}},
                 eval={"segments": [2], "examples": 4})
    experiment = Experiment.load(str(path), tmp_path / "out")
    assert experiment.runs["longer"].init_from == str(tmp_path / "out" / "short")
    assert main(["reproduce", str(path), "--out", str(tmp_path / "out")]) == 0
    bad = write(tmp_path, runs={"longer": {"init_from": "@short"}, "short": {}}, eval={"segments": [2]})
    with pytest.raises(ValueError, match="names no earlier run"):
        Experiment.load(str(bad), tmp_path / "out2")


def test_segments_and_examples_can_be_overridden_and_measured_lengths_are_reused(tmp_path):
    path = write(tmp_path, runs={"rmt": {}}, eval={"segments": [1, 2, 3], "examples": 4})
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out), "--segments", "1,2"]) == 0
    first = json.loads((out / "evals" / "rmt-final.json").read_text())["values"]
    assert set(first) == {"1", "2"}
    assert main(["reproduce", str(path), "--out", str(out)]) == 0  # the full pass measures only length 3
    values = json.loads((out / "evals" / "rmt-final.json").read_text())["values"]
    assert set(values) == {"1", "2", "3"} and {k: values[k] for k in first} == first
    with pytest.raises(SystemExit) as exit_:  # argparse: one usage line and the error
        main(["reproduce", str(path), "--out", str(out), "--segments", "0"])
    assert exit_.value.code == 2


def test_language_models_get_the_loss_by_position_in_the_last_segment_once(tmp_path):
    base = {**TINY_BASE, "task": "language-modeling-last-segment", "task_args": {}, "tokenizer": "byte",
            "backbone": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4}, "metric": "perplexity"}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump({"title": "lm", "base": base, "runs": {"rmt": {}, "xl": {"rmt.xl_cache": 16}},
                                    "eval": {"segments": [1, 3], "examples": 4, "by_position": 3}}))
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for entry in results["runs"].values():
        assert entry["by_position"]["segments"] == 3 and len(entry["by_position"]["loss"]) == 16
        assert all(v > 0 for v in entry["by_position"]["loss"])
    assert (out / "lm-positions.png").stat().st_size > 0
    kept = (out / "evals" / "rmt-positions.json").stat().st_mtime_ns
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    assert (out / "evals" / "rmt-positions.json").stat().st_mtime_ns == kept  # measured once


def test_a_suite_runs_its_parts_beside_it_and_draws_them_in_one_table_and_figure(tmp_path, capsys):
    one = write(tmp_path, runs={"rmt": {}, "no-memory": {"rmt.num_mem_tokens": 0}}, eval={"segments": [1, 2], "examples": 4})
    two = one.with_name("two.yaml")
    two.write_text(one.read_text())
    one = one.rename(tmp_path / "one.yaml")
    suite = tmp_path / "both.yaml"
    suite.write_text(yaml.safe_dump({"title": "both", "parts": [str(one), str(two)]}))
    out = tmp_path / "out"
    assert main(["reproduce", str(one), "--out", str(out / "one")]) == 0  # a part reproduced alone first
    trained = (out / "one" / "rmt" / "state.json").read_text()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "one" / "evals").iterdir()}
    capsys.readouterr()
    assert main(["reproduce", str(suite), "--out", str(out / "both")]) == 0
    assert (out / "one" / "rmt" / "state.json").read_text() == trained  # reused, not trained again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "one" / "evals").iterdir()} == kept
    results = json.loads((out / "both" / "results.json").read_text())
    assert list(results["parts"]) == ["one", "two"]
    assert results["parts"]["one"] == json.loads((out / "one" / "results.json").read_text()) | {
        "seconds": results["parts"]["one"]["seconds"]}
    assert (out / "two" / "results.json").is_file() and (out / "both" / "both.png").stat().st_size > 0
    printed = capsys.readouterr().out
    for part in ("one", "two"):
        accuracy = results["parts"][part]["runs"]["no-memory"]["eval"]["final"]["accuracy"]
        row = f"{'no-memory':<20}" + "".join(f"{v:>6.2f}" for v in accuracy)
        assert row in printed.splitlines()  # each run a row, each length a column


@pytest.mark.parametrize("spec, message", [
    ({"parts": []}, "`parts` must list"),
    ({"parts": ["neurips-copy"], "runs": {"rmt": {}}}, "unknown keys"),
    ({"parts": ["neurips-copy", "neurips-copy"]}, "the same name"),
    ({"parts": ["no-such-experiment"]}, "no-such-experiment"),
])
def test_bad_suites_exit_2_with_one_line(tmp_path, capsys, spec, message):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"title": "s", **spec}))
    assert main(["reproduce", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_suite_is_not_a_part_and_not_an_experiment(tmp_path, capsys):
    inner = tmp_path / "inner.yaml"
    inner.write_text(yaml.safe_dump({"title": "inner", "parts": ["neurips-copy"]}))
    outer = tmp_path / "outer.yaml"
    outer.write_text(yaml.safe_dump({"title": "outer", "parts": [str(inner)]}))
    assert main(["reproduce", str(outer), "--out", str(tmp_path / "out")]) == 2
    assert "itself a suite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a suite"):
        Experiment.load(str(inner), tmp_path / "out")
