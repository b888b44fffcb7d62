"""Language modelling on long text cut into segments with histories.

An example is ``(history_segments + 1) * segment_size`` consecutive tokens of real text from a
seeded sentence. ``loss_on="all"`` scores every token (enwik8-style with the byte tokenizer);
``loss_on="last"`` scores only the last segment, given the history (the ArXiv setting of the RMT
papers: how much do earlier segments, read through memory, help predict the last one).
Splits are disjoint parts of the corpus: the first 90% of its sentences train, then 5% validation,
then 5% test. Whitespace is collapsed to single spaces.
"""

from __future__ import annotations

import math

from .base import IGNORE_INDEX, SPLITS, Task, register, token_scores
from ..data.corpus import BackgroundText, background_text

_SPLIT_FRACTIONS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}
LOSS_ON = ("all", "last")


class LanguageModelingTask(Task):
    """Language modelling: windows of segment_size * (history + 1) tokens of real text (byte-level by default)."""

    name = "language-modeling"
    metric = "perplexity"
    kind = "causal-lm"
    default_loss_on = "all"

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        """The scored segment and ``num_segments - 1`` history segments before it."""
        return {"segment_size": segment_size, "history_segments": num_segments - 1}

    def __init__(self, tokenizer=None, seed: int = 0, segment_size: int = 512, history_segments: int = 3,
                 loss_on: str | None = None, source: str | BackgroundText | None = None) -> None:
        super().__init__(tokenizer, seed)
        loss_on = self.default_loss_on if loss_on is None else loss_on
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        if segment_size < 1 or history_segments < 0:
            raise ValueError(f"need segment_size >= 1 and history_segments >= 0, got {segment_size}, {history_segments}")
        self.segment_size, self.history_segments, self.loss_on = segment_size, history_segments, loss_on
        corpus = source if isinstance(source, BackgroundText) else background_text(source, self.tokenizer)
        self.tokenizer = corpus.tokenizer
        self.splits = {split: corpus.subset(*_SPLIT_FRACTIONS[split]) for split in SPLITS}

    @property
    def length(self) -> int:
        return (self.history_segments + 1) * self.segment_size

    def example(self, index: int, split: str = "train") -> dict:
        rng = self.rng(index, split)
        ids = self.splits[split].tokens(self.length, seed=rng.getrandbits(64))
        if self.loss_on == "all":
            return {"input_ids": ids, "labels": list(ids)}
        scored = self.length - self.segment_size
        return {"input_ids": ids, "labels": [IGNORE_INDEX] * scored + ids[scored:]}

    def score(self, predictions, examples) -> dict[str, float]:
        """Next-token accuracy at the scored positions (for loss-based metrics see :meth:`loss_metrics`)."""
        return {"token_accuracy": token_scores(predictions, examples)["token_accuracy"]}

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        """Perplexity and bits per token (bits per character for the byte tokenizer) from a mean loss in nats."""
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2)}


@register("language-modeling-last-segment")
class LastSegmentLanguageModelingTask(LanguageModelingTask):
    """Language modelling, ArXiv-style: the loss on the last segment only, given the history segments."""

    name = "language-modeling-last-segment"
    default_loss_on = "last"


register("language-modeling")(LanguageModelingTask)
