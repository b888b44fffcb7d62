"""BABILong (Kuratov et al. 2024): a real bAbI question's facts hidden in long background text.

Built as the benchmark builds it (``booydar/babilong``: ``babilong_utils.py``, ``data/create_tasks.py``):

* a sample is one question of a bAbI file with every fact told before it, in file order;
* the context is ``length`` tokens of the model's own tokenizer: background sentences (skipping
  those under 10 tokens) with the facts put in, in order, at sentence boundaries chosen uniformly
  over the whole text; the last sentence is cut so the length is exact. ``"0k"`` is the facts alone;
* a named length ``"Nk"`` / ``"NM"`` is ``N * 1000`` / ``N * 1_000_000`` tokens minus the 300 the
  benchmark leaves for the prompt (``"4k"``: 3,700 tokens of context); an int is an exact count;
* for a length > 0 only questions with at most ``length // 8`` facts are used, as published (and
  whose facts fit in the context in this tokenizer's tokens);
* the prompt is the benchmark's (see :mod:`rmt.tasks.babilong_prompts`), or none at all,
  ``"{context} {question}"``, for models fine-tuned on the task.

Samples of any size (10M tokens) are produced lazily by :meth:`BabilongTask.iter_chunks`, one
segment at a time. Where this differs from the published builder: facts go in at the first sentence
boundary after a uniformly drawn token offset (not a uniformly drawn sentence index, which would
need every sentence of a 10M-token text up front), sentences are joined with a space (the published
sets join them with none), and samples are a seeded permutation of the file's eligible questions.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .babi import BABI_TASKS, QA_TASKS, Question, babi_questions, generate_story
from .babilong_prompts import BabilongPrompt, babilong_prompt, compare_answers, lenient_match, task_labels
from .base import Task, _check_lengths, causal_example, register
from ..data.corpus import BackgroundText, background_text, rechunk

STANDARD_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M", "10M")
PROMPT_RESERVE = 300  # tokens the benchmark keeps free of context for the prompt (create_tasks.py)
MIN_SENTENCE_TOKENS = 10  # background sentences shorter than this are skipped (SentenceSampler)
FACT_TOKENS = 8  # at most length // 8 facts per sample (create_tasks.py's max_n_facts)
_NAMED = re.compile(r"(\d+(?:\.\d+)?)([kKmM])")


def context_length(length: int | str) -> int:
    """Context tokens of a BABILong length: ``"0k"`` is 0 (facts only); ``"4k"`` is 4000 - 300,
    ``"1M"`` 1,000,000 - 300 (the benchmark's names); an int (or digits) is an exact count."""
    if isinstance(length, bool):
        raise ValueError(f"length must be a token count or a name such as '4k', got {length!r}")
    if isinstance(length, int) or str(length).strip().isdigit():
        n = int(length)
        if n < 0:
            raise ValueError(f"length must be >= 0, got {length!r}")
        return n
    m = _NAMED.fullmatch(str(length).strip())
    if m is None:
        raise ValueError(f"length {length!r} is not a BABILong length; use a name such as "
                         f"{', '.join(STANDARD_LENGTHS)} or a token count")
    n = float(m[1]) * (1000 if m[2] in "kK" else 1_000_000)
    return 0 if n == 0 else max(int(n) - PROMPT_RESERVE, 0)


@dataclass(frozen=True)
class BabilongSample:
    """What defines one sample, before any background text is read."""

    facts: list[list[int]]  # token ids of each fact, in story order
    positions: list[int]  # token offsets of the facts in the background text
    noise_tokens: int  # background text length
    noise_seed: int
    head: list[int]  # the prompt before the context
    tail: list[int]  # the prompt after the context (the question)
    question: str
    answer: str


class BabilongTask(Task):
    """BABILong qa1-qa20: a real bAbI question in background text of an exact length, question at the end.

    Args:
        qa: the bAbI task, 1-20.
        length: a BABILong length (``"0k"``, ``"4k"``, ``"1M"``, ...) or an exact context token count.
        babi: where the bAbI questions come from: a bAbI folder or file; ``None`` for
            ``$RMT_BABI_DIR`` or else the published sets through ``datasets`` (network);
            ``"generated"`` for the library's own qa1-qa5 story generator (no data needed).
        background: the text to hide facts in: ``None`` for the bundled public-domain books, a text
            file or folder, a ``datasets`` name such as ``"deepmind/pg19"`` (network), or a
            :class:`BackgroundText`.
        prompt: ``"official"`` (the benchmark's prompt), ``"none"`` (``"{context} {question}"``,
            for fine-tuned models) or a :class:`BabilongPrompt`.
        prompt_source: where the official prompt is read from: ``"auto"``, ``"lm-eval"`` or ``"published"``.
        answer_marker: text put right after the question, before the answer (the authors' fine-tuned
            RMTs were trained with ``"GEN"`` there).
        num_facts: facts per generated story (``babi="generated"`` only).
        kind: ``"causal-lm"`` (the answer's tokens follow the input, scored) or ``"classification"``
            (the answer is one of the task's labels, as the RMT scaling paper trained BERT on qa1-qa3;
            tasks whose every answer is one label only).
        fill: what ``length`` measures: ``"context"`` (the benchmark's: the question follows a context of
            ``length`` tokens) or ``"input"`` (training: each sample's context is shortened so that context,
            question and answer are ``length`` tokens together, so a curriculum stage of ``n`` segments
            holds whole samples in ``n`` segments and its first stage needs no memory).
        vary_length: with ``fill="input"``, each sample's background is cut to a seeded random share of
            its room, so samples end anywhere up to ``length`` (the last segment partial, as benchmark
            inputs are) instead of filling it exactly.

    Splits: ``"train"`` reads the bAbI train file, ``"validation"`` and ``"test"`` the test file. Train
    indices wrap around the file: train sample ``i`` asks question ``i mod N`` in its own background
    and fact positions (a run of any length); test indices past the file are an error.
    """

    kind = "causal-lm"

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        """A context of exactly ``num_segments * segment_size`` tokens (the question and answer follow it;
        with ``fill="input"`` the whole sample is that long)."""
        return {"length": num_segments * segment_size}

    def __init__(self, qa: int, tokenizer=None, seed: int = 0, length: int | str = "4k",
                 babi: str | Path | None = None, background: str | Path | BackgroundText | None = None,
                 prompt: str | BabilongPrompt = "official", prompt_source: str = "auto",
                 answer_marker: str = "", num_facts: int | None = None, fill: str = "context",
                 kind: str = "causal-lm", vary_length: bool = False) -> None:
        super().__init__(tokenizer, seed)
        if vary_length and fill != "input":
            raise ValueError("vary_length shortens samples below length: use it with fill='input'")
        self.vary_length = bool(vary_length)
        if kind not in ("causal-lm", "classification"):
            raise ValueError(f"kind must be 'causal-lm' or 'classification', got {kind!r}")
        if fill not in ("context", "input"):
            raise ValueError(f"fill must be 'context' (length is the context's) or 'input' (context, question and "
                             f"answer together), got {fill!r}")
        if qa not in BABI_TASKS:
            raise ValueError(f"qa must be 1-20, got {qa!r}")
        if babi == "generated" and qa not in QA_TASKS:
            raise ValueError(f"babi='generated' has stories for qa1-qa5 only, not qa{qa}: pass a bAbI folder")
        if num_facts is not None and babi != "generated":
            raise ValueError("num_facts sets the size of generated stories: use it with babi='generated'")
        self.qa, self.name = qa, f"babilong-qa{qa}"
        self.length = length
        self.context_tokens = context_length(length)
        self.babi, self.num_facts, self.fill = babi, num_facts, fill
        self.answer_marker = answer_marker
        if isinstance(prompt, BabilongPrompt):
            self.prompt = prompt
        elif prompt == "official":
            self.prompt = babilong_prompt(qa, prompt_source)
        elif prompt == "none":
            self.prompt = None
        else:
            raise ValueError(f"prompt must be 'official', 'none' or a BabilongPrompt, got {prompt!r}")
        self.labels = task_labels(qa)
        self.kind = kind
        if kind == "classification":
            self.label_names = list(self.labels)
        if isinstance(background, BackgroundText):
            self.background, self.tokenizer = background, background.tokenizer
        else:
            self.background = background_text(background, self.tokenizer)
        self._order: dict[str, list[Question]] = {}

    # -- the questions ---------------------------------------------------------------------------
    def questions(self, split: str = "test") -> list[Question]:
        """The eligible questions of ``split`` in this task's seeded order (sample ``i`` is the ``i``-th)."""
        if split not in self._order:
            file_split = "train" if split == "train" else "test"
            questions = babi_questions(self.qa, file_split, self.babi)
            if self.context_tokens:
                sizes: dict[str, int] = {}  # fact text -> tokens (bAbI repeats its sentences a lot)

                def fits(facts, q) -> bool:
                    if len(facts) > self.context_tokens // FACT_TOKENS:
                        return False
                    for f in facts:
                        if f.text not in sizes:
                            sizes[f.text] = len(self.encode(" " + f.text))
                    return sum(sizes[f.text] for f in facts) <= self._context_room(q)

                questions = [q for q in questions if fits(*q)]
            if not questions:
                raise ValueError(f"no qa{self.qa} question's facts fit in a context of {self.context_tokens} tokens "
                                 f"(at most {self.context_tokens // FACT_TOKENS} facts); use a longer length")
            rng = random.Random(f"{self.name}|{self.seed}|{split}|order")
            self._order[split] = rng.sample(questions, len(questions))
        return self._order[split]

    def num_samples(self, split: str = "test") -> int | None:
        """How many distinct samples ``split`` has (``babi="generated"``: unlimited, None)."""
        return None if self.babi == "generated" else len(self.questions(split))

    def question(self, index: int, split: str = "test") -> Question:
        """The facts and question of sample ``index`` (train indices wrap around the file)."""
        if self.babi == "generated":
            return generate_story(self.qa, self.rng(index, split), self.num_facts).questions()[-1]
        questions = self.questions(split)
        if split == "train" and index >= 0:
            index %= len(questions)
        if not 0 <= index < len(questions):
            raise ValueError(f"{self.name} {split} has {len(questions)} samples at this length; got index {index}")
        return questions[index]

    # -- a sample, lazily ------------------------------------------------------------------------
    def sample(self, index: int, split: str = "test") -> BabilongSample:
        """The facts, question, answer and layout of sample ``index``; cheap at any length."""
        facts, q = self.question(index, split)
        fact_ids = [self.encode(" " + f.text) for f in facts]
        fixed = sum(map(len, fact_ids))
        room = self._context_room(q)
        if self.context_tokens and room < fixed:
            raise ValueError(f"{self.name} sample {index}: its {len(facts)} facts take {fixed} tokens, more than the "
                             f"context of {room}; use a longer length or 0k (facts only)")
        noise = room - fixed if self.context_tokens else 0
        if self.vary_length:  # its own generator: the layout below is drawn as without it
            noise = random.Random(f"{self.name}|{self.seed}|{split}|{index}|length").randint(0, noise)
        rng = random.Random(f"{self.name}|{self.seed}|{split}|{index}|layout")
        positions = sorted(rng.randint(0, noise) for _ in fact_ids)
        head = self.encode(self.prompt.head()) if self.prompt else []
        return BabilongSample(fact_ids, positions, noise, rng.getrandbits(64), head, self._tail(q), q.text, q.answer)

    def _tail(self, q) -> list[int]:
        """The ids after the context: the question (in the prompt's words) and the answer marker."""
        tail = self.encode(self.prompt.tail(q.text) if self.prompt else " " + q.text)
        return tail + (self.encode(self.answer_marker) if self.answer_marker else [])

    def _context_room(self, q) -> int:
        """Context tokens for question ``q``: ``context_tokens``, less the prompt, question and answer
        under ``fill="input"`` (0 stays 0, the facts alone)."""
        if self.fill == "context" or not self.context_tokens:
            return self.context_tokens
        head = len(self.encode(self.prompt.head())) if self.prompt else 0
        answer = len(self.encode(" " + q.answer)) if self.kind == "causal-lm" else 0
        return self.context_tokens - head - len(self._tail(q)) - answer

    def iter_context(self, index: int, split: str = "test") -> Iterator[list[int]]:
        """The context alone (facts in background text), as a lazy stream of sentences and facts."""
        s = self.sample(index, split)
        yield from self.background.iter_with_facts(s.noise_tokens, s.facts, s.positions, s.noise_seed,
                                                   min_sentence_tokens=MIN_SENTENCE_TOKENS)

    def iter_pieces(self, index: int, split: str = "test") -> Iterator[list[int]]:
        """The whole input as a lazy stream of token-id pieces: prompt head, context, question."""
        s = self.sample(index, split)
        yield s.head
        yield from self.iter_context(index, split)
        yield s.tail

    def iter_chunks(self, index: int, chunk_tokens: int, split: str = "test",
                    include_answer: bool = False) -> Iterator[list[int]]:
        """The input of sample ``index`` in lists of ``chunk_tokens`` ids (the last may be shorter).

        Memory stays flat at any length: one sentence and one chunk are held at a time. With
        ``include_answer`` the answer tokens follow the question.
        """
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        pieces = self.iter_pieces(index, split)
        if include_answer:
            pieces = _chain(pieces, [self.encode(" " + self.sample(index, split).answer)])
        yield from rechunk(pieces, chunk_tokens)

    def num_tokens(self, index: int = 0, split: str = "test") -> int:
        """Input length of sample ``index``: prompt, context and question."""
        s = self.sample(index, split)
        context = s.noise_tokens + sum(map(len, s.facts))
        return len(s.head) + context + len(s.tail)

    def example(self, index: int, split: str = "test") -> dict:
        """The whole sample in memory (input, then the answer, scored); use :meth:`iter_chunks` when long."""
        prompt = [t for piece in self.iter_pieces(index, split) for t in piece]
        s = self.sample(index, split)
        if self.kind == "classification":
            if s.answer not in self.label_names:
                raise ValueError(f"{self.name} {split} sample {index}: its answer {s.answer!r} is not one of the task's "
                                 f"labels {self.label_names}, so it cannot be a class; use kind='causal-lm'")
            return {"input_ids": prompt, "label": self.label_names.index(s.answer), "answer": s.answer,
                    "question": s.question}
        ex = causal_example(prompt, self.encode(" " + s.answer))
        ex.update(answer=s.answer, question=s.question)
        return ex

    def record(self, index: int, split: str = "test") -> dict[str, str]:
        """Sample ``index`` in the published datasets' schema: ``input`` (the context), ``question``, ``target``."""
        s = self.sample(index, split)
        context = "".join(self.decode(piece) for piece in self.iter_context(index, split)).strip()
        return {"input": context, "question": s.question, "target": s.answer}

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, predictions, examples) -> dict[str, float]:
        """Both BABILong metrics: ``accuracy`` (the benchmark's strict check) and ``lenient``
        (lm-eval's substring match); predictions are generated texts, token ids (decoded first) or,
        for classification, label indices (their labels' names)."""
        _check_lengths(predictions, examples)
        strict, lenient = [], []
        for pred, ex in zip(predictions, examples):
            if self.kind == "classification":
                text = self.label_names[int(pred)]
            else:
                text = pred if isinstance(pred, str) else self.decode(list(pred))
            strict.append(compare_answers(ex["answer"], text, ex["question"], self.labels))
            lenient.append(lenient_match(ex["answer"], text))
        n = max(len(strict), 1)
        return {"accuracy": sum(strict) / n, "lenient": sum(lenient) / n}

    def describe(self, index: int = 0, split: str = "test") -> str:
        """The sample, with the middle of a long context elided."""
        s = self.sample(index, split)
        total = self.num_tokens(index, split)
        context = total - len(s.head) - len(s.tail)
        if total <= 4096:
            text = self.decode([t for piece in self.iter_pieces(index, split) for t in piece])
        else:
            first = next(self.iter_chunks(index, len(s.head) + 512, split))
            text = f"{self.decode(first)} [... {total - len(first) - len(s.tail)} tokens ...]{self.decode(s.tail)}"
        return f"{text}\n-> target: {s.answer!r}; {total} input tokens, {context} of context"


def write_dataset(folder: str | Path, tasks: Sequence[BabilongTask], num_samples: int, split: str = "test") -> list[Path]:
    """Write each task's first ``num_samples`` samples as ``{folder}/{length}/qa{N}.jsonl`` in the published
    schema (``input``, ``question``, ``target``), one JSON object a line; returns the files written."""
    written = []
    for task in tasks:
        path = Path(folder) / str(task.length) / f"qa{task.qa}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for i in range(num_samples):
                f.write(json.dumps(task.record(i, split), ensure_ascii=False) + "\n")
        written.append(path)
    return written


def _chain(pieces: Iterator[list[int]], extra: list[list[int]]) -> Iterator[list[int]]:
    yield from pieces
    yield from extra


for _qa in BABI_TASKS:
    def _factory(_qa=_qa, **kwargs) -> BabilongTask:
        return BabilongTask(_qa, **kwargs)
    _factory.task_class = BabilongTask
    _factory.description = f"BABILong qa{_qa}: a real bAbI {BABI_TASKS[_qa]} question hidden in background text of an exact length"
    register(f"babilong-qa{_qa}")(_factory)
