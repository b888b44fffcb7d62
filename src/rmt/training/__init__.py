"""Training: the curriculum over segment counts and an accelerate-based trainer."""

from .config import TrainConfig
from .curriculum import Stage, parse_curriculum
from .trainer import TrainingDiverged, TrainingInterrupted, TrainResult, build_model, train

__all__ = ["Stage", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "build_model", "parse_curriculum", "train"]
