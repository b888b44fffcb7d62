"""Backbones: build a small one from random initialisation, or load a pretrained one with its tokenizer."""

from __future__ import annotations

from typing import Any, Optional

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

TASK_KINDS = ("causal-lm", "classification")


def _auto_class(task: str):
    if task not in TASK_KINDS:
        raise ValueError(f"task must be one of {TASK_KINDS}, got {task!r}")
    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def build_backbone(spec: dict[str, Any], task: str, vocab_size: int, num_labels: Optional[int] = None,
                   max_positions: Optional[int] = None, special_ids: Optional[dict[str, int]] = None
                   ) -> transformers.PreTrainedModel:
    """A randomly initialised model from config fields, e.g. ``{"model_type": "bert", "hidden_size": 128}``.

    The vocabulary, label count, positions and special ids come from the task, so a spec only says
    the shape of the network.
    """
    spec = dict(spec)
    model_type = spec.pop("model_type", None)
    if model_type is None:
        raise ValueError("a backbone spec needs model_type (e.g. 'bert', 'gpt2', 'llama')")
    try:
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **spec)
    except ValueError as err:
        raise ValueError(f"cannot build a {model_type!r} backbone: {err}") from None
    if max_positions is not None:
        for name in ("max_position_embeddings", "n_positions"):
            if hasattr(config, name) and name not in spec:
                setattr(config, name, max_positions)
    for name, value in (special_ids or {}).items():
        setattr(config, name, value)
    if task == "classification":
        config.num_labels = num_labels or 2
    return _auto_class(task).from_config(config)


def load_backbone(name_or_path: str, task: str = "causal-lm", num_labels: Optional[int] = None,
                  **kwargs: Any) -> tuple[transformers.PreTrainedModel, Any]:
    """``(model, tokenizer)`` from a hub name (needs network) or a local folder.

    Args:
        name_or_path: ``"gpt2"``, ``"./my-model"``, ...
        task: ``"causal-lm"`` or ``"classification"`` (adds a fresh head with `num_labels`).
        kwargs: passed to the model's ``from_pretrained`` (``dtype=``, ...).
    """
    auto = _auto_class(task)
    if task == "classification":
        kwargs["num_labels"] = num_labels or 2
    try:
        model = auto.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise ValueError(f"cannot load backbone {name_or_path!r}: not a local model folder, and the hub "
                         f"could not give it ({str(err).splitlines()[0]})") from None
    return model, tokenizer
