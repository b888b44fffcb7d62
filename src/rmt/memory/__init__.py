"""Memory mechanisms, one module each, and the registry that `RMTConfig(memory=...)` names."""

from .associative import AssociativeMemory
from .base import BackboneInfo, MemoryMechanism, SegmentInputs, State
from .token import MemoryTransformer, TokenMemory

MECHANISMS: dict[str, type[MemoryMechanism]] = {
    TokenMemory.name: TokenMemory,
    AssociativeMemory.name: AssociativeMemory,
    MemoryTransformer.name: MemoryTransformer,
}


def get_mechanism(name: str) -> type[MemoryMechanism]:
    try:
        return MECHANISMS[name]
    except KeyError:
        raise ValueError(f"unknown memory mechanism {name!r}; known: {', '.join(sorted(MECHANISMS))}") from None


__all__ = ["MECHANISMS", "AssociativeMemory", "BackboneInfo", "MemoryMechanism", "MemoryTransformer", "SegmentInputs", "State", "TokenMemory", "get_mechanism"]
