"""Training: the curriculum over segment counts and an accelerate-based trainer."""

from .config import TrainConfig
from .curriculum import Stage, parse_curriculum
from .trainer import TrainingDiverged, TrainingInterrupted, TrainResult, build_model, load_run, run_config, train

__all__ = ["Stage", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "build_model", "load_run", "parse_curriculum", "run_config", "train"]
