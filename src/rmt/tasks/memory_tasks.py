"""Memorization tasks of the AAAI 2024 RMT report ("Scaling Transformer to 1M tokens and beyond").

Facts hidden in real background text, a question at the end:

- ``memorize``: one qa1 fact at the very start;
- ``detect-and-memorize``: one qa1 fact at a random position;
- ``reasoning``: two qa4 direction facts at random positions; the question needs the right one.

The input is exactly ``length`` tokens (or ``num_segments * segment_size``). The answer is one of
the six places: a label (``kind="classification"``, 6 labels) or text (``kind="causal-lm"``).
"""

from __future__ import annotations

from .babi import PLACES, answer_matches, generate_story
from .base import Task, _check_lengths, parse_length, register
from ..data.corpus import BackgroundText, background_text

KINDS = ("classification", "causal-lm")


class _MemoryTask(Task):
    label_names = sorted(PLACES)
    qa = 1
    fact_at_start = False

    def __init__(self, tokenizer=None, seed: int = 0, length: int | str | None = None,
                 num_segments: int | None = None, segment_size: int | None = None,
                 kind: str = "classification", background: str | BackgroundText | None = None) -> None:
        super().__init__(tokenizer, seed)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        if (num_segments is None) != (segment_size is None):
            raise ValueError("give num_segments and segment_size together (length = their product)")
        if num_segments is not None:
            if length is not None:
                raise ValueError("give either length or num_segments and segment_size, not both")
            if num_segments < 1 or segment_size < 1:
                raise ValueError(f"num_segments and segment_size must be >= 1, got {num_segments}, {segment_size}")
            length = num_segments * segment_size
        self.length = parse_length(512 if length is None else length)
        if isinstance(background, BackgroundText):
            if background.tokenizer is not self.tokenizer and tokenizer is not None:
                raise ValueError("the background text was built with another tokenizer; "
                                 "build it with background_text(source, tokenizer=task_tokenizer)")
            self.background = background
            self.tokenizer = background.tokenizer
        else:
            self.background = background_text(background, self.tokenizer)

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        return {"num_segments": num_segments, "segment_size": segment_size}  # exactly that many tokens

    def example(self, index: int, split: str = "train") -> dict:
        """``length`` tokens: noise with the facts, the question; (causal LM) then the answer, scored."""
        rng = self.rng(index, split)
        facts, q = generate_story(self.qa, rng, num_facts=1 if self.qa == 1 else None).questions()[-1]
        fact_ids = [self.encode(" " + f.text) for f in facts]
        question = self.encode(" " + q.text)
        answer = self.encode(" " + q.answer) if self.kind == "causal-lm" else []
        noise = self.length - sum(map(len, fact_ids)) - len(question) - len(answer)
        if noise < 0:
            raise ValueError(f"length={self.length} is too short for {self.name}: the facts, question and answer "
                             f"take {self.length - noise} tokens; use a length of at least that")
        if self.fact_at_start:
            positions = [0] * len(fact_ids)
        else:
            positions = sorted(rng.randint(0, noise) for _ in fact_ids)
        context = [t for piece in self.background.iter_with_facts(noise, fact_ids, positions, rng.getrandbits(64))
                   for t in piece]
        ids = context + question
        if self.kind == "classification":
            return {"input_ids": ids, "label": self.label_names.index(q.answer)}
        return {"input_ids": ids + answer, "labels": [-100] * len(ids) + answer, "answer": q.answer}

    def score(self, predictions, examples) -> dict[str, float]:
        """Accuracy: predicted label ints (classification) or answer ids/text (causal LM)."""
        if self.kind == "classification":
            return super().score(predictions, examples)
        _check_lengths(predictions, examples)
        hits = [answer_matches(p, e["answer"], self.tokenizer) for p, e in zip(predictions, examples)]
        return {"accuracy": sum(hits) / max(len(hits), 1)}


@register("memorize")
class MemorizeTask(_MemoryTask):
    """Memorize: a qa1 fact at the start of background text, its question at the end (6 places)."""

    name = "memorize"
    fact_at_start = True


@register("detect-and-memorize")
class DetectAndMemorizeTask(_MemoryTask):
    """Detect & memorize: a qa1 fact at a random position in background text, its question at the end."""

    name = "detect-and-memorize"


@register("reasoning")
class ReasoningTask(_MemoryTask):
    """Reasoning: two qa4 direction facts at random positions in background text, a question at the end."""

    name = "reasoning"
    qa = 4
