"""A byte-level tokenizer that needs no files: the default for synthetic tasks and tests."""

from __future__ import annotations

from typing import Iterable


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then a few special tokens.

    The interface is the subset of a Hugging Face tokenizer that the tasks use
    (``encode(text, add_special_tokens=False)``, ``decode``, the ``*_token_id`` attributes and
    ``vocab_size``), so any ``transformers`` tokenizer can stand in for it.
    """

    special_tokens: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<sep>", "<cls>", "<mask>")

    def __init__(self) -> None:
        self.pad_token_id = 256
        self.bos_token_id = 257
        self.eos_token_id = 258
        self.sep_token_id = 259  # also the "start to generate" marker of the algorithmic tasks
        self.cls_token_id = 260
        self.mask_token_id = 261
        self.vocab_size = 256 + len(self.special_tokens)
        self.pad_token, self.bos_token, self.eos_token, self.sep_token, self.cls_token, self.mask_token = (
            self.special_tokens
        )

    @property
    def all_special_ids(self) -> list[int]:
        return list(range(256, self.vocab_size))

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` wrapped in ``<bos> ... <eos>``."""
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD, specials ``<name>``."""
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
                continue
            if not 256 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if not skip_special_tokens:
                out.append(self.special_tokens[i - 256])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos token (GPT-2 has no pad), else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def sep_id(tokenizer) -> int:
    """The "start to generate" marker: the sep token, else bos, else eos."""
    for attr in ("sep_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has no sep, bos or eos token to mark the start of the target; "
                     "set tokenizer.sep_token or use rmt.data.ByteTokenizer")
