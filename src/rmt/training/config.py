"""TrainConfig: one training run, read from YAML/JSON and overridden by `--set key=value` flags."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from ..config import DictConfig
from .curriculum import Stage, parse_curriculum
from .run_dir import write_json_atomic

# which way is better, for the metrics the tasks report (`rmt.evaluation.metric_names`)
GREATER_IS_BETTER = {"accuracy": True, "exact_match": True, "token_accuracy": True,
                     "loss": False, "perplexity": False, "bits_per_token": False}


@dataclass
class TrainConfig(DictConfig):
    """Everything a run needs. Field names are the keys of the config file.

    Tokenizer: ``None``/``"byte"``, ``"word"``/``"word:N"`` or a transformers name (see
    `rmt.data.load_tokenizer`); a pretrained backbone brings its own.

    Backbone: a dict ``{"model_type": "bert", "hidden_size": 128, ...}`` builds a model from random
    initialisation with those config fields; a string is a hub name, a local folder, or a packaged
    model's short name (see `rmt.backbones`).

    LoRA: ``lora: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}`` (any `peft.LoraConfig`
    fields; the task type is set from the task) trains adapters on the backbone while the memory
    (and a classification head) train in full; stages pass the adapter on, and checkpoints hold only
    the adapter and the memory.

    ``rmt: {sink_token_id: bos}`` puts the tokenizer's BOS token first in every decoder segment
    (see `rmt.RMTConfig.sink_token_id`).

    ``metric`` picks each stage's best checkpoint and is checked against the task's metrics when a
    run starts; ``greater_is_better`` left unset takes the metric's own direction (loss and
    perplexity: lower is better). ``max_grad_norm: null`` turns gradient clipping off.

    ``init_from`` starts the first stage from a trained model instead of from the backbone's
    initialisation: a run directory of `rmt train` (its trained model) or a saved model folder. Its
    parameters must have the shapes this config builds (same backbone and memory); use it to extend
    a finished curriculum with longer stages without training the short ones again.
    """

    task: str = "detect-and-memorize"
    task_args: dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[str] = None
    backbone: Union[str, dict[str, Any]] = field(default_factory=lambda: {"model_type": "bert"})
    rmt: dict[str, Any] = field(default_factory=lambda: {"num_mem_tokens": 10, "segment_size": 128})
    lora: Optional[dict[str, Any]] = None
    curriculum: list[Any] = field(default_factory=lambda: [1, 2, 4])
    steps_per_stage: int = 500
    threshold: Optional[float] = None
    mix_shorter: bool = False
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: Optional[float] = 1.0
    eval_every: int = 100
    eval_examples: int = 256
    eval_batch_size: int = 64
    save_every: int = 100
    metric: str = "accuracy"
    greater_is_better: Optional[bool] = None
    mixed_precision: str = "no"
    seed: int = 0
    init_from: Optional[str] = None
    out_dir: str = "runs/rmt"

    def __post_init__(self) -> None:
        for name in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "threshold"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, float):  # YAML reads 3e-4 as a string
                try:
                    setattr(self, name, float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"{name} must be a number, got {value!r}") from None
            if value is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("steps_per_stage", "batch_size", "gradient_accumulation_steps", "eval_every", "eval_examples",
                     "eval_batch_size", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 (the largest gradient norm kept) or null (no clipping), "
                             f"got {self.max_grad_norm}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        self._check_metric()
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.lora is not None and not isinstance(self.lora, dict):
            raise ValueError(f"lora must be a mapping of peft.LoraConfig fields (r, lora_alpha, target_modules, ...), "
                             f"got {self.lora!r}")
        self.stages()  # validate the curriculum now, not after an hour of training

    def _check_metric(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be the name of one of the task's metrics, got {self.metric!r}")
        if self.greater_is_better is not None and not isinstance(self.greater_is_better, bool):
            raise ValueError(f"greater_is_better must be true or false, or left unset to take the metric's own "
                             f"direction, got {self.greater_is_better!r}")
        known = GREATER_IS_BETTER.get(self.metric)
        if self.greater_is_better is None:
            if known is None:
                raise ValueError(f"greater_is_better: the direction of metric {self.metric!r} is not known; set it")
            self.greater_is_better = known
        elif known is not None and self.greater_is_better != known:
            raise ValueError(f"greater_is_better={self.greater_is_better} contradicts metric {self.metric!r}, which is "
                             f"better when {'higher' if known else 'lower'}; leave greater_is_better unset")

    def stages(self) -> list[Stage]:
        return parse_curriculum(self.curriculum, self.steps_per_stage, self.threshold, self.mix_shorter)

    @classmethod
    def load(cls, path: Union[str, Path], overrides: tuple[str, ...] = ()) -> "TrainConfig":
        """Read a YAML or JSON file, then apply ``key=value`` overrides (values parsed as YAML;
        dotted keys reach into dicts: ``rmt.num_mem_tokens=4``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML/JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
        return cls.from_dict(apply_overrides(data, overrides))

    def save(self, path: Union[str, Path]) -> None:
        """Write the config as JSON, atomically (a crash leaves the old file or the new one)."""
        write_json_atomic(path, self.to_dict())


def apply_overrides(data: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """`data` with ``key=value`` strings applied (values parsed as YAML, dotted keys reach into dicts)."""
    changes = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            changes.append((key, yaml.safe_load(raw)))
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({err})") from None
    return with_values(data, changes)


def with_values(data: dict[str, Any], changes: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of `data` with each (dotted key, value) set: ``("rmt.memory", "armt")`` sets data["rmt"]["memory"]."""
    data = json.loads(json.dumps(data))  # a deep copy
    for key, value in changes:
        target = data
        *parents, leaf = str(key).split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {key!r}: {parent!r} is not a mapping")
        target[leaf] = value
    return data
