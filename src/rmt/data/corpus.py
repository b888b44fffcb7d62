"""Background text: real sentences to hide facts in, and documents for language modelling.

``background_text()`` returns a :class:`BackgroundText` that gives an exact number of tokens of
real text from a seeded sentence, lazily: it tokenizes one sentence at a time and cycles through
the corpus, so a million-token sample never sits in memory whole.
"""

from __future__ import annotations

import functools
import gzip
import random
import re
from array import array
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .tokenizer import ByteTokenizer

# A sentence ends at . ! or ? (plus closing quotes or brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d)\]]*(?= )")
_WHITESPACE = re.compile(r"\s+")
_TEXT_SUFFIXES = (".txt", ".txt.gz", ".md")


def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 file, gunzipped if its name ends in ``.gz``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _text_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_TEXT_SUFFIXES))
        if not files:
            raise ValueError(f"no text files ({', '.join(_TEXT_SUFFIXES)}) under {path}")
        return files
    return [path]


class BackgroundText:
    """A corpus split into sentences, read as a stream of token ids from a seeded sentence.

    Whitespace is collapsed to single spaces and every sentence keeps its leading space, so
    sentences tokenized one at a time join into fluent text for byte-level and BPE tokenizers alike.
    """

    def __init__(self, texts: str | Sequence[str], tokenizer=None, name: str = "custom") -> None:
        if isinstance(texts, str):
            texts = [texts]
        # One leading space per document: every sentence then starts with a space (BPE-friendly).
        text = "".join(" " + _WHITESPACE.sub(" ", t).strip() for t in texts if t.strip())
        if not text:
            raise ValueError("the background text is empty; pass files or documents with some text")
        self.text = text
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self.name = name
        # Sentence i is text[starts[i]:starts[i + 1]]; an int64 array keeps this compact.
        self._starts = array("q", [0])
        self._starts.extend(m.end() for m in _SENTENCE_END.finditer(text) if m.end() < len(text))
        self._starts.append(len(text))
        self._lo, self._hi = 0, len(self._starts) - 1
        self._byte_level = isinstance(self.tokenizer, ByteTokenizer)

    def __len__(self) -> int:
        """Number of sentences."""
        return self._hi - self._lo

    def __repr__(self) -> str:
        return f"BackgroundText({self.name!r}, sentences={len(self)}, tokenizer={type(self.tokenizer).__name__})"

    def sentence(self, i: int) -> str:
        """The ``i``-th sentence (with its leading space), counting cyclically."""
        i = self._lo + i % len(self)
        return self.text[self._starts[i] : self._starts[i + 1]]

    def encode(self, text: str) -> list[int]:
        if self._byte_level:
            return list(text.encode("utf-8"))
        # a sentence longer than the model's context is cut into segments: no transformers warning
        quiet = {"verbose": False} if isinstance(self.tokenizer, PreTrainedTokenizerBase) else {}
        return list(self.tokenizer.encode(text, add_special_tokens=False, **quiet))

    def with_tokenizer(self, tokenizer) -> "BackgroundText":
        """The same text (shared, not copied) read with another tokenizer (``None``: bytes)."""
        view = object.__new__(BackgroundText)
        view.__dict__.update(self.__dict__)
        view.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        view._byte_level = isinstance(view.tokenizer, ByteTokenizer)
        return view

    def subset(self, start: float, end: float) -> "BackgroundText":
        """A view of the sentences in the fraction ``[start, end)`` of the corpus (for splits)."""
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"need 0 <= start < end <= 1, got start={start}, end={end}")
        view = object.__new__(BackgroundText)
        view.__dict__.update(self.__dict__)
        n = len(self)
        view._lo, view._hi = self._lo + int(start * n), self._lo + max(int(end * n), int(start * n) + 1)
        return view

    def start_sentence(self, seed: int | str) -> int:
        """The sentence a stream seeded with ``seed`` starts at."""
        return random.Random(f"background|{seed}").randrange(len(self))

    def iter_sentences(self, seed: int | str = 0, min_tokens: int = 1) -> Iterator[list[int]]:
        """Token ids of one sentence after another from a seeded start, cycling forever; sentences
        shorter than ``min_tokens`` are skipped (BABILong skips those under 10 tokens)."""
        i = self.start_sentence(seed)
        skipped = 0
        while True:
            ids = self.encode(self.sentence(i))
            if len(ids) >= max(min_tokens, 1):
                skipped = 0
                yield ids
            else:
                skipped += 1
                if skipped > len(self):
                    raise ValueError(f"no sentence of the background text has {min_tokens} or more tokens")
            i += 1

    def iter_tokens(self, num_tokens: int, seed: int | str = 0, chunk_tokens: int = 4096) -> Iterator[list[int]]:
        """Exactly ``num_tokens`` ids of text, in chunks of ``chunk_tokens`` (the last may be shorter)."""
        if num_tokens < 0 or chunk_tokens <= 0:
            raise ValueError(f"need num_tokens >= 0 and chunk_tokens > 0, got {num_tokens}, {chunk_tokens}")
        yield from rechunk(_take(self.iter_sentences(seed), num_tokens), chunk_tokens)

    def tokens(self, num_tokens: int, seed: int | str = 0) -> list[int]:
        """Exactly ``num_tokens`` ids of text from a seeded sentence (cut mid-sentence at the end)."""
        return [t for piece in _take(self.iter_sentences(seed), num_tokens) for t in piece]

    def iter_with_facts(self, num_tokens: int, facts: Sequence[Sequence[int]], positions: Sequence[int],
                        seed: int | str = 0, min_sentence_tokens: int = 1) -> Iterator[list[int]]:
        """Exactly ``num_tokens`` ids of text with ``facts`` (id lists) inserted, in order.

        Fact ``k`` goes in at the first sentence boundary at or after token offset ``positions[k]``
        of the text (offset 0: before any text; ``num_tokens``: after all of it), so facts never
        split a sentence except the last one, which is cut to make the length exact. Yields pieces
        (sentences and facts) lazily; join them or pass them to :func:`rechunk`. Sentences shorter
        than ``min_sentence_tokens`` are left out.
        """
        if len(facts) != len(positions):
            raise ValueError(f"got {len(facts)} facts but {len(positions)} positions")
        if list(positions) != sorted(positions) or any(not 0 <= p <= num_tokens for p in positions):
            raise ValueError(f"positions must be sorted and within [0, {num_tokens}], got {list(positions)}")
        k, emitted = 0, 0
        sentences = self.iter_sentences(seed, min_sentence_tokens)
        while True:
            while k < len(facts) and positions[k] <= emitted:
                yield list(facts[k])
                k += 1
            if emitted >= num_tokens:
                break
            piece = next(sentences)[: num_tokens - emitted]
            emitted += len(piece)
            yield piece
        for fact in facts[k:]:  # positions past the last boundary: after the text
            yield list(fact)


