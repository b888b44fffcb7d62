"""The Task interface every task family implements, and the registry by name."""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Optional

import torch
from torch.utils.data import Dataset

from ..data.collate import collate_causal_lm, collate_classification
from ..data.tokenizer import ByteTokenizer, pad_id

SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100  # Hugging Face convention: labels equal to -100 never enter the loss

_REGISTRY: dict[str, Callable[..., "Task"]] = {}


def register(name: str) -> Callable:
    """Class decorator: make a task available as ``get_task(name, **kwargs)``.

    ``@register("babi-qa1")`` on a class registers the class; a name can also be registered for a
    ``functools.partial`` of one (``register("x")(partial(Cls, qa=1))``) to share one class.
    """

    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_REGISTRY)


def get_task(name: str, **kwargs: Any) -> "Task":
    """Build the task registered as ``name``; ``kwargs`` go to its constructor (``seed``, ``tokenizer``, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _REGISTRY[name](**kwargs)


def task_at(name: str, num_segments: int, segment_size: int, **kwargs: Any) -> "Task":
    """The task ``name`` with examples that fill ``num_segments`` segments of ``segment_size`` tokens, as
    its class says (`Task.length_for_segments`); ``kwargs`` are the other constructor arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    factory = _REGISTRY[name]
    cls = getattr(factory, "task_class", factory)
    sized = cls.length_for_segments(num_segments, segment_size, **kwargs)
    if sized is None:
        raise ValueError(f"task {name!r} has no length to set from a number of segments (its examples are as long "
                         f"as {cls.own_length}): train and evaluate it with 1 segment (curriculum: [1], --segments 1); "
                         "the wrapper still cuts a long example into as many segments as it needs")
    clash = sorted(set(sized) & set(kwargs))
    if clash:
        raise ValueError(f"task {name!r}: {', '.join(clash)} follow from the number of segments in a curriculum; "
                         "leave them out of task_args")
    return factory(**sized, **kwargs)


def task_description(name: str) -> str:
    """The one-line description of a registered task (the first line of its docstring)."""
    factory = _REGISTRY[name]
    doc = getattr(factory, "description", None) or (getattr(factory, "func", factory).__doc__ or "")
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Task(abc.ABC):
    """A seeded source of examples with its own collation and metric.

    ``example(index, split)`` is a pure function of ``(seed, split, index)``. Causal-LM examples are
    ``{"input_ids", "labels"}`` with labels equal to the ids on scored target tokens and -100
    elsewhere (the model shifts internally). Classification examples are ``{"input_ids", "label"}``
    with content tokens only: the wrapper adds ``[CLS]``/``[SEP]`` per segment itself.

    Predictions for :meth:`score`: for causal LM, one list per example of the predicted token ids
    at the labelled positions, in order (:func:`predictions_from_logits` builds them from logits);
    for classification, one predicted label int per example.
    """

    name: ClassVar[str] = "task"
    kind: ClassVar[str] = "causal-lm"  # or "classification"; instances may override
    metric: ClassVar[str] = "accuracy"  # the papers' metric for the task (a key of `score`'s result)
    label_names: list[str] | None = None

    def __init__(self, tokenizer=None, seed: int = 0) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self.seed = int(seed)

    @property
    def num_labels(self) -> int | None:
        return len(self.label_names) if self.label_names is not None else None

    # -- length -----------------------------------------------------------------------------------
    own_length: ClassVar[str] = "their data make them"  # why a task without a settable length has none

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args: Any) -> Optional[dict[str, Any]]:
        """Constructor arguments under which an example fills ``num_segments`` segments of
        ``segment_size`` tokens: how the task's length follows from a curriculum stage. A task whose
        examples have a length of their own takes one segment count only, 1 (no argument); None for
        any other (`task_at` then says so)."""
        return {} if num_segments == 1 else None

    # -- examples -------------------------------------------------------------------------------
    @abc.abstractmethod
    def example(self, index: int, split: str = "train") -> dict:
        """The ``index``-th example of ``split``, deterministic in ``(seed, split, index)``."""

    def rng(self, index: int, split: str) -> random.Random:
        """A generator seeded by ``(task name, seed, split, index)``; string seeds hash stably across runs."""
        _check_split(split)
        if index < 0:
            raise ValueError(f"example index must be >= 0, got {index}")
        return random.Random(f"{self.name}|{self.seed}|{split}|{index}")

    def dataset(self, num_examples: int, split: str = "train") -> "TaskDataset":
        """A lazy ``torch`` dataset of the first ``num_examples`` examples of ``split``."""
        _check_split(split)
        return TaskDataset(self, num_examples, split)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # -- batching and metrics ------------------------------------------------------------------
    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Right-padded tensors: ``input_ids``, ``attention_mask`` and ``labels``."""
        if self.kind == "classification":
            return collate_classification(examples, pad_id(self.tokenizer))
        return collate_causal_lm(examples, pad_id(self.tokenizer))

    def score(self, predictions: Sequence, examples: Sequence[dict]) -> dict[str, float]:
        """The task's metric; the default is per-token accuracy and exact match (causal LM) or accuracy."""
        _check_lengths(predictions, examples)
        if self.kind == "classification":
            correct = [int(p) == int(e["label"]) for p, e in zip(predictions, examples)]
            return {"accuracy": sum(correct) / max(len(correct), 1)}
        return token_scores(predictions, examples)

    def scoring_view(self, example: dict) -> dict:
        """What :meth:`score` needs of an example, kept while the rest of an evaluation runs: all
        but ``input_ids``, with ``labels`` reduced to the scored targets (for inputs of millions
        of tokens). Tasks whose ``score`` needs more override this."""
        view = {k: v for k, v in example.items() if k not in ("input_ids", "labels")}
        if "labels" in example:
            view["labels"] = self.target_ids(example)
        return view

    def target_ids(self, example: dict) -> list[int]:
        """The labelled (scored) token ids of a causal-LM example, in order."""
        return [t for t in example["labels"] if t != IGNORE_INDEX]

    def describe(self, index: int = 0, split: str = "train") -> str:
        """A human-readable sample."""
        ex = self.example(index, split)
        if self.kind == "classification":
            label = ex["label"]
            name = self.label_names[label] if self.label_names else str(label)
            return f"{self.decode(ex['input_ids'])}\n-> label {label} ({name}); {len(ex['input_ids'])} tokens"
        prompt = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l == IGNORE_INDEX]
        return (f"{self.decode(prompt)}\n-> target: {self.decode(self.target_ids(ex))!r}; "
                f"{len(ex['input_ids'])} tokens, {len(self.target_ids(ex))} scored")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, seed={self.seed})"


