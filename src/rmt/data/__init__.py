"""Tokenizers and corpora for the tasks: a byte tokenizer, background text, collation helpers."""

from .collate import collate_causal_lm, collate_classification
from .corpus import BackgroundText, background_text, bundled_files, read_text_file, rechunk
from .tokenizer import ByteTokenizer, pad_id, sep_id

__all__ = [
    "BackgroundText",
    "ByteTokenizer",
    "background_text",
    "bundled_files",
    "collate_causal_lm",
    "collate_classification",
    "pad_id",
    "read_text_file",
    "rechunk",
    "sep_id",
]
