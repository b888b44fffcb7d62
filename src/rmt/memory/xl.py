"""A Transformer-XL cache for decoders (Dai et al., 2019), around any memory mechanism.

Each segment also attends to the keys and values of the previous ``xl_cache`` *token* positions
(of the previous segment or segments; memory and sink positions are not cached, as in the NeurIPS
2022 paper's Tr-XL + RMT), held in the backbone's own cache type and never backpropagated
(Tr-XL's stop-gradient). ``num_mem_tokens=0`` with a cache is the Transformer-XL baseline; with
token memory it is Tr-XL + RMT.

Positions: a segment's positions continue after the cached tokens, ``c .. c + L - 1`` for a row
with ``c`` cached tokens. A sink token (``sink_token_id``) stays a sink: it sits at position 0,
sees only itself (not the cache), and the cache follows it at ``1 .. c``, so a cache that holds
everything reads like the backbone on ``[sink | the whole input]``. With rotary positions
(Llama-style) the kept keys are rotated after each segment so that the cache always sits at
``0 .. c - 1`` (``1 .. c`` after a sink): relative distances are then exact and
positions stay bounded however long the read. With absolute position tables (GPT-2-style) a
key keeps the position it was computed at, and the position check counts the cache.

Decoding (`generate`) reads the cache the same way: inside `decoding`'s context a forward pre-hook
on the backbone puts the cache in front of the backbone's own KV cache and mask, and moves the
decoded positions to ``c ..`` as in `segment`; at segment boundaries `forward` updates the cache.

The state is `XLState(inner, keys, values, length)`: the inner mechanism's state and, per layer,
the cache left-padded to ``xl_cache`` slots with each row's number of cached tokens.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch import nn

from .base import BackboneInfo, MemoryMechanism, Run, block_attention

ROTARY_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2", "granite")  # rotate_half convention


class XLState(NamedTuple):
    inner: Any  # the wrapped mechanism's state
    keys: torch.Tensor  # (B, layers, kv_heads, N, head_dim), left-padded
    values: torch.Tensor  # (B, layers, kv_heads, N, head_dim)
    length: torch.Tensor  # (B,) cached tokens per row


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class XLCache(MemoryMechanism):
    """The cache of the last `xl_cache` token positions' keys and values, around `inner`."""

    name = "xl"

    def __init__(self, inner: MemoryMechanism, config: Any, backbone: BackboneInfo):
        super().__init__(config, backbone)  # decoders only: the wrapper refuses an encoder before this
        self.inner = inner
        self.size = config.xl_cache
        self.sink = int(backbone.num_special == 1)  # a sink first in every segment: kept at position 0, before the cache
        self.token_start = inner.token_start
        cfg = backbone.base.config
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.head_dim = getattr(cfg, "head_dim", None) or backbone.hidden_size // heads
        self.layers = cfg.num_hidden_layers
        rotary = [m for _, m in backbone.base.named_modules() if type(m).__name__.endswith("RotaryEmbedding")]
        if rotary and cfg.model_type not in ROTARY_TYPES:
            raise ValueError(f"xl_cache re-bases cached keys with Llama's rotary convention, and "
                             f"{cfg.model_type!r} is not known to use it (known: {', '.join(ROTARY_TYPES)})")
        self._rotary = rotary[0] if rotary else None  # not a submodule of ours: the backbone owns it
        self._model = [backbone.base]  # a plain list: the backbone is not ours to save; decoding hooks it
        params = inspect.signature(backbone.base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def memory_embeddings(self) -> Optional[torch.Tensor]:
        return self.inner.memory_embeddings()

    def init_state(self, batch_size: int) -> XLState:
        ref = next(self.parameters(), None)
        ref = ref if ref is not None else torch.zeros(())
        shape = (batch_size, self.layers, self.kv_heads, self.size, self.head_dim)
        keys = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        return XLState(self.inner.init_state(batch_size), keys, keys.clone(),
                       torch.zeros(batch_size, dtype=torch.long, device=ref.device))

    def _cache(self, state: XLState) -> Any:
        from transformers import DynamicCache

        pairs = [(state.keys[:, i].detach(), state.values[:, i].detach()) for i in range(self.layers)]
        return DynamicCache(ddp_cache_data=pairs)

    def _extend(self, state: XLState, mask: torch.Tensor, sink: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The caller's segment mask (2-D (b, L) or 4-D (b, 1, L, L)) with the cache's slots in front.
        `sink` (b, L) marks the sink's rows, which see none of the cache (a 2-D mask becomes 4-D then)."""
        N = self.size
        slots = torch.arange(N, device=mask.device).view(1, -1) >= (N - state.length).view(-1, 1)  # (b, N)
        if mask.dim() == 2 and sink is None:
            return torch.cat([slots.to(mask.dtype), mask], dim=1)
        if mask.dim() == 2:
            mask = block_attention(mask, [], 0, state.keys.dtype)  # causal, padding masked out
        b, _, L, _ = mask.shape
        hidden = ~slots.view(b, 1, 1, N)
        if sink is not None:
            hidden = hidden | sink.view(b, 1, L, 1)
        cache = torch.zeros(b, 1, L, N, dtype=mask.dtype, device=mask.device)
        cache = cache.masked_fill(hidden, torch.finfo(mask.dtype).min)
        return torch.cat([cache, mask], dim=-1)

    def segment(self, run: Run, embeds: torch.Tensor, lengths: torch.Tensor, state: XLState,
                specials: Optional[torch.Tensor]) -> tuple[Any, XLState]:
        captured = {}

        def with_cache(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
            L = inputs_embeds.shape[1]
            positions = state.length.view(-1, 1) + torch.arange(L, device=inputs_embeds.device).view(1, -1)  # (b, L)
            sink = None
            if self.sink:  # every row's sink is its first position (`arrange` puts it there): position 0, no cache
                sink = torch.zeros_like(positions, dtype=torch.bool)
                sink[:, 0] = True
                positions = positions.masked_fill(sink, 0)
            out = run(inputs_embeds=inputs_embeds, attention_mask=self._extend(state, attention_mask, sink),
                      position_ids=positions, use_cache=True, **{self._cache_kwarg: self._cache(state)}, **kwargs)
            captured["cache"] = getattr(out, "cache", None) or out.past_key_values
            captured["width"] = L
            return out

        out, inner = self.inner.segment(with_cache, embeds, lengths, state.inner, specials)
        keys, values, length = self._keep(state, captured["cache"], lengths)
        return out, XLState(inner, keys, values, length)

    def _keep(self, state: XLState, cache: Any, lengths: torch.Tensor) -> tuple:
        """The last `size` real token positions of [cache | this segment's tokens], left-padded, keys re-based."""
        N, p = self.size, self.token_start
        b = lengths.shape[0]
        device = lengths.device
        layers = cache.layers if hasattr(cache, "layers") else None
        all_keys = torch.stack([(layers[i].keys if layers else cache[i][0]) for i in range(self.layers)], 1)  # (b, Ly, H, N+L, dh)
        all_values = torch.stack([(layers[i].values if layers else cache[i][1]) for i in range(self.layers)], 1)
        total = all_keys.shape[3]
        j = torch.arange(total, device=device).view(1, -1)  # (1, N + L)
        old = (j < N) & (j >= (N - state.length).view(-1, 1))
        new = (j >= N + p) & (j < (N + p + lengths).view(-1, 1))
        valid = old | new  # (b, N + L)
        order = torch.argsort(valid.to(torch.int8), dim=1, stable=True)[:, -N:]  # real entries last, in order
        count = valid.sum(1).clamp(max=N)  # (b,)
        gather = order.view(b, 1, 1, N, 1).expand(-1, self.layers, self.kv_heads, -1, self.head_dim)
        keys = all_keys.gather(3, gather).detach()
        values = all_values.gather(3, gather).detach()
        empty = (torch.arange(N, device=device).view(1, -1) < (N - count).view(-1, 1)).view(b, 1, 1, N, 1)
        keys, values = keys.masked_fill(empty, 0), values.masked_fill(empty, 0)  # padding slots hold zeros
        if self._rotary is not None:
            # where each kept key was computed, and where it sits now: the cache at 0 .. count - 1
            was = torch.where(order < N, order - (N - state.length.view(-1, 1)) + self.sink,
                              state.length.view(-1, 1) + order - N)  # (b, N) the position it was rotated at
            now = torch.arange(N, device=device).view(1, -1) - (N - count).view(-1, 1) + self.sink
            keys = self._rotate(keys, now - was)
        return keys, values, count

    def _rotate(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotary keys (b, Ly, H, N, dh) moved by `delta` (b, N) positions (rotations compose)."""
        b, Ly, H, N, dh = keys.shape
        cos, sin = self._rotary(keys.view(b, Ly * H * N, dh)[:, :N], delta)  # (b, N, dh)
        cos, sin = cos.view(b, 1, 1, N, dh).to(keys.dtype), sin.view(b, 1, 1, N, dh).to(keys.dtype)
        return keys * cos + _rotate_half(keys) * sin

    def decoding(self, state: XLState, specials: Optional[torch.Tensor]):
        prefix, inner = self.inner.decoding(state.inner, specials)
        return prefix, self._reading(state, inner)

    @contextmanager
    def _reading(self, state: XLState, inner: AbstractContextManager) -> Iterator[None]:
        """Decoding that attends to the cache as `segment` does: a forward pre-hook on the backbone puts
        the cache in front of the backbone's own (empty at the first call) KV cache, its slots in front of
        the attention mask, and moves the positions to ``c ..``. The backbone's `generate` never sees the
        cache, so its own bookkeeping (mask, positions, which inputs to feed) stays that of a fresh start."""
        N, c = self.size, state.length.view(-1, 1)  # (b, 1) cached tokens per row
        ours = self._cache(state)

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            cache = kwargs.get(self._cache_kwarg)
            if cache is not ours:
                if cache is not None and cache.get_seq_length() > 0:
                    raise ValueError("decoding with xl_cache starts from the XL cache; the backbone was given another "
                                     "non-empty KV cache")
                kwargs[self._cache_kwarg] = cache = ours
            x = kwargs.get("inputs_embeds")
            n = (x if x is not None else kwargs["input_ids"]).shape[1]
            seen = cache.get_seq_length() - N  # what the backbone's generate has fed so far
            mask = kwargs.get("attention_mask")  # (b, seen + n); generate drops an all-ones one
            mask = torch.ones(c.shape[0], seen + n, dtype=torch.long, device=c.device) if mask is None else mask
            positions = c + (mask.long().cumsum(1) - 1).clamp(min=0)[:, -n:]  # (b, n)
            sink = None
            if self.sink and seen == 0:  # the first call feeds the prefix: each row's sink is its first real position
                sink = (mask.long().cumsum(1) == 1) & mask.bool()  # (b, n)
                positions = positions.masked_fill(sink, 0)
            kwargs["attention_mask"] = self._extend(state, mask, sink)  # cache slots in front: (b, N + seen + n)
            kwargs["position_ids"] = positions
            return args, kwargs

        with inner:
            handle = self._model[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
            try:
                yield
            finally:
                handle.remove()

    def select(self, state: XLState, rows: torch.Tensor) -> XLState:
        return XLState(self.inner.select(state.inner, rows), *(t.index_select(0, rows) for t in state[1:]))

    def scatter(self, state: XLState, rows: torch.Tensor, new: XLState) -> XLState:
        return XLState(self.inner.scatter(state.inner, rows, new.inner),
                       *(full.index_copy(0, rows, part.to(full.dtype)) for full, part in zip(state[1:], new[1:])))

    def detach(self, state: XLState) -> XLState:
        return XLState(self.inner.detach(state.inner), *state[1:])


def wrap_with_cache(mechanism: MemoryMechanism, config: Any, backbone: BackboneInfo) -> MemoryMechanism:
    return XLCache(mechanism, config, backbone) if config.xl_cache else mechanism

