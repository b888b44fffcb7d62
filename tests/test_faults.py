"""Crash tests: `rmt train` killed with SIGKILL at many moments, inside checkpoint writes and between
steps, then resumed, ends with exactly the weights of a run that was never interrupted.

Each run is a separate process running the `rmt train` entry point, forked from a server that has
imported torch once (a fresh interpreter takes ~5 s to import it; a fork takes milliseconds), so
dozens of kills fit in a few minutes. One test also kills a plain `python -m rmt.cli train`.
"""

import gc
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmt.training.faults import ENV, POINTS

pytestmark = pytest.mark.faults

CONFIG = {
    "task": "detect-and-memorize", "task_args": {"kind": "classification"},
    "backbone": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 16, "hidden_dropout_prob": 0.1},  # dropout: the RNG state must survive too
    "rmt": {"num_mem_tokens": 2, "segment_size": 64}, "curriculum": [1, 2], "steps_per_stage": 4, "mix_shorter": True,
    "batch_size": 2, "gradient_accumulation_steps": 2, "eval_every": 1, "eval_examples": 2, "eval_batch_size": 2,
    "save_every": 1, "metric": "loss",  # the loss improves at most evaluations: best/ is replaced often
}
KILLED = -signal.SIGKILL


def _child(argv: list, kill_at: str, log: str) -> None:
    """A forked `rmt train`: the test hook from `kill_at`, output to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    gc.freeze()  # what the server imported: a collection (accelerate runs some) need not walk it in every run
    os.environ.pop(ENV, None)
    if kill_at:
        os.environ[ENV] = kill_at
    torch.set_num_threads(1)
    from rmt.cli import main

    sys.exit(main(argv))


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """run(out, kill_at="", kill_after=None) -> (exit code, output) of one `rmt train` of CONFIG into `out`."""
    root = tmp_path_factory.mktemp("faults")
    (root / "config.json").write_text(json.dumps(CONFIG))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["rmt.cli", "rmt.training.trainer", "transformers.models.bert.modeling_bert",
                                    "torch.utils.tensorboard"])

    def run(out: Path, kill_at: str = "", kill_after: float = None) -> tuple:
        log = str(out) + ".log"
        Path(log).write_text("")
        proc = context.Process(target=_child, args=(["train", str(root / "config.json"), "--out", str(out)], kill_at, log))
        proc.start()
        proc.join(kill_after)
        if proc.is_alive():
            proc.kill()
        proc.join()
        text = Path(log).read_text()
        assert proc.exitcode in (0, KILLED), f"exit code {proc.exitcode}:\n{text[-3000:]}"
        return proc.exitcode, text

    return run


def result(run: Path) -> tuple:
    """What a finished run leaves: its last stage's best weights and its state.json."""
    best = run / "stage-2-2seg" / "best"
    weights = load_file(best / "model.safetensors")  # every saved tensor of the wrapper
    state = json.loads((run / "state.json").read_text())
    for stage in state["stages"]:  # where the run folder was is not compared (see test_run_folder)
        stage["best_dir"] = "/".join(Path(stage["best_dir"]).parts[-2:])
    return weights, state


def assert_same(a: tuple, b: tuple) -> None:
    assert a[1] == b[1]  # stages, steps, best metrics and steps, relative paths
    assert a[0].keys() == b[0].keys()
    for name in a[0]:
        assert torch.equal(a[0][name], b[0][name]), name


@pytest.fixture(scope="module")
def reference(trainer, tmp_path_factory):
    """The uninterrupted run's result, and how long a run takes (timed on a second one, which must agree)."""
    root = tmp_path_factory.mktemp("reference")
    assert trainer(root / "first")[0] == 0  # starts the fork server
    start = time.time()
    assert trainer(root / "second")[0] == 0
    seconds = time.time() - start
    assert_same(result(root / "first"), result(root / "second"))
    return result(root / "first"), seconds


