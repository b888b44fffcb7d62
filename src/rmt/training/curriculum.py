"""Curriculum over segment counts (scaling report, Sec. 4): train on 1 segment, then 2, then more.

Each stage starts from the previous stage's best checkpoint and ends when its metric reaches the
threshold or its step budget is spent. With ``mix_shorter`` every batch of a stage draws its
segment count from 1..n (the report's Figure 12), so shorter inputs are not forgotten.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class Stage:
    """One curriculum stage.

    Args:
        segments: segments per training input in this stage.
        max_steps: optimizer steps at most.
        threshold: stop the stage early once the evaluation metric reaches this (None: never).
        mix_shorter: draw each batch's segment count uniformly from 1..segments.
    """

    segments: int
    max_steps: int
    threshold: Optional[float] = None
    mix_shorter: bool = False

    def __post_init__(self) -> None:
        for name in ("segments", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"curriculum stage {name} must be a positive int, got {value!r}")

    def segments_at(self, step: int, seed: int) -> int:
        """Segment count of the batch at `step`: the same on every process and after a resume."""
        if not self.mix_shorter:
            return self.segments
        return random.Random(f"curriculum|{seed}|{self.segments}|{step}").randint(1, self.segments)


def parse_curriculum(spec: Sequence[Any], default_steps: int = 500, threshold: Optional[float] = None,
                     mix_shorter: bool = False) -> list[Stage]:
    """Stages from a config list: ints (segment counts) or dicts with the `Stage` fields."""
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"the curriculum must be a list of stages, e.g. [1, 2, 4], got {spec!r}")
    if not spec:
        raise ValueError("the curriculum is empty: give at least one stage, e.g. [1, 2, 4]")
    stages = []
    for item in spec:
        if isinstance(item, dict):
            unknown = set(item) - {"segments", "max_steps", "threshold", "mix_shorter"}
            if unknown:
                raise ValueError(f"unknown curriculum stage keys {sorted(unknown)}; use segments, max_steps, threshold, mix_shorter")
            item = {"max_steps": default_steps, "threshold": threshold, "mix_shorter": mix_shorter, **item}
            stages.append(Stage(**item))
        else:
            stages.append(Stage(segments=item, max_steps=default_steps, threshold=threshold, mix_shorter=mix_shorter))
    counts = [s.segments for s in stages]
    if counts != sorted(counts):
        raise ValueError(f"curriculum segment counts must not decrease, got {counts}")
    return stages
