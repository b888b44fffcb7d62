"""Fault injection for the crash tests: ``RMT_TEST_KILL_AT=<point>:<n>`` kills the process (SIGKILL,
no clean-up of any kind) the n-th time it reaches `point`.

The points sit between the writes a crash could separate: the files of a checkpoint, the two
renames that swap in a new ``best/``, ``state.json`` and the removal of finished checkpoints, and
every optimizer step. Unset (the normal case) each call is one dictionary look-up.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RMT_TEST_KILL_AT"
POINTS = ("step", "save:state", "save:progress", "save:manifest", "save:renamed", "best:written", "best:moved",
          "state:written")
_reached: Counter = Counter()


def fault_point(point: str) -> None:
    """Die here if ``RMT_TEST_KILL_AT`` names this point and this is its n-th arrival."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name not in POINTS or not count.isdigit():
        raise ValueError(f"{ENV}={spec!r}: expected <point>:<n> with a point among {', '.join(POINTS)}")
    if name == point:
        _reached[point] += 1
        if _reached[point] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
