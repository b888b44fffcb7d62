"""TrainConfig: one training run, read from YAML/JSON and overridden by `--set key=value` flags."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..config import DictConfig
from .curriculum import Stage, parse_curriculum


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
    max_grad_norm: float = 1.0
    eval_every: int = 100
    eval_examples: int = 256
    eval_batch_size: int = 64
    save_every: int = 100
    metric: str = "accuracy"
    greater_is_better: bool = True
    mixed_precision: str = "no"
    seed: int = 0
    out_dir: str = "runs/rmt"

    def __post_init__(self) -> None:
        for name in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "threshold"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, float):  # YAML reads 3e-4 as a string
                try:
                    setattr(self, name, float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"{name} must be a number, got {value!r}") from None
        for name in ("steps_per_stage", "batch_size", "gradient_accumulation_steps", "eval_every", "eval_examples",
                     "eval_batch_size", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.lora is not None and not isinstance(self.lora, dict):
            raise ValueError(f"lora must be a mapping of peft.LoraConfig fields (r, lora_alpha, target_modules, ...), "
                             f"got {self.lora!r}")
        self.stages()  # validate the curriculum now, not after an hour of training

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
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def apply_overrides(data: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))  # a deep copy
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {key!r}: {parent!r} is not a mapping")
        target[leaf] = value
    return data
