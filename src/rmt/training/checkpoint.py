"""Resume checkpoints written as one unit and verified before use.

A checkpoint is a folder ``checkpoints/step-N``: accelerate's `save_state` (model, optimizer, RNG
states of every process), the stage's progress, and last a manifest of every file's size and
SHA-256. It is written under a temporary name and renamed into place only when complete, so a crash
at any moment leaves either the new checkpoint or none. Loading takes the newest checkpoint whose
files match its manifest; a damaged one is reported by name and the one before it is used (the
last two are kept for that).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator

from .faults import fault_point
from .run_dir import fsync_dir, fsync_tree, read_json, write_json_atomic

logger = logging.getLogger(__name__)
FOLDER = "checkpoints"
PROGRESS_NAME = "progress.json"
MANIFEST_NAME = "manifest.json"
KEEP = 2


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def _step(folder: Path) -> int:
    return int(folder.name.split("-", 1)[1])


def _complete(stage_dir: Path) -> list[Path]:
    """Checkpoint folders that were renamed into place, newest first."""
    root = stage_dir / FOLDER
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()] if root.is_dir() else []
    return sorted(found, key=_step, reverse=True)


def save_checkpoint(accelerator: Accelerator, stage_dir: Path, info: dict[str, Any]) -> None:
    """Write the training state and `info` (the stage's progress) as checkpoint ``step-{info['step']}``."""
    root = stage_dir / FOLDER
    final = root / f"step-{info['step']:08d}"
    tmp = root / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its RNG state
    if accelerator.is_main_process:
        fault_point("save:state")
        write_json_atomic(tmp / PROGRESS_NAME, {**info, "num_processes": accelerator.num_processes})
        fault_point("save:progress")
        write_json_atomic(tmp / MANIFEST_NAME, _manifest(tmp))
        fsync_tree(tmp)
        fault_point("save:manifest")
        shutil.rmtree(final, ignore_errors=True)  # the same step saved before a crash and replayed
        os.replace(tmp, final)
        fsync_dir(root)
        fault_point("save:renamed")
        for older in _complete(stage_dir)[KEEP:]:
            shutil.rmtree(older)
    accelerator.wait_for_everyone()


def _damage(folder: Path) -> Optional[str]:
    """What is wrong with a checkpoint folder, or None when every file matches its manifest."""
    if not (folder / MANIFEST_NAME).is_file():
        return f"{MANIFEST_NAME} is missing"
    try:
        manifest = read_json(folder / MANIFEST_NAME)
    except ValueError:
        return f"{MANIFEST_NAME} is not valid JSON"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def load_checkpoint(accelerator: Accelerator, stage_dir: Path) -> Optional[dict[str, Any]]:
    """Restore the newest sound checkpoint of the stage into `accelerator`'s objects; its progress, or
    None if the stage has no sound checkpoint (it then starts over, and says so if one was damaged)."""
    for folder in _complete(stage_dir):
        problem = _damage(folder)
        if problem is None:
            info = read_json(folder / PROGRESS_NAME)
            written_by = info.pop("num_processes")
            if written_by != accelerator.num_processes:  # the RNG states of the other processes are not in it
                raise ValueError(f"{folder} was written by a run of {written_by} process(es); resume it with "
                                 f"{written_by}, not {accelerator.num_processes}")
            accelerator.load_state(str(folder))
            return info
        logger.warning("rmt: checkpoint %s is damaged (%s); falling back to the one before it", folder, problem)
    if _complete(stage_dir):
        logger.warning("rmt: no sound checkpoint in %s; the stage starts over", stage_dir / FOLDER)
    return None


def remove_checkpoints(stage_dir: Path) -> None:
    """A finished stage needs no resume state."""
    shutil.rmtree(stage_dir / FOLDER, ignore_errors=True)
