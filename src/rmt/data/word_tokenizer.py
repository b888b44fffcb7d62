"""A word-level tokenizer trained on the bundled books in about a second (no files, no network).

Small models learn facts far faster over words than over bytes: a place name is one token instead of
seven characters to compose. The papers' models read subword tokens; this is the closest thing that
needs no download. Built with the `tokenizers` library and returned as a transformers tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .tokenizer import ByteTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The bAbI vocabulary must be in the vocabulary whatever the corpus says.
_TASK_WORDS = ("Mary John Daniel Sandra Fred Jeff Bill Julie bathroom hallway garden office bedroom kitchen "
               "football apple milk moved went journeyed travelled back got grabbed picked took dropped discarded "
               "put left down gave handed passed north south east west of is the to Where What Who ? .")


@lru_cache(maxsize=4)
def word_tokenizer(vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the bundled books, deterministic for a vocab size."""
    from .corpus import bundled_files, read_text_file

    if vocab_size < 100:
        raise ValueError(f"a word tokenizer needs a vocabulary of at least 100 words, got {vocab_size}")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [read_text_file(f) for f in bundled_files()]
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(texts + [_TASK_WORDS] * 1000, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(spec: str | None) -> Any:
    """A tokenizer from a short spec: ``None``/``"byte"`` (bytes, the default), ``"word"`` or
    ``"word:N"`` (word-level over the bundled books, N words), or a transformers name or folder."""
    if spec in (None, "byte"):
        return ByteTokenizer()
    if spec == "word" or spec.startswith("word:"):
        size = spec.partition(":")[2]
        if size and not size.isdigit():
            raise ValueError(f"tokenizer {spec!r}: the vocabulary size after 'word:' must be a number")
        return word_tokenizer(int(size) if size else 8000)
    try:
        return AutoTokenizer.from_pretrained(spec)
    except OSError as err:
        raise ValueError(f"cannot load tokenizer {spec!r}: use 'byte', 'word', 'word:N', a local folder or a hub "
                         f"name ({str(err).splitlines()[0]})") from None
