"""Tokenizers and corpora for the tasks: a byte tokenizer, background text, collation helpers."""

from .collate import collate_causal_lm, collate_classification
from .corpus import BackgroundText, background_text, bundled_files, read_text_file, rechunk
from .tokenizer import ByteTokenizer, pad_id, sep_id
from .word_tokenizer import load_tokenizer, word_tokenizer

__all__ = [
    "BackgroundText",
    "ByteTokenizer",
    "background_text",
    "bundled_files",
    "collate_causal_lm",
    "collate_classification",
    "load_tokenizer",
    "pad_id",
    "read_text_file",
    "rechunk",
    "sep_id",
    "word_tokenizer",
]
