"""Memory mechanisms, one module each, and the registry that `RMTConfig(memory=...)` names."""

from .associative import AssociativeMemory
from .base import BackboneInfo, MemoryMechanism, SegmentInputs, State
from .token import MemoryTransformer, TokenMemory
from .xl import XLCache, XLState, wrap_with_cache

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


def extra_positions(config: object, is_causal: bool) -> int:
    """Positions a segment takes besides its tokens: the mechanism's layout, and the XL cache if any."""
    return get_mechanism(config.memory).extra_positions(config, is_causal) + (config.xl_cache or 0)


__all__ = ["extra_positions", "MECHANISMS", "AssociativeMemory", "BackboneInfo", "MemoryMechanism", "MemoryTransformer", "XLCache", "XLState", "wrap_with_cache", "SegmentInputs", "State", "TokenMemory", "get_mechanism"]
