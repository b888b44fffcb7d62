"""Associative memory, ARMT (Rodkin, Kuratov, Bulatov, Burtsev, 2024, arXiv 2407.04841).

Every segment ends with M learned memory tokens, the same vectors on every segment:
``[sink] segment [mem]`` (decoders), ``[CLS] segment [mem] [SEP]`` (encoders). What crosses
segments is, per layer l, an associative matrix ``A_l`` (H, d_key/H, d/H) and a normaliser
``z_l`` (H, d_key/H), zero at the start. Layer hooks (no change to the backbone's code):

* read, before layer l, at every position: ``h <- h + phi(W_q h) A_l / (phi(W_q h) . z_l + eps)``;
* write, after layer l, from its outputs m at the memory positions, with the delta rule:
  ``k = phi(W_k m)``, ``v = W_v m``, ``beta = sigmoid(W_beta m)``,
  ``v_old = k A_l / (k . z_l + eps)``, ``gamma = clip(1 - k . z_l / |k|^2, 0, 1)`` (no gradient),
  ``A_l += sum_i beta_i k_i^T (v_i - v_old_i)``, ``z_l += sum_i gamma_i k_i``.

Two options beyond the paper: ``write_threshold`` drops every write whose gate is at or below it
(neither A nor z changes), and ``write_penalty`` makes every gate cost its value in the
gradient. Together they let a memory learn to write what it must keep and then leave its state
exactly unchanged on everything else, so what it holds cannot drift however long the input.

``phi`` is DPFP with nu = 3 (Schlag et al., 2021) followed by L2 normalisation, so d_key =
2 * nu * d_mem. W_v starts at zero: an untrained ARMT writes nothing and reads nothing, and its
first segment is the backbone's own output on ``[segment | mem]``. With an empty state the
formulas give exactly what the paper's first segment does (v_old = 0, gamma = 1), so no special
case is needed, and a sample of a ragged batch that starts late simply starts from zero.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneInfo, MemoryMechanism, Run, arrange, block_attention, expand, take
from .token import scaled_memory

NU = 3
EPS = 1e-5
DEFAULT_D_MEM = 64


class AssociativeState(NamedTuple):
    """Per sample and memory layer: the matrix and the normaliser."""

    matrix: torch.Tensor  # (B, L, H, d_key/H, d/H)
    normalizer: torch.Tensor  # (B, L, H, d_key/H)


def dpfp(x: torch.Tensor, nu: int = NU) -> torch.Tensor:
    """Deterministic parameter-free projection: (..., n) -> (..., 2 * nu * n), L2-normalised."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # (..., 2n)
    phi = torch.cat([r * r.roll(j, dims=-1) for j in range(1, nu + 1)], dim=-1)  # (..., 2 nu n)
    return F.normalize(phi, dim=-1)