def _kill_until_done(trainer, out: Path, next_kill, limit: int = 40) -> list:
    """Run into `out` again and again, each run killed as `next_kill()` says, until one finishes; the kills made."""
    kills = []
    for _ in range(limit):
        kill = next_kill()
        code, text = trainer(out, *kill)
        assert "damaged" not in text, text[-3000:]  # a kill never leaves a checkpoint half written
        if code == 0:
            return kills
        kills.append(kill)
    raise AssertionError(f"the run did not finish after {limit} kills")


def test_kills_inside_every_write_resume_to_the_same_weights(trainer, reference, tmp_path):
    """Kills at every point between two writes (the files of a checkpoint, the swap of best/, state.json,
    the end of a step), first each point once, then at random points and arrivals: 50 kills, several runs."""
    rng = random.Random(0)
    first = [f"{point}:1" for point in POINTS]
    rng.shuffle(first)
    next_kill = lambda: (first.pop() if first else f"{rng.choice(POINTS)}:{rng.randint(1, 3)}", None)  # noqa: E731
    kills, runs = [], 0
    while len(kills) < 50:
        runs += 1
        out = tmp_path / f"run{runs}"
        kills += _kill_until_done(trainer, out, next_kill)
        assert_same(result(out), reference[0])
    assert {spec.rpartition(":")[0] for spec, _ in kills} == set(POINTS)


def test_kills_at_random_moments_resume_to_the_same_weights(trainer, reference, tmp_path):
    """Kills at random times up to 1.5 run lengths (a busy machine slows runs down): 10 kills at least."""
    rng = random.Random(1)
    seconds = reference[1]
    kills, runs = [], 0
    while len(kills) < 10:
        runs += 1
        out = tmp_path / f"run{runs}"
        kills += _kill_until_done(trainer, out, lambda: ("", rng.uniform(0.05, 1.5 * seconds)))
        assert_same(result(out), reference[0])


def test_a_killed_rmt_train_command_resumes_to_the_same_weights(reference, tmp_path):
    """The real command, in a fresh interpreter, killed twice at random moments of its run."""
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    command = [sys.executable, "-m", "rmt.cli", "train", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    rng = random.Random(2)
    for _ in range(2):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(4.0, 7.0))  # the import takes most of it; the kill lands in training or at its end
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(result(tmp_path / "run"), reference[0])


@pytest.mark.parametrize("damage", ["optimizer.bin:truncate", "random_states_0.pkl:truncate", "progress.json:empty",
                                    "model.safetensors:flip", "manifest.json:delete"])
def test_a_damaged_checkpoint_is_named_and_the_one_before_it_used(trainer, reference, tmp_path, damage):
    out = tmp_path / "run"
    assert trainer(out, "save:renamed:6")[0] == KILLED  # stage 2 has two checkpoints (steps 1, 2)
    newest = sorted((out / "stage-2-2seg" / "checkpoints").glob("step-*"))[-1]
    name, how = damage.split(":")
    path = newest / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_text("")
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    code, text = trainer(out)
    assert code == 0
    assert f"checkpoint {newest} is damaged" in text and name in text
    assert_same(result(out), reference[0])


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin", "progress.json"])
def test_an_unreadable_file_in_the_newest_checkpoint_is_reported_and_not_used(tmp_path, caplog, name):
    """In-process, on the training tests' config: the newest checkpoint's RNG state, optimizer state or
    progress truncated; the resume says so, takes the checkpoint before it, and ends where an
    uninterrupted run ends (a resume without the RNG state would not)."""
    from test_training import assert_same_weights, tiny_config, weights

    from rmt.training import TrainingInterrupted, train

    train(tiny_config(tmp_path / "whole", save_every=1), progress=False)
    with pytest.raises(TrainingInterrupted):  # stage 2 has checkpoints at its steps 1, 2 and 3
        train(tiny_config(tmp_path / "cut", save_every=1), progress=False, stop_after_steps=7)
    damaged = max((tmp_path / "cut").rglob(name), key=lambda p: p.stat().st_mtime_ns)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    train(tiny_config(tmp_path / "cut", save_every=1), progress=False)
    assert f"{damaged.parent} is damaged ({name}" in caplog.text
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