class TaskDataset(Dataset):
    """Examples generated on access: nothing is held but the task and a count."""

    def __init__(self, task: Task, num_examples: int, split: str) -> None:
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        self.task, self.num_examples, self.split = task, num_examples, split

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not -self.num_examples <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return self.task.example(index % self.num_examples, self.split)


def causal_example(prompt: Sequence[int], target: Sequence[int]) -> dict:
    """``prompt + target`` with labels on the target only."""
    return {"input_ids": [*prompt, *target], "labels": [IGNORE_INDEX] * len(prompt) + list(target)}


def predictions_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """Greedy predictions at the labelled positions, in the format :meth:`Task.score` expects.

    ``logits`` (B, T, V) from a causal LM, or the argmax ids (B, T) themselves (the model's
    ``return_predictions=True``), and ``labels`` (B, T): the token at position t is predicted from
    position t - 1, so this reads ``argmax(logits[:, t - 1])`` wherever ``labels[:, t] != -100``.
    """
    pred = logits[:, :-1] if logits.dim() == 2 else logits[:, :-1].argmax(-1)  # (B, T-1): prediction for t+1
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    return [pred[b][scored[b]].tolist() for b in range(labels.shape[0])]


def token_scores(predictions: Sequence[Sequence[int]], examples: Sequence[dict]) -> dict[str, float]:
    """Per-token accuracy over all scored tokens and exact match of each whole target."""
    _check_lengths(predictions, examples)
    correct = total = exact = 0
    for pred, ex in zip(predictions, examples):
        target = [t for t in ex["labels"] if t != IGNORE_INDEX]
        pred = list(pred)[: len(target)]
        hits = sum(int(p) == t for p, t in zip(pred, target))
        correct, total = correct + hits, total + len(target)
        exact += hits == len(target)
    n = max(len(examples), 1)
    return {"token_accuracy": correct / max(total, 1), "exact_match": exact / n}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def _check_lengths(predictions: Sequence, examples: Sequence) -> None:
    if len(predictions) != len(examples):
        raise ValueError(f"got {len(predictions)} predictions for {len(examples)} examples; pass one per example")


def parse_length(value: int | str) -> int:
    """A token count from an int or a string such as ``"4k"``, ``"128K"``, ``"1M"`` (k = 1024, M = 1024**2)."""
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        scale = {"k": 1024, "m": 1024**2}.get(text[-1:], 1)
        try:
            n = int(float(text[:-1] if scale > 1 else text) * scale)
        except ValueError:
            raise ValueError(f"length {value!r} is not a token count; use an int or e.g. '4k', '1M'") from None
    if n < 0:
        raise ValueError(f"length must be >= 0, got {value!r}")
    return n
