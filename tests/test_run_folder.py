"""The run folder: portable (relative paths), untouched by a failed start, locked while a run uses it;
and every problem with it or with the command line is one line on stderr with exit code 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import TINY, assert_same_weights, tiny_config, weights

from rmt.cli import main
from rmt.training import TrainingInterrupted, train
from rmt.training.run_dir import RunLock, RunLocked, read_state

SMALL = {"curriculum": [1, 2], "steps_per_stage": 2, "eval_every": 2, "save_every": 1}


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rmt "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-stage run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(out, **SMALL), progress=False)
    return out


def test_state_holds_paths_relative_to_the_run(finished):
    stages = json.loads((finished / "state.json").read_text())["stages"]
    assert [s["best_dir"] for s in stages] == ["stage-1-1seg/best", "stage-2-2seg/best"]


def test_a_moved_run_is_evaluated_from_any_directory(tmp_path, capsys, monkeypatch):
    """Trained with a relative --out, moved, evaluated from a directory holding another model at the
    same relative path: the run's own model is read."""
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    train(tiny_config(Path("run"), **{**SMALL, "curriculum": [1], "steps_per_stage": 1}), progress=False)
    shutil.move(tmp_path / "a" / "run", tmp_path / "moved")
    decoy = tmp_path / "b" / "run" / "stage-1-1seg" / "best"
    shutil.copytree(tmp_path / "moved" / "stage-1-1seg" / "best", decoy)
    (decoy / "model.safetensors").write_bytes(b"not this model")
    monkeypatch.chdir(tmp_path / "b")
    assert main(["eval", str(tmp_path / "moved"), "--segments", "1", "--examples", "2", "--out", "eval"]) == 0
    assert json.loads((tmp_path / "b" / "eval" / "results.json").read_text())["rmt_accuracy"]


def test_old_absolute_paths_in_state_json_are_read_against_the_run(finished, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(finished, moved)
    state = json.loads((moved / "state.json").read_text())
    for stage in state["stages"]:  # what runs wrote before: the path given at train time
        stage["best_dir"] = f"/old/place/run/{stage['best_dir']}"
    (moved / "state.json").write_text(json.dumps(state))
    assert [s["best_dir"] for s in read_state(moved)["stages"]] == [str(moved / "stage-1-1seg" / "best"),
                                                                    str(moved / "stage-2-2seg" / "best")]


def test_a_moved_interrupted_run_resumes_exactly(finished, tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path / "cut", **SMALL), progress=False, stop_after_steps=3)
    shutil.move(tmp_path / "cut", tmp_path / "moved")
    train(tiny_config(tmp_path / "moved", **SMALL), progress=False)
    assert_same_weights(weights(finished), weights(tmp_path / "moved"))


@pytest.mark.parametrize("change,match", [
    ({"rmt": {"num_mem_tokens": 2, "segment_size": 64, "num_mem": 3}}, "unknown RMTConfig keys"),
    ({"task": "no-such-task"}, "unknown task 'no-such-task'"),
    ({"backbone": "no-such-backbone-xyz"}, "no-such-backbone-xyz"),
    ({"rmt": {"num_mem_tokens": 2, "segment_size": 32}}, "too short"),
])
def test_a_failed_start_leaves_nothing_and_the_fixed_command_runs(tmp_path, change, match):
    out = tmp_path / "run"
    with pytest.raises((ValueError, OSError), match=match):
        train(tiny_config(out, **{**SMALL, **change}), progress=False)
    assert not out.exists()
    train(tiny_config(out, **{**SMALL, "curriculum": [1], "steps_per_stage": 1}), progress=False)


@pytest.mark.parametrize("setting", ["seed=abc", "learning_rate=nan", "rmt.bogus=1"])
def test_a_failed_cli_start_leaves_nothing(tmp_path, capsys, setting):
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, **SMALL}))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg.json"), "--out", str(out), "--set", setting]) == 2
    one_line_error(capsys, setting.split("=")[0].split(".")[-1])
    assert not out.exists()


def test_demo_with_a_backbone_typo_leaves_nothing(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--backbone", "smollm2-135n"]) == 2
    one_line_error(capsys, "smollm2-135n")
    assert not (tmp_path / "demo" / "rmt").exists()


def test_a_run_folder_in_use_is_refused_naming_the_process(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        with pytest.raises(RunLocked, match=f"in use by another `rmt train` \\(pid {os.getpid()}\\)"):
            train(tiny_config(out, **SMALL), progress=False)


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "lock").write_text(dead.stdout)  # left by a killed run: a pid that no longer holds it
    train(tiny_config(out, **{**SMALL, "curriculum": [1], "steps_per_stage": 1}), progress=False)
    assert (out / "lock").read_text().strip() == str(os.getpid())


def test_two_trains_on_one_folder_one_refused(tmp_path):
    """A real second `rmt train` while the first holds the folder: exit 2, one line naming the holder."""
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, **SMALL}))
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        second = subprocess.run([sys.executable, "-m", "rmt.cli", "train", str(tmp_path / "cfg.json"), "--out", str(out)],
                                capture_output=True, text=True, env=env)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"rmt train: error: {out} is in use by another `rmt train` (pid {os.getpid()}); "
        "wait for it to finish or choose another output folder"]


def test_cli_errors_are_one_line(tmp_path, capsys, finished):
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, **SMALL}))
    cfg = str(tmp_path / "cfg.json")
    (tmp_path / "afile").write_text("")
    assert main(["train", cfg, "--out", str(tmp_path / "afile")]) == 2
    one_line_error(capsys, "afile")
    assert main(["train", cfg, "--out", "/proc/rmt-run"]) == 2  # a folder no one may write, root included
    one_line_error(capsys, "/proc/rmt-run")
    assert main(["train", cfg, "--set", "curriculum=[1, {segments: 2"]) == 2
    one_line_error(capsys, "curriculum=[1, {segments: 2", "not valid YAML")
    assert main(["train", cfg, "--set", "curriculum=3"]) == 2
    one_line_error(capsys, "curriculum must be a list of stages")
    assert main(["flops", "--plot", str(tmp_path / "afile" / "flops.png")]) == 2
    one_line_error(capsys, "afile")

    run = tmp_path / "damaged"
    shutil.copytree(finished, run)
    memory = run / "stage-2-2seg" / "best" / "model.safetensors"
    memory.write_bytes(memory.read_bytes()[:20])
    assert main(["eval", str(run), "--segments", "1", "--examples", "2"]) == 2
    one_line_error(capsys, str(run / "stage-2-2seg" / "best"), "damaged")
    shutil.copy(finished / "stage-2-2seg" / "best" / "model.safetensors", memory)
    state = run / "state.json"
    state.write_text(state.read_text()[:30])
    assert main(["eval", str(run), "--segments", "1", "--examples", "2"]) == 2
    one_line_error(capsys, str(state), "not valid JSON")


def test_eval_with_no_examples_is_refused(finished, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(finished), "--examples", "0", "--out", str(tmp_path / "eval")])
    assert exit_.value.code == 2
    assert "--examples: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
