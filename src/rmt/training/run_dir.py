"""The run folder on disk: writes that a crash cannot tear, the lock, and `state.json`.

Every file is written to a temporary name and renamed into place (`os.replace` is atomic on POSIX
file systems), so a reader sees the old version or the new one, never half of one. Paths stored
in the folder are relative to it: a run folder can be moved, copied, or read from any directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Union

from .faults import fault_point

STATE_NAME = "state.json"
CONFIG_NAME = "train_config.json"
LOCK_NAME = "lock"
PathLike = Union[str, Path]


class RunLocked(BlockingIOError):
    """Another live process holds the run folder."""


def fsync_dir(path: PathLike) -> None:
    """Make a rename in `path` durable (a crash of the machine, not only of the process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: PathLike, text: str) -> None:
    """`path` holds `text` entirely, or whatever it held before."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: PathLike) -> Any:
    """The JSON in `path`; a damaged file is a ValueError that names it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is damaged (not valid JSON: {err}); restore it or delete the run folder") from None


def fsync_tree(path: Path) -> None:
    """Flush every file under `path` (and the folders) to disk before the folder is renamed into place."""
    for sub in sorted(path.rglob("*")):
        if sub.is_file():
            fd = os.open(sub, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        fsync_dir(folder)


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap the complete folder `tmp` in as `final`. Folders cannot be renamed over one another, so
    the old one steps aside first; `recover_dir` undoes a crash between the two renames."""
    fsync_tree(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
        fault_point("best:moved")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """After a crash inside `replace_dir`: keep `final` if it made it, else put the old one back."""
    old, tmp = final.with_name(final.name + ".old"), final.with_name(final.name + ".tmp")
    if not final.exists() and old.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


class RunLock:
    """An exclusive lock on a run folder: a `lock` file holding the owner's pid, locked with `flock`.

    The kernel drops the lock when its process dies, however it dies, so the lock of a killed run
    is simply taken over; a live owner is named in the error.
    """

    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        self._fd = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another `rmt train` (pid {owner}); "
                            "wait for it to finish or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self._fd)  # closing releases the lock; the file stays, holding a pid no one locks
        self._fd = None


def stage_name(index: int, segments: int) -> str:
    return f"stage-{index + 1}-{segments}seg"


def read_state(out: Path) -> dict[str, Any]:
    """`state.json` with each stage's `best_dir` resolved against the run folder, wherever it is now.

    Runs written before paths were stored relative hold the path given at train time (absolute or
    relative to the directory the run was started from): its last two parts are the stage's own.
    """
    path = out / STATE_NAME
    if not path.is_file():
        return {"stages": []}
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("stages"), list):
        raise ValueError(f"{path} is damaged (no list of stages); restore it or delete the run folder")
    for stage in state["stages"]:
        stored = Path(stage["best_dir"])
        stage["best_dir"] = str(out / stored.parent.name / stored.name)
    return state


def write_state(out: Path, state: dict[str, Any]) -> None:
    """Write `state.json` atomically, with paths relative to the run folder."""
    stages = [{**s, "best_dir": os.path.relpath(s["best_dir"], out)} for s in state["stages"]]
    write_json_atomic(out / STATE_NAME, {**state, "stages": stages})
