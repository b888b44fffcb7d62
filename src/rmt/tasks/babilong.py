"""BABILong-style samples (Kuratov et al. 2024): a bAbI story spread through long real text.

Layout, as in the benchmark's prompts::

    {instruction}

    <context>
    {background text with the story's facts inserted in order}
    </context>

    Question: {question}
    Answer: {answer}

``length`` is the exact number of prompt tokens (everything up to and including ``Answer:``);
``length=0`` ("0k") puts no background text in, only the facts. Samples of any size are produced
lazily by :meth:`BabilongTask.iter_chunks`, one segment at a time, so a 1M-token sample never
sits in memory. The metric is the benchmark's: the first sentence of the output must name the
answer label and no other label (labels the question names are ignored), case-insensitive.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .babi import DEFAULT_NUM_FACTS, OBJECTS, PLACES, QA5_PEOPLE, QA_TASKS, generate_story
from .base import Task, _check_lengths, causal_example, parse_length, register
from ..data.corpus import BackgroundText, background_text, rechunk

INSTRUCTIONS = {
    1: "I will give you context with the facts about positions of different persons hidden in some random "
       "text and a question. You need to answer the question based only on the information from the facts. "
       "If a person was in different locations, use the latest location to answer the question.",
    2: "I give you context with the facts about locations and actions of different persons hidden in some "
       "random text and a question. You need to answer the question based only on the information from the "
       "facts. If a person got an item in the first location and travelled to the second location the item "
       "is also in the second location. If a person dropped an item in the first location and moved to the "
       "second location the item remains in the first location.",
    3: "I give you context with the facts about locations and actions of different persons hidden in some "
       "random text and a question. You need to answer the question based only on the information from the "
       "facts. If a person got an item in the first location and travelled to the second location the item "
       "is also in the second location. If a person dropped an item in the first location and moved to the "
       "second location the item remains in the first location.",
    4: "I will give you context with the facts about locations and their relations hidden in some random "
       "text and a question. You need to answer the question based only on the information from the facts.",
    5: "I will give you context with the facts about different people, their location and actions, hidden "
       "in some random text and a question. You need to answer the question based only on the information "
       "from the facts.",
}
LABELS = {1: PLACES, 2: PLACES, 3: PLACES, 4: PLACES, 5: QA5_PEOPLE + OBJECTS}
STANDARD_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "1M")


@dataclass(frozen=True)
class BabilongSample:
    """What defines one sample, before any background text is read."""

    facts: list[list[int]]  # token ids of each fact, in story order
    positions: list[int]  # token offsets of the facts in the background text
    noise_tokens: int  # background text length
    noise_seed: int
    head: list[int]  # instruction and "<context>"
    tail: list[int]  # "</context>", the question and "Answer:"
    question: str
    answer: str


def babilong_match(output: str, answer: str, question: str, labels: Sequence[str],
                   max_words: int | None = None) -> bool:
    """The benchmark's answer check: the first sentence of ``output`` names ``answer`` and no other label.

    Labels the question itself names are ignored (they are never the answer). ``max_words`` also
    cuts the sentence to its first words (the benchmark does not; a stricter check for short outputs).
    """
    text = re.split(r"[.\n]", output.lower(), maxsplit=1)[0]
    if max_words is not None:
        text = " ".join(text.split()[:max_words])
    in_question = {label.lower() for label in labels if label.lower() in question.lower()}
    named = {label.lower() for label in labels if re.search(rf"\b{re.escape(label.lower())}\b", text)}
    return named - in_question == {answer.lower()}


class BabilongTask(Task):
    """BABILong: a bAbI qa story in background text of an exact length, question at the end."""

    kind = "causal-lm"

    def __init__(self, qa: int, tokenizer=None, seed: int = 0, length: int | str = "4k",
                 num_facts: int | None = None, background: str | BackgroundText | None = None,
                 instruction: str | None = None) -> None:
        super().__init__(tokenizer, seed)
        if qa not in QA_TASKS:
            raise ValueError(f"qa must be one of {QA_TASKS}, got {qa!r}")
        self.qa, self.name = qa, f"babilong-qa{qa}"
        self.length = parse_length(length)
        self.num_facts = DEFAULT_NUM_FACTS[qa] if num_facts is None else num_facts
        self.instruction = INSTRUCTIONS[qa] if instruction is None else instruction
        self.labels = LABELS[qa]
        if isinstance(background, BackgroundText):
            self.background, self.tokenizer = background, background.tokenizer
        else:
            self.background = background_text(background, self.tokenizer)

    def sample(self, index: int, split: str = "train") -> BabilongSample:
        """The facts, question, answer and layout of sample ``index``; cheap at any length."""
        rng = self.rng(index, split)
        facts, q = generate_story(self.qa, rng, self.num_facts).questions()[-1]
        fact_ids = [self.encode(" " + f.text) for f in facts]
        head = self.encode(f"{self.instruction}\n\n<context>\n" if self.instruction else "<context>\n")
        tail = self.encode(f"\n</context>\n\nQuestion: {q.text}\nAnswer:")
        fixed = len(head) + len(tail) + sum(map(len, fact_ids))
        if self.length and self.length < fixed:
            raise ValueError(f"length={self.length} is too short for {self.name} sample {index}: the instruction, "
                             f"facts and question take {fixed} tokens; use length >= {fixed} or 0 (facts only)")
        noise = self.length - fixed if self.length else 0
        positions = sorted(rng.randint(0, noise) for _ in fact_ids)
        return BabilongSample(fact_ids, positions, noise, rng.getrandbits(64), head, tail, q.text, q.answer)

    def iter_pieces(self, index: int, split: str = "train") -> Iterator[list[int]]:
        """The prompt as a lazy stream of token-id pieces (instruction, sentences, facts, question)."""
        s = self.sample(index, split)
        yield s.head
        yield from self.background.iter_with_facts(s.noise_tokens, s.facts, s.positions, s.noise_seed)
        yield s.tail

    def iter_chunks(self, index: int, chunk_tokens: int, split: str = "train",
                    include_answer: bool = False) -> Iterator[list[int]]:
        """The prompt of sample ``index`` in lists of ``chunk_tokens`` ids (the last may be shorter).

        Memory stays flat at any length: one sentence and one chunk are held at a time. With
        ``include_answer`` the answer tokens follow ``Answer:``.
        """
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        pieces = self.iter_pieces(index, split)
        if include_answer:
            pieces = _chain(pieces, [self.encode(" " + self.sample(index, split).answer)])
        yield from rechunk(pieces, chunk_tokens)

    def num_tokens(self, index: int = 0, split: str = "train") -> int:
        """Prompt length of sample ``index`` (exactly ``length`` unless ``length=0``)."""
        s = self.sample(index, split)
        return len(s.head) + s.noise_tokens + sum(map(len, s.facts)) + len(s.tail)

    def example(self, index: int, split: str = "train") -> dict:
        """The whole sample in memory (prompt, then the answer, scored); use :meth:`iter_chunks` when long."""
        prompt = [t for piece in self.iter_pieces(index, split) for t in piece]
        s = self.sample(index, split)
        ex = causal_example(prompt, self.encode(" " + s.answer))
        ex.update(answer=s.answer, question=s.question)
        return ex

    def score(self, predictions, examples) -> dict[str, float]:
        """BABILong accuracy; predictions are generated texts or token ids (decoded first)."""
        _check_lengths(predictions, examples)
        hits = []
        for pred, ex in zip(predictions, examples):
            text = pred if isinstance(pred, str) else self.decode(list(pred))
            hits.append(babilong_match(text, ex["answer"], ex["question"], self.labels))
        return {"accuracy": sum(hits) / max(len(hits), 1)}

    def describe(self, index: int = 0, split: str = "train") -> str:
        """The sample, with the middle of a long context elided."""
        s = self.sample(index, split)
        total = self.num_tokens(index, split)
        if total <= 4096:
            return super().describe(index, split)
        head = next(self.iter_chunks(index, 1024, split))
        return (f"{self.decode(head)} [... {total - 1024 - len(s.tail)} tokens ...]{self.decode(s.tail)}\n"
                f"-> target: {' ' + s.answer!r}; {total} prompt tokens")


def _chain(pieces: Iterator[list[int]], extra: list[list[int]]) -> Iterator[list[int]]:
    yield from pieces
    yield from extra


for _qa in QA_TASKS:
    def _factory(_qa=_qa, **kwargs) -> BabilongTask:
        return BabilongTask(_qa, **kwargs)
    _factory.description = f"BABILong qa{_qa}: a bAbI story spread through background text of an exact length"
    register(f"babilong-qa{_qa}")(_factory)