def _take(pieces: Iterator[list[int]], num_tokens: int) -> Iterator[list[int]]:
    """The first ``num_tokens`` ids of a stream of pieces, the last piece cut to fit."""
    left = num_tokens
    while left > 0:
        piece = next(pieces)
        yield piece[:left]
        left -= len(piece[:left])


def rechunk(pieces: Iterator[list[int]], chunk_tokens: int) -> Iterator[list[int]]:
    """Regroup a stream of id lists into lists of exactly ``chunk_tokens`` (the last may be shorter)."""
    buf: list[int] = []
    for piece in pieces:
        buf.extend(piece)
        while len(buf) >= chunk_tokens:
            yield buf[:chunk_tokens]
            del buf[:chunk_tokens]
    if buf:
        yield buf


def bundled_files() -> list[Path]:
    """The public-domain books shipped with the package (see ``rmt/data/bundled/README.md``)."""
    root = resources.files("rmt.data") / "bundled"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt.gz"))


@functools.lru_cache(maxsize=1)
def _bundled() -> BackgroundText:
    # Read and split once per process: every task built with the default source shares the text.
    return BackgroundText([read_text_file(p) for p in bundled_files()], name="bundled")


def background_text(
    source: str | Path | Sequence[str | Path] | None = None,
    tokenizer=None,
    *,
    text_field: str = "text",
    max_chars: int = 20_000_000,
) -> BackgroundText:
    """Real text to put facts in, as a :class:`BackgroundText`.

    Args:
        source: ``None`` for the bundled public-domain books; a text file, a directory of text
            files (``.txt``, ``.txt.gz``, ``.md``) or a list of them; or a ``datasets`` name such
            as ``"deepmind/pg19"`` (needs network; streamed, the first ``max_chars`` characters).
        tokenizer: any tokenizer with ``encode(text, add_special_tokens=False)``; default bytes.
        text_field: the column holding the text, for a ``datasets`` source.
        max_chars: how much of a ``datasets`` source to read.
    """
    if source is None:
        return _bundled().with_tokenizer(tokenizer)
    if isinstance(source, (list, tuple)):
        paths = [Path(s) for s in source]
    elif Path(source).exists():
        paths = [Path(source)]
    else:
        return _from_datasets(str(source), tokenizer, text_field, max_chars)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"background text files not found: {missing}")
    files = [f for p in paths for f in _text_files(p)]
    return BackgroundText([read_text_file(f) for f in files], tokenizer, name=",".join(str(p) for p in paths))


def _from_datasets(name: str, tokenizer, text_field: str, max_chars: int) -> BackgroundText:
    """Stream the first ``max_chars`` characters of a hub dataset's train split."""
    if "/" not in name:
        raise ValueError(
            f"background text source {name!r} is neither an existing path nor a datasets name "
            "like 'deepmind/pg19'; pass None for the bundled books"
        )
    import datasets  # imported here: loading it costs a second and only this path needs it

    stream = datasets.load_dataset(name, split="train", streaming=True)
    texts, total = [], 0
    for row in stream:
        if text_field not in row:
            raise ValueError(f"dataset {name!r} has no field {text_field!r}; fields: {sorted(row)}")
        texts.append(row[text_field])
        total += len(row[text_field])
        if total >= max_chars:
            break
    return BackgroundText(texts, tokenizer, name=name)
