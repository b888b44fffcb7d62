"""Memorization tasks of the AAAI 2024 RMT report ("Scaling Transformer to 1M tokens and beyond").

Facts hidden in real background text, a question at the end:

- ``memorize``: one qa1 fact at the very start;
- ``detect-and-memorize``: one qa1 fact at a random position;
- ``reasoning``: two qa4 direction facts at random positions; the question needs the right one.

The input is exactly ``length`` tokens (or ``num_segments * segment_size``). The answer is one of
the six places: a label (``kind="classification"``, 6 labels) or text (``kind="causal-lm"``).

``decoy_rate=r`` adds about ``r`` decoys per segment: sentences of the background itself that name
one of the six places ("...open the garden door for you."), inserted whole at random sentence
boundaries before and after the facts (as many as fit). The background holds such sentences rarely
(the bundled books: about 4 per 1,024 segments of 32 words), so a model trained on short inputs may
learn to store any place word it reads; decoys teach it, on short inputs, to store only the facts.
``decoy_facts=f`` (memorize, detect & memorize) makes a share ``f`` of the decoys facts about the
other people ("John went to the office." when the question asks where Mary is), as BABILong's qa1
has: a memory that stores every fact must then store it under the person, and a place sentence of
the prose written by mistake no longer lands where the question looks. Off by default; the examples
without decoys are unchanged. The books name some places far more than others (the bundled ones:
office and garden in 68 of their 78 place sentences, never bathroom or hallway), so a detector
trained on their decoys can learn to drop a place word rather than a sentence form;
``decoy_places="uniform"`` gives each decoy a place drawn uniformly from the six, put in place of the
sentence's own place words ("...open the hallway door for you.").

``fact_segments=(1, 3)`` puts fact k inside segment ``fact_segments[k]`` (counted from 1) instead
of at a random position: the examples of the report's Fig. 6 (fact 1 in segment 1, nothing in
segment 2, fact 2 in segment 3, the question in segment 4). Without it the examples are the
task's own distribution, unchanged. `spans` says where the facts and the question are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from random import Random

from .babi import MOVE_VERBS, PEOPLE, PLACES, answer_matches, generate_story
from .base import Task, _check_lengths, parse_length, register
from ..data.corpus import BackgroundText, background_text

KINDS = ("classification", "causal-lm")
DECOY_PLACES = ("book", "uniform")
_PLACE_WORD = re.compile(r"\b(?:" + "|".join(PLACES) + r")\b", re.IGNORECASE)
PLACEMENT_TRIES = 1000  # facts go in at sentence boundaries: a draw can push one past its segment's end


class _MemoryTask(Task):
    label_names = sorted(PLACES)
    qa = 1
    num_facts = 1
    fact_at_start = False

    def __init__(self, tokenizer=None, seed: int = 0, length: int | str | None = None,
                 num_segments: int | None = None, segment_size: int | None = None,
                 kind: str = "classification", background: str | BackgroundText | None = None,
                 fact_segments: Sequence[int] | None = None, decoy_rate: float = 0.0,
                 decoy_facts: float = 0.0, decoy_places: str = "book") -> None:
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
        self.segment_size = segment_size
        self.fact_segments = self._check_fact_segments(fact_segments, num_segments)
        self.decoy_rate = self._check_decoy_rate(decoy_rate)
        self._decoys = _place_sentences(self.background) if self.decoy_rate else []  # texts
        if isinstance(decoy_facts, bool) or not isinstance(decoy_facts, (int, float)) or not 0 <= decoy_facts <= 1:
            raise ValueError(f"decoy_facts must be a share of the decoys in [0, 1], got {decoy_facts!r}")
        if decoy_facts and (self.qa != 1 or not self.decoy_rate):
            raise ValueError("decoy_facts needs decoy_rate > 0 and a task whose fact says where a person is "
                             "(memorize, detect-and-memorize)")
        self.decoy_facts = float(decoy_facts)
        if decoy_places not in DECOY_PLACES:
            raise ValueError(f"decoy_places must be one of {DECOY_PLACES} (the book's own place words, or one "
                             f"drawn uniformly from the six), got {decoy_places!r}")
        self.decoy_places = decoy_places

    def _check_decoy_rate(self, rate: float) -> float:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
            raise ValueError(f"decoy_rate must be a number >= 0 (decoys per segment), got {rate!r}")
        if rate and self.segment_size is None:
            raise ValueError("decoy_rate counts decoys per segment: give num_segments and segment_size, not length")
        if rate and self.fact_segments is not None:
            raise ValueError("decoy_rate and fact_segments do not go together: fact_segments lays out examples "
                             "for a figure, decoys are for training")
        return float(rate)

    def _check_fact_segments(self, fact_segments: Sequence[int] | None, num_segments: int | None) -> tuple | None:
        if fact_segments is None:
            return None
        if num_segments is None:
            raise ValueError("fact_segments needs num_segments and segment_size: facts are placed in segments")
        chosen = tuple(int(s) for s in fact_segments)
        if len(chosen) != self.num_facts:
            raise ValueError(f"{self.name} has {self.num_facts} fact(s): fact_segments must name {self.num_facts} "
                             f"segment(s), got {list(chosen)}")
        if any(not 1 <= s <= num_segments for s in chosen) or list(chosen) != sorted(chosen):
            raise ValueError(f"fact_segments must be segment numbers in 1..{num_segments} (counted from 1), in "
                             f"order, got {list(chosen)}")
        if self.fact_at_start and chosen != (1,) * self.num_facts:
            raise ValueError(f"{self.name} puts its fact at the start of the input: fact_segments can only be "
                             f"{[1] * self.num_facts}, got {list(chosen)}")
        return chosen

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        return {"num_segments": num_segments, "segment_size": segment_size}  # exactly that many tokens

    def example(self, index: int, split: str = "train") -> dict:
        """``length`` tokens: noise with the facts, the question; (causal LM) then the answer, scored."""
        context, _, question, answer, label = self._draw(index, split)
        ids = context + question
        if self.kind == "classification":
            return {"input_ids": ids, "label": self.label_names.index(label)}
        return {"input_ids": ids + answer, "labels": [-100] * len(ids) + answer, "answer": label}

    def spans(self, index: int, split: str = "train") -> dict:
        """Where the parts of ``example(index, split)`` are, as ``[start, end)`` token offsets:
        ``facts`` (one per fact, in story order, with its ``text``), ``question`` and ``answer``
        (causal LM; None for classification)."""
        context, facts, question, answer, _ = self._draw(index, split)
        q = len(context)
        return {"facts": facts, "question": (q, q + len(question)),
                "answer": (q + len(question), q + len(question) + len(answer)) if answer else None}

    def _draw(self, index: int, split: str) -> tuple:
        """(context ids, the facts' spans, question ids, answer ids, the answer) of one example."""
        rng = self.rng(index, split)
        facts, q = generate_story(self.qa, rng, num_facts=1 if self.qa == 1 else None).questions()[-1]
        fact_ids = [self.encode(" " + f.text) for f in facts]
        question = self.encode(" " + q.text)
        answer = self.encode(" " + q.answer) if self.kind == "causal-lm" else []
        noise = self.length - sum(map(len, fact_ids)) - len(question) - len(answer)
        if noise < 0:
            raise ValueError(f"length={self.length} is too short for {self.name}: the facts, question and answer "
                             f"take {self.length - noise} tokens; use a length of at least that")
        if self.fact_segments is not None and not self.fact_at_start:
            context, starts = self._placed(rng, noise, fact_ids, len(question) + len(answer))
        else:
            decoys = self._draw_decoys(rng, noise, facts[0].text.split()[0]) if self.decoy_rate else []
            noise -= sum(len(d) for d in decoys)
            if self.fact_at_start:
                positions = [0] * len(fact_ids)
            else:
                positions = sorted(rng.randint(0, noise) for _ in fact_ids)
            # facts and decoys go in together, in the order of their offsets in the background
            pieces = sorted([(p, 0, k) for k, p in enumerate(positions)]
                            + [(rng.randint(0, noise), 1, k) for k in range(len(decoys))])
            ids = [(fact_ids, decoys)[kind][k] for _, kind, k in pieces]
            offsets = [p for p, _, _ in pieces]
            context = self._context(noise, ids, offsets, rng.getrandbits(64))
            found = _locate(context, ids, offsets)
            starts = [s for s, (_, kind, _) in zip(found, pieces) if kind == 0]
        spans = [{"text": f.text, "start": s, "end": s + len(ids)} for f, ids, s in zip(facts, fact_ids, starts)]
        return context, spans, question, answer, q.answer

    def _draw_decoys(self, rng: Random, room: int, person: str) -> list[list[int]]:
        """About ``decoy_rate`` decoys per segment (rounded at random), as many as fit in ``room``: place
        sentences of the background, and a share ``decoy_facts`` of facts about people other than ``person``."""
        expected = self.decoy_rate * self.length / self.segment_size
        count = int(expected) + (rng.random() < expected - int(expected))
        chosen = []
        for _ in range(count):
            if self.decoy_facts and rng.random() < self.decoy_facts:
                other = rng.choice([p for p in PEOPLE if p != person])
                decoy = self.encode(f" {other} {rng.choice(MOVE_VERBS)} to the {rng.choice(PLACES)}.")
            else:
                text = self._decoys[rng.randrange(len(self._decoys))]
                if self.decoy_places == "uniform":
                    text = _with_place(text, rng.choice(PLACES))
                decoy = self.encode(text)
            if len(decoy) <= room:
                chosen.append(decoy)
                room -= len(decoy)
        return chosen

    def _context(self, noise: int, fact_ids: list, positions: list, seed: int) -> list[int]:
        return [t for piece in self.background.iter_with_facts(noise, fact_ids, positions, seed) for t in piece]

    def _placed(self, rng: Random, noise: int, fact_ids: list, tail: int) -> tuple[list[int], list[int]]:
        """Context with fact k inside segment ``fact_segments[k]``, and the facts' starts: draw offsets
        in the segments and keep the first draw whose facts (moved to sentence boundaries) stay in."""
        S = self.segment_size
        bounds = [((s - 1) * S, s * S) for s in self.fact_segments]
        last = self.length // S
        for seg in sorted(set(self.fact_segments)):
            need = sum(len(f) for f, s in zip(fact_ids, self.fact_segments) if s == seg) + (tail if seg == last else 0)
            if need > S:
                raise ValueError(f"{self.name}: the facts placed in segment {seg}" + (" and the question" if seg == last else "")
                                 + f" take {need} tokens, more than a segment of {S}")
        for _ in range(PLACEMENT_TRIES):
            positions, before = [], 0
            for (lo, hi), fact in zip(bounds, fact_ids):
                lo = max(lo - before, positions[-1] if positions else 0)  # noise offsets: the facts before are not noise
                hi = min(hi - before - len(fact), noise)
                if lo > hi:
                    break
                positions.append(rng.randint(lo, hi))
                before += len(fact)
            else:
                context = self._context(noise, fact_ids, positions, rng.getrandbits(64))
                starts = _locate(context, fact_ids, positions)
                if all(lo <= s and s + len(f) <= hi for (lo, hi), s, f in zip(bounds, starts, fact_ids)):
                    return context, starts
        raise ValueError(f"{self.name}: no placement of the facts in segments {list(self.fact_segments)} of {S} tokens "
                         f"found in {PLACEMENT_TRIES} draws (the background's sentences may be longer than a segment)")

    def score(self, predictions, examples) -> dict[str, float]:
        """Accuracy: predicted label ints (classification) or answer ids/text (causal LM)."""
        if self.kind == "classification":
            return super().score(predictions, examples)
        _check_lengths(predictions, examples)
        hits = [answer_matches(p, e["answer"], self.tokenizer) for p, e in zip(predictions, examples)]
        return {"accuracy": sum(hits) / max(len(hits), 1)}


def _place_sentences(background: BackgroundText) -> list[str]:
    """Every sentence of ``background`` that names one of the six places."""
    sentences = (background.sentence(i) for i in range(len(background)))
    found = [text for text in sentences if _PLACE_WORD.search(text)]
    if not found:
        raise ValueError(f"decoy_rate needs sentences naming a place ({', '.join(PLACES)}) in the background "
                         f"text, and {background.name!r} has none; use another background or decoy_rate=0")
    return found


def _with_place(text: str, place: str) -> str:
    """``text`` with each of its place words replaced by ``place``, capitalised where the word was."""
    return _PLACE_WORD.sub(lambda m: place.capitalize() if m.group()[0].isupper() else place, text)


def _locate(context: list[int], fact_ids: list, positions: list) -> list[int]:
    """Where each fact starts in `context`: fact k went in at the first sentence boundary at or after
    noise offset ``positions[k]``, so at or after that offset plus the facts before it."""
    starts, before, end = [], 0, 0
    for fact, position in zip(fact_ids, positions):
        i = max(position + before, end)
        while context[i : i + len(fact)] != fact:
            if i + len(fact) >= len(context):
                raise RuntimeError(f"fact {fact} not found in its context; please report this example")
            i += 1
        starts.append(i)
        before, end = before + len(fact), i + len(fact)
    return starts


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
    num_facts = 2