class _WriteCost(torch.autograd.Function):
    """Identity forward; backward adds `cost` to the gradient of every gate (a loss term
    ``cost * sum(beta)`` that lives only in the backward pass, whatever loss is backpropagated)."""

    @staticmethod
    def forward(ctx, beta: torch.Tensor, cost: float) -> torch.Tensor:
        ctx.cost = cost
        return beta.view_as(beta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad + ctx.cost, None


class AssociativeBlock(nn.Module):
    """The projections of one layer's associative memory and its read and write."""

    def __init__(self, d: int, d_mem: int, heads: int, threshold: float = 0.0, penalty: float = 0.0):
        super().__init__()
        self.heads, self.threshold, self.penalty = heads, threshold, penalty
        self.W_q = nn.Linear(d, d_mem, bias=False)
        self.W_k = nn.Linear(d, d_mem, bias=False)
        self.W_v = nn.Linear(d, d, bias=False)
        self.W_beta = nn.Linear(d, heads)
        nn.init.zeros_(self.W_v.weight)  # an untrained memory writes zeros: the backbone is unchanged

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)  # (b, H, n, ·)

    def read(self, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h (b, n, d), A (b, H, k, v), z (b, H, k) -> what the memory adds to h, (b, n, d)."""
        q = dpfp(self._heads(self.W_q(h)))  # (b, H, n, k)
        num = q @ A.to(q.dtype)  # (b, H, n, v)
        den = (q * z.to(q.dtype).unsqueeze(2)).sum(-1, keepdim=True) + EPS  # (b, H, n, 1)
        return (num / den).transpose(1, 2).flatten(2)  # (b, n, d)

    def write(self, m: torch.Tensor, A: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """m (b, M, d) the layer's outputs at the memory positions -> the updated (A, z)."""
        k = dpfp(self._heads(self.W_k(m))).to(A.dtype)  # (b, H, M, k)
        v = self._heads(self.W_v(m)).to(A.dtype)  # (b, H, M, v)
        beta = torch.sigmoid(self.W_beta(m)).transpose(1, 2).to(A.dtype)  # (b, H, M)
        if self.penalty and beta.requires_grad:
            beta = _WriteCost.apply(beta, self.penalty / beta.shape[0])  # mean over the batch
        kz = (k * z.unsqueeze(2)).sum(-1)  # (b, H, M)
        v_old = (k @ A) / (kz + EPS).unsqueeze(-1)  # (b, H, M, v): what the memory holds for k
        gamma = (1 - kz / (k * k).sum(-1).clamp_min(1e-12)).clamp(0, 1).detach()  # (b, H, M): k's new part
        if self.threshold:  # a write that does not happen changes neither A nor z
            happens = (beta > self.threshold).to(A.dtype)
            beta, gamma = beta * happens, gamma * happens
        A = A + (k * beta.unsqueeze(-1)).transpose(-1, -2) @ (v - v_old)  # sum_i beta_i k_i^T (v_i - v_old_i)
        z = z + (gamma.unsqueeze(-1) * k).sum(2)
        return A, z


def _layers(base: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks: the ModuleList of num_hidden_layers modules
    (GPT-2 ``transformer.h``, Llama ``model.layers``, BERT ``encoder.layer``)."""
    n = getattr(base.config, "num_hidden_layers", None)
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(base).__name__}: no list of {n} transformer blocks found to attach the associative "
                     "memory to; memory='armt' needs a backbone whose layers are an nn.ModuleList")


def _hidden_of(args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool]:
    return (args[0], True) if args else (kwargs["hidden_states"], False)


class AssociativeMemory(MemoryMechanism):
    """ARMT: a per-layer associative matrix written from memory tokens with the delta rule."""

    name = "armt"

    def __init__(self, config: Any, backbone: BackboneInfo):
        super().__init__(config, backbone)
        d = backbone.hidden_size
        d_mem = config.d_mem or DEFAULT_D_MEM
        heads = config.num_memory_heads or 1
        if d_mem % heads or d % heads:
            raise ValueError(f"memory='armt': d_mem={d_mem} and the hidden size {d} must be multiples of "
                             f"num_memory_heads={heads}")
        blocks = _layers(backbone.base)
        chosen = list(range(len(blocks))) if config.memory_layers is None else list(config.memory_layers)
        if any(not 0 <= i < len(blocks) for i in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(f"memory_layers={config.memory_layers} must be distinct layer indices in 0..{len(blocks) - 1}")
        self._blocks = [blocks[i] for i in chosen]  # a plain list: the backbone's layers are not ours to save
        self.assoc = nn.ModuleList(AssociativeBlock(d, d_mem, heads, config.write_threshold, config.write_penalty)
                                   for _ in chosen)
        self.heads, self.d_key, self.d = heads, 2 * NU * d_mem, d
        self.sink = backbone.is_causal and backbone.num_special == 1
        self.token_start = int(self.sink) if backbone.is_causal else 1
        self.bidirectional = config.bidirectional_memory
        self.initial_memory = scaled_memory(config.num_mem_tokens, backbone.embeddings)

    @classmethod
    def extra_positions(cls, config: Any, is_causal: bool) -> int:
        m = config.num_mem_tokens
        return m + int(config.sink_token_id is not None) if is_causal else m + 2

    def memory_embeddings(self) -> torch.Tensor:
        return self.initial_memory

    def layout(self, length: int) -> list[tuple[str, int]]:
        # the memory tokens write the state; it is read by the layer hooks, not through attention
        m = self.num_mem_tokens
        if self.is_causal:
            blocks = [("sink", int(self.sink)), ("tokens", length), ("write", m)]
        else:
            blocks = [("cls", 1), ("tokens", length), ("write", m), ("sep", 1)]
        return [(role, n) for role, n in blocks if n]

    def init_state(self, batch_size: int) -> AssociativeState:
        L, H = len(self.assoc), self.heads
        ref = self.initial_memory
        matrix = ref.new_zeros(batch_size, L, H, self.d_key // H, self.d // H)
        return AssociativeState(matrix, ref.new_zeros(batch_size, L, H, self.d_key // H))

    @contextmanager
    def _hooks(self, state: AssociativeState, write_at: Optional[torch.Tensor]) -> Iterator[list]:
        """Read the state before every memory layer; with `write_at` (b,) (the first memory position
        of each row), also write each layer's update, collected in the yielded list."""
        written: list = [None] * len(self.assoc)
        handles = []
        m = self.num_mem_tokens
        for i, (block, assoc) in enumerate(zip(self._blocks, self.assoc)):
            A, z = state.matrix[:, i], state.normalizer[:, i]

            def before(module, args, kwargs, A=A, z=z, assoc=assoc):
                h, positional = _hidden_of(args, kwargs)
                h = h + assoc.read(h, A, z).to(h.dtype)
                return ((h, *args[1:]), kwargs) if positional else (args, {**kwargs, "hidden_states": h})

            handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
            if write_at is not None and m:
                def after(module, args, output, A=A, z=z, assoc=assoc, i=i):
                    hidden = output[0] if isinstance(output, tuple) else output  # (b, L, d)
                    written[i] = assoc.write(take(hidden, write_at, m), A, z)

                handles.append(block.register_forward_hook(after))
        try:
            yield written
        finally:
            for handle in handles:
                handle.remove()

    def _layout(self, embeds: torch.Tensor, lengths: torch.Tensor, specials: Optional[torch.Tensor]):
        b = embeds.shape[0]
        mem = self.initial_memory.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)  # (b, M, d)
        if self.is_causal:
            return arrange([expand(specials[0], b)] if self.sink else [], embeds, lengths, [mem])
        return arrange([expand(specials[0], b)], embeds, lengths, [mem, expand(specials[1], b)])

    def segment(self, run: Run, embeds: torch.Tensor, lengths: torch.Tensor, state: AssociativeState,
                specials: Optional[torch.Tensor]) -> tuple[Any, AssociativeState]:
        seg = self._layout(embeds, lengths, specials)
        mask = seg.attention_mask
        if self.bidirectional and self.num_mem_tokens:
            mask = block_attention(mask, [seg.after], self.num_mem_tokens, embeds.dtype)
        with self._hooks(state, seg.after) as written:
            out = run(inputs_embeds=seg.inputs_embeds, attention_mask=mask)
        if not self.num_mem_tokens:  # nothing to write from
            return out, state
        matrix = torch.stack([A for A, _ in written], dim=1)  # (b, L, H, k, v)
        normalizer = torch.stack([z for _, z in written], dim=1)  # (b, L, H, k)
        return out, AssociativeState(matrix, normalizer)

    def decoding(self, state: AssociativeState, specials: Optional[torch.Tensor]):
        b = state.matrix.shape[0]
        ref = self.initial_memory
        prefix = expand(specials[0], b).to(ref.dtype) if self.sink else ref.new_zeros(b, 0, ref.shape[-1])
        return prefix, self._hooks(state, None)  # decoded tokens read the state at every layer
