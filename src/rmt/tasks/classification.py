"""Long-text classification (Hyperpartisan-style): documents with labels from files or the hub.

Local JSONL/JSON/CSV/TSV files or a ``datasets`` name, both through ``datasets.load_dataset``.
Example ``i`` of a split is row ``perm[i]`` of a permutation seeded by ``(seed, split)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import Task, register

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}


def _builder(files: Sequence[str]) -> tuple[str, dict]:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise ValueError(f"data files must all be one of {sorted(_BUILDERS)}, got suffixes {sorted(suffixes)}")
    return builders.pop(), ({"delimiter": "\t"} if suffixes == {".tsv"} else {})


@register("text-classification")
class TextClassificationTask(Task):
    """Long-text classification from local JSONL/CSV files or a datasets name (needs data_files or dataset)."""

    name = "text-classification"
    kind = "classification"

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        """Documents cut to ``num_segments * segment_size`` tokens (``truncation`` says which end stays)."""
        if "max_length" in task_args:
            raise ValueError("text-classification: max_length follows from the number of segments in a curriculum; "
                             "leave it out of task_args")
        return {"max_length": num_segments * segment_size}

    def __init__(self, data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
                 dataset: str | None = None, tokenizer=None, seed: int = 0, *, dataset_config: str | None = None,
                 text_field: str = "text", label_field: str = "label", label_names: Sequence[str] | None = None,
                 max_length: int | None = None, truncation: str = "head") -> None:
        """
        Args:
            data_files: a file, a list of files (all the ``train`` split), or ``{split: files}``.
            dataset: a hub dataset name for ``datasets.load_dataset`` (network needed), instead of files.
            text_field, label_field: the columns holding the text and the label.
            label_names: the label order; default the dataset's class names, else the sorted label values.
            max_length: keep at most this many tokens, from the start (``truncation="head"``) or the end.
        """
        super().__init__(tokenizer, seed)
        if (data_files is None) == (dataset is None):
            raise ValueError("text-classification needs exactly one of data_files= (local JSONL/CSV) or dataset= (a hub name)")
        if truncation not in ("head", "tail"):
            raise ValueError(f"truncation must be 'head' or 'tail', got {truncation!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        import datasets  # imported here: a second to load, and only this task needs it

        if dataset is not None:
            loaded = datasets.load_dataset(dataset, dataset_config)
        else:
            files = dict(data_files) if isinstance(data_files, Mapping) else {"train": data_files}
            files = {k: [str(v)] if isinstance(v, (str, Path)) else [str(x) for x in v] for k, v in files.items()}
            missing = [f for fs in files.values() for f in fs if not Path(f).exists()]
            if missing:
                raise ValueError(f"data files not found: {missing}")
            builder, options = _builder([f for fs in files.values() for f in fs])
            loaded = datasets.load_dataset(builder, data_files=files, **options)
        self.data = {split: loaded[split] for split in loaded}
        for split, rows in self.data.items():
            for column in (text_field, label_field):
                if column not in rows.column_names:
                    raise ValueError(f"split {split!r} has no column {column!r}; columns: {rows.column_names} "
                                     "(set text_field= / label_field=)")
        self.text_field, self.label_field = text_field, label_field
        self.max_length, self.truncation = max_length, truncation
        feature = next(iter(self.data.values())).features[label_field]
        values = sorted({v for rows in self.data.values() for v in rows[label_field]}, key=str)
        if label_names is not None:
            self.label_names = [str(n) for n in label_names]
        elif isinstance(feature, datasets.ClassLabel):
            self.label_names = list(feature.names)
        else:
            self.label_names = [str(v) for v in values]
        self._label_index = {name: i for i, name in enumerate(self.label_names)}
        if isinstance(feature, datasets.ClassLabel):
            self._label_index.update({i: i for i in range(len(self.label_names))})
        unknown = [v for v in values if str(v) not in self._label_index and v not in self._label_index]
        if unknown:
            raise ValueError(f"labels {unknown} are not in label_names {self.label_names}")
        self._order: dict[str, list[int]] = {}

    def _row(self, index: int, split: str) -> dict:
        if split not in self.data:
            raise ValueError(f"no {split!r} split; available: {sorted(self.data)} (pass data_files={{split: path}})")
        rows = self.data[split]
        if not 0 <= index < len(rows):
            raise ValueError(f"index {index} is out of range for the {len(rows)} rows of split {split!r}")
        if split not in self._order:
            self._order[split] = random.Random(f"{self.name}|{self.seed}|{split}").sample(range(len(rows)), len(rows))
        return rows[self._order[split][index]]

    def score(self, predictions, examples) -> dict[str, float]:
        """Accuracy and F1 (the NeurIPS 2022 paper reports F1 on Hyperpartisan): with two labels the F1 of
        label 1, else the mean F1 over labels (macro)."""
        scores = super().score(predictions, examples)
        pairs = [(int(p), int(e["label"])) for p, e in zip(predictions, examples)]
        labels = [1] if self.num_labels == 2 else range(self.num_labels or 1 + max(t for _, t in pairs))

        def f1(label: int) -> float:
            tp = sum(p == label and t == label for p, t in pairs)
            predicted, actual = sum(p == label for p, _ in pairs), sum(t == label for _, t in pairs)
            return 2 * tp / (predicted + actual) if predicted + actual else 0.0

        return {**scores, "f1": sum(map(f1, labels)) / len(labels)}

    def example(self, index: int, split: str = "train") -> dict:
        self.rng(index, split)  # validates split and index
        row = self._row(index, split)
        ids = self.encode(row[self.text_field])
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[: self.max_length] if self.truncation == "head" else ids[-self.max_length :]
        value = row[self.label_field]
        label = self._label_index[value] if value in self._label_index else self._label_index[str(value)]
        return {"input_ids": ids, "label": label}

    def num_examples(self, split: str = "train") -> int:
        """Rows in ``split``."""
        return len(self.data[split])
