"""RMTConfig: the few numbers that turn a transformer into a Recurrent Memory Transformer."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ALIGNMENTS = ("left", "right")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"RMTConfig.{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"RMTConfig.{name} must be >= {minimum}, got {value}")


class DictConfig:
    """Dataclass configs that round-trip through plain dicts (JSON, YAML) and reject unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class RMTConfig(DictConfig):
    """How memory is added to a backbone.

    Args:
        num_mem_tokens: memory vectors carried from segment to segment (``m``). 0 turns the
            wrapper into a plain segment-by-segment reader without memory (a baseline).
        segment_size: input tokens per segment, not counting memory and special tokens.
        bptt_depth: truncated backpropagation through time. ``None`` backpropagates through
            every memory transition; ``k`` lets no gradient cross more than ``k`` transitions
            (the last ``k`` are always connected); ``0`` detaches memory between all segments.
        alignment: ``"left"`` cuts segments from the start (the last one may be partial; chunked
            streaming then equals one call); ``"right"`` cuts from the end (the first one may be
            partial, the last one is full).
        cls_token_id, sep_token_id: encoder layouts only: the special tokens put around every
            segment, ``[CLS] mem segment [SEP]``. Taken from the backbone config when it has them.
        gradient_checkpointing: recompute each segment's activations in the backward pass, so a
            training step over many segments keeps only the memory between segments.
        sink_token_id: decoder layouts only: a token put first in every segment,
            ``[sink | read mem | segment | write mem]``. Pretrained decoders park much of their
            attention on whatever comes first (the attention sink of Xiao et al., 2023); without a
            sink that is a memory vector, which they then largely ignore. Give the tokenizer's BOS
            (or any fixed token) when wrapping a pretrained decoder; ``None`` (the default) is
            the original layout.
        memory: the memory mechanism, a name in `rmt.memory.MECHANISMS`: ``"rmt"``, the token memory
            of the papers (the default); ``"armt"``, the associative memory of ARMT (Rodkin et al.,
            2024): a matrix per layer written from ``num_mem_tokens`` memory tokens with the delta rule.
        d_mem: ``"armt"`` only: the size of its keys and queries before the DPFP feature map
            (None: 64); keys then have 6 * d_mem features.
        num_memory_heads: ``"armt"`` only: heads of the associative matrix (None: 1).
        memory_layers: ``"armt"`` only: the layers (indices) that get an associative memory
            (None: every layer). ``"mt"`` is the Memory Transformer baseline: memory tokens
            before every segment, the same learned ones each time, nothing carried.
        write_threshold: ``"armt"`` only: a write whose gate ``beta`` is at or below this value does
            not happen (neither the matrix nor the normaliser changes). 0 (the default) is ARMT as
            published. With a threshold, a memory that learned to close its gate on what it need
            not keep leaves its state exactly unchanged there, however long the input.
        write_penalty: ``"armt"`` only, training: every write gate ``beta`` costs ``write_penalty``
            times its value (mean over the batch) in the gradient of the loss being backpropagated,
            which pushes the gates the task does not need below ``write_threshold`` and keeps them
            there with a margin. It is added in the backward pass only (``out.loss`` does not
            include it) and reaches the gates that the loss reaches (not those cut off by
            ``bptt_depth``). It is not scaled with the loss: with gradient accumulation over k
            micro-batches each adds it, so the cost per step is k times larger. 0: no cost.
        bidirectional_memory: decoders: every memory position sees all of its own block (read or
            write; ARMT's memory tokens) while sequence tokens stay causal, as in the NeurIPS 2022
            RMT (its Fig. 6(d)). Off by default (pretrained decoders were trained causal throughout).
        xl_cache: decoders: each segment also attends to the cached keys and values of the previous
            ``xl_cache`` token positions (Transformer-XL; never backpropagated). With
            ``num_mem_tokens=0`` the Tr-XL baseline, with token memory Tr-XL + RMT. None: no cache.
    """

    num_mem_tokens: int = 10
    segment_size: int = 128
    bptt_depth: Optional[int] = None
    alignment: str = "left"
    cls_token_id: Optional[int] = None
    sep_token_id: Optional[int] = None
    gradient_checkpointing: bool = False
    sink_token_id: Optional[int] = None
    memory: str = "rmt"
    d_mem: Optional[int] = None
    num_memory_heads: Optional[int] = None
    memory_layers: Optional[list[int]] = None
    write_threshold: float = 0.0
    write_penalty: float = 0.0
    bidirectional_memory: bool = False
    xl_cache: Optional[int] = None

    def __post_init__(self) -> None:
        from .memory import MECHANISMS

        if self.memory not in MECHANISMS:
            raise ValueError(f"RMTConfig.memory must be one of {sorted(MECHANISMS)}, got {self.memory!r}")
        for name in ("d_mem", "num_memory_heads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.memory_layers is not None:
            if not isinstance(self.memory_layers, (list, tuple)) or not self.memory_layers:
                raise TypeError(f"RMTConfig.memory_layers must be a non-empty list of layer indices, got {self.memory_layers!r}")
            for index in self.memory_layers:
                _check_int("memory_layers[]", index, 0)
            self.memory_layers = list(self.memory_layers)
        for name, upper, bound in (("write_threshold", 1.0, "in [0, 1)"), ("write_penalty", math.inf, ">= 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
                raise ValueError(f"RMTConfig.{name} must be a number {bound}, got {value!r}")
            setattr(self, name, float(value))
        if self.memory != "armt":
            given = [n for n in ("d_mem", "num_memory_heads", "memory_layers") if getattr(self, n) is not None]
            given += [n for n in ("write_threshold", "write_penalty") if getattr(self, n)]
            if given:
                raise ValueError(f"RMTConfig: {', '.join(given)} are options of memory='armt', not of memory={self.memory!r}")
        _check_int("num_mem_tokens", self.num_mem_tokens, 0)
        _check_int("segment_size", self.segment_size, 1)
        if self.bptt_depth is not None:
            _check_int("bptt_depth", self.bptt_depth, 0)
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"RMTConfig.alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        for name in ("cls_token_id", "sep_token_id", "sink_token_id"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0)
        if self.xl_cache is not None:
            _check_int("xl_cache", self.xl_cache, 1)
        if not isinstance(self.bidirectional_memory, bool):
            raise TypeError("RMTConfig.bidirectional_memory must be a bool")
        if not isinstance(self.gradient_checkpointing, bool):
            raise TypeError("RMTConfig.gradient_checkpointing must be a bool")

    def to_json_file(self, path: str | Path, **extra: Any) -> None:
        Path(path).write_text(json.dumps({**self.to_dict(), **extra}, indent=2) + "\n")
