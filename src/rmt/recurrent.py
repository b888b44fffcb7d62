"""RecurrentMemoryTransformer: cut a long input into segments and carry memory between them.

The loop (`forward`) is: pack each sample's real tokens, plan which sample reads which segment at
each step (samples are aligned at their *last* segment, so a shorter sample simply starts later and
its memory waits unchanged), run the backbone on ``memory + segment`` for the samples active in the
step, write their new memory, and truncate BPTT by detaching it where `bptt_depth` says.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import RMTConfig
from .memory import DecoderLayout, EncoderLayout
from .outputs import RMTOutput, RMTStreamOutput

CONFIG_NAME = "rmt_config.json"
MEMORY_NAME = "memory.safetensors"
BACKBONE_DIR = "backbone"

TokenChunks = Union[torch.Tensor, Iterable[Any]]


def _base_model(backbone: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the backbone itself)."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone


def _is_causal(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    cfg = model.config
    if getattr(cfg, "is_decoder", False):
        return True
    model_type = getattr(cfg, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _head_kind(model: nn.Module) -> str:
    """'sequence' (one output per input), 'none' (hidden states only) or 'token' (per-token logits)."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "sequence"
    if getattr(model, "base_model", model) is model:
        return "none"
    return "token"


def _max_positions(cfg: Any) -> Optional[int]:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class _Plan:
    """Where each sample's segments are: real tokens packed to the left, one row per sample."""

    ids: torch.Tensor  # (B, Lmax) real tokens first
    positions: torch.Tensor  # (B, Lmax) their positions in the caller's tensor
    lengths: torch.Tensor  # (B,) real tokens per sample
    num_segments: torch.Tensor  # (B,)
    num_steps: int


@dataclass
class _Step:
    rows: torch.Tensor  # (b,) samples active in this step
    index: torch.Tensor  # (b, w) indices into the packed rows
    valid: torch.Tensor  # (b, w) bool, False on padding
    lengths: torch.Tensor  # (b,)

    @property
    def rows_index(self) -> torch.Tensor:
        """(b, 1): with `index`, picks each active row's (b, w) tokens without copying whole rows,
        so a step costs O(segment) however long the input is."""
        return self.rows.view(-1, 1)


def _assemble(parts: list, uniform: bool, B: int, T: int) -> torch.Tensor:
    """Per-step outputs back into (B, T, ...): concatenated when segments tile the input, else
    scattered from (rows, positions, values) to the caller's positions (zeros at padding)."""
    if uniform:
        return torch.cat(parts, dim=1)  # (B, T, ...)
    b_idx, t_idx, values = (torch.cat(column) for column in zip(*parts))
    return values.new_zeros((B, T, *values.shape[1:])).index_put((b_idx, t_idx), values)


class RecurrentMemoryTransformer(nn.Module):
    """Wrap a transformers model so it reads inputs of any length through a recurrent memory.

    The layout is decided from the backbone: causal models get ``[read mem | segment | write mem]``,
    encoders ``[CLS] mem segment [SEP]`` (encoder inputs are given without special tokens; the
    wrapper adds them around every segment). Unknown attributes are forwarded to the backbone.

    Example::

        model = rmt.RecurrentMemoryTransformer(AutoModelForCausalLM.from_pretrained("gpt2"),
                                               rmt.RMTConfig(num_mem_tokens=10, segment_size=512))
        out = model(input_ids, labels=input_ids)      # input_ids: (B, T), T as long as you like
    """

    def __init__(self, backbone: nn.Module, config: Optional[RMTConfig] = None):
        super().__init__()
        config = RMTConfig() if config is None else config
        if not isinstance(config, RMTConfig):
            raise TypeError(f"config must be an rmt.RMTConfig, got {type(config).__name__}")
        base = _base_model(backbone)
        if not isinstance(base, transformers.PreTrainedModel):
            raise TypeError(
                f"backbone must be a transformers PreTrainedModel (e.g. from AutoModelForCausalLM), "
                f"got {type(backbone).__name__}"
            )
        if getattr(base.config, "is_encoder_decoder", False):
            raise ValueError(
                f"{type(base).__name__} is an encoder-decoder model; RMT wraps decoder-only (GPT-2, Llama, ...) "
                "or encoder-only (BERT, ...) models"
            )
        try:
            embeddings = backbone.get_input_embeddings()
        except (NotImplementedError, AttributeError):
            embeddings = None
        if not isinstance(embeddings, nn.Embedding):
            raise TypeError(
                f"{type(base).__name__} has no input embedding layer (get_input_embeddings() gave "
                f"{type(embeddings).__name__}); RMT feeds memory through inputs_embeds and needs one"
            )
        hidden = getattr(base.config, "hidden_size", embeddings.embedding_dim)
        if hidden != embeddings.embedding_dim:
            raise ValueError(
                f"{type(base).__name__} embeds tokens in {embeddings.embedding_dim} dims but its hidden states "
                f"have {hidden}; the memory read from the outputs cannot be fed back as input embeddings"
            )

        self.rmt_config = config
        self.backbone = backbone
        self.is_causal = _is_causal(base)
        self.head = _head_kind(base)
        # the LM head projects only the segment's token positions, not memory or sink positions
        # (transformers' `logits_to_keep`, where the backbone has it)
        self._slices_logits = self.head == "token" and "logits_to_keep" in inspect.signature(base.forward).parameters
        if self.is_causal and self.head == "sequence":
            raise ValueError(
                f"{type(base).__name__}: sequence classification with a decoder is not supported; use the causal LM "
                "(answer as text) or an encoder (BERT-like) classifier"
            )
        m = config.num_mem_tokens
        if self.is_causal:
            self.layout = DecoderLayout(m, sink=config.sink_token_id is not None)
            if config.sink_token_id is not None:
                if not 0 <= config.sink_token_id < embeddings.num_embeddings:
                    raise ValueError(f"sink_token_id={config.sink_token_id} is outside the backbone's vocabulary "
                                     f"of {embeddings.num_embeddings} tokens")
                self.register_buffer("special_ids", torch.tensor([config.sink_token_id], device=embeddings.weight.device),
                                     persistent=False)
        else:
            if config.sink_token_id is not None:
                raise ValueError(f"sink_token_id is for decoders; {type(base).__name__} is an encoder, whose segments "
                                 "already start with [CLS]: leave sink_token_id=None")
            cls_id, sep_id = self._special_ids(base.config, embeddings.num_embeddings)
            self.layout = EncoderLayout(m)
            self.register_buffer("special_ids", torch.tensor([cls_id, sep_id], device=embeddings.weight.device), persistent=False)
        needed = config.segment_size + self.layout.num_special + (2 * m if self.is_causal else m)
        limit = _max_positions(base.config)
        if limit is not None and needed > limit:
            fits = limit - (needed - config.segment_size)
            raise ValueError(
                f"segment_size={config.segment_size} with {m} memory tokens needs {needed} positions but "
                f"{type(base).__name__} has {limit}; the largest segment_size that fits is {fits}"
                + ("" if fits > 0 else " (none: use fewer memory tokens)")
            )
        # initial memory, scaled like the token embeddings (Bulatov et al., 2022)
        weight = embeddings.weight
        init = torch.randn(m, embeddings.embedding_dim, dtype=weight.dtype, device=weight.device)
        self.initial_memory = nn.Parameter(init * weight.detach().float().std().to(weight.dtype))

    def _special_ids(self, cfg: Any, vocab: int) -> tuple[int, int]:
        def first(*names: str) -> Optional[int]:
            values = [getattr(cfg, n, None) for n in names]
            return next((v for v in values if isinstance(v, int)), None)

        cls_id = self.rmt_config.cls_token_id
        cls_id = first("cls_token_id", "bos_token_id") if cls_id is None else cls_id
        sep_id = self.rmt_config.sep_token_id
        sep_id = first("sep_token_id", "eos_token_id") if sep_id is None else sep_id
        if cls_id is None or sep_id is None:
            raise ValueError(
                "an encoder needs the ids of its [CLS] and [SEP] tokens to put around every segment and its config "
                "does not give them: pass RMTConfig(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)"
            )
        for name, value in (("cls_token_id", cls_id), ("sep_token_id", sep_id)):
            if not 0 <= value < vocab:
                raise ValueError(f"{name}={value} is outside the backbone's vocabulary of {vocab} tokens")
        self.rmt_config.cls_token_id, self.rmt_config.sep_token_id = int(cls_id), int(sep_id)
        return int(cls_id), int(sep_id)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "backbone":
                raise
            return getattr(self.backbone, name)

    # ------------------------------------------------------------------ memory

    @property
    def num_mem_tokens(self) -> int:
        return self.rmt_config.num_mem_tokens

    def init_memory(self, batch_size: int) -> torch.Tensor:
        """The learned initial memory for `batch_size` samples, (B, m, d)."""
        return self.initial_memory.unsqueeze(0).expand(batch_size, -1, -1)

    def _check_memory(self, memory: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        if memory is None:
            return self.init_memory(batch_size)
        want = (batch_size, *self.initial_memory.shape)
        if not isinstance(memory, torch.Tensor) or tuple(memory.shape) != want:
            got = tuple(memory.shape) if isinstance(memory, torch.Tensor) else type(memory).__name__
            raise ValueError(
                f"memory must have shape (batch, num_mem_tokens, hidden) = {want}, got {got}; "
                "pass the .memory of a previous output for the same batch, or model.init_memory(batch_size)"
            )
        return memory.to(self.initial_memory.dtype)

    # ------------------------------------------------------------------ one segment

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(ids)

    def _segment(self, ids: torch.Tensor, lengths: torch.Tensor, memory: torch.Tensor,
                 labels: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None,
                 keep_outputs: bool = True) -> tuple:
        """Run one segment. ids (b, w) right-padded, lengths (b,), memory (b, m, d).

        Returns the new memory (b, m, d); the outputs ((b, w, ·) per token, or (b, C) for sequence
        heads; None unless `keep_outputs`); the backbone's loss (sequence heads given `labels`); and
        the summed token cross-entropy against `targets` (b, w) (per-token heads, -100 = unscored).
        The token loss is computed here, inside the checkpointed region, so that with
        ``keep_outputs=False`` a segment's (b, w, V) logits are never kept for the backward pass.
        """
        if self.rmt_config.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._segment_impl, ids, lengths, memory, labels, targets, keep_outputs,
                              use_reentrant=False)
        return self._segment_impl(ids, lengths, memory, labels, targets, keep_outputs)

    def _segment_impl(self, ids, lengths, memory, labels, targets, keep_outputs):
        embeds = self._embed(ids)  # (b, w, d)
        specials = self._embed(self.special_ids) if self.layout.num_special else None  # [CLS], [SEP] or the sink
        seg = self.layout.build(embeds, lengths, memory.to(embeds.dtype), specials)
        kwargs: dict[str, Any] = dict(inputs_embeds=seg.inputs_embeds, attention_mask=seg.attention_mask,
                                      output_hidden_states=True, return_dict=True)
        if self.is_causal:
            kwargs["use_cache"] = False
        if labels is not None:
            kwargs["labels"] = labels
        p, w = self.layout.prefix, ids.shape[1]
        if self._slices_logits:
            kwargs["logits_to_keep"] = torch.arange(p, p + w, device=ids.device)  # tokens sit at p.. in every row
        out = self.backbone(**kwargs)
        hidden = out.hidden_states[-1]  # (b, L, d)
        new_memory = self.layout.read(hidden, lengths).to(memory.dtype)
        if self.head == "sequence":
            outputs = out.logits  # (b, C)
        elif self.head == "none":
            outputs = hidden[:, p : p + w]  # (b, w, d)
        else:
            outputs = out.logits if self._slices_logits else out.logits[:, p : p + w]  # (b, w, V)
        token_loss = None
        if targets is not None:
            token_loss = F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                         reduction="sum")
        return new_memory, outputs if keep_outputs else None, out.loss if labels is not None else None, token_loss

    # ------------------------------------------------------------------ planning

    def _check_ids(self, input_ids: Any, attention_mask: Any) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}; "
                             "add a batch dimension with input_ids[None]")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token per sample")
        vocab = self.backbone.get_input_embeddings().num_embeddings
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids hold ids in [{low}, {high}] but the backbone's vocabulary has {vocab} tokens "
                             "(ids 0..{}); was the input made with another tokenizer?".format(vocab - 1))
        if not self.is_causal and bool((input_ids[:, :1] == self.special_ids[0]).all()):
            raise ValueError("input_ids already start with the [CLS] token; encoder inputs are given without special "
                             "tokens (tokenizer(text, add_special_tokens=False)): the wrapper adds [CLS]/[SEP] per segment")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
            if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")

    def _plan(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> _Plan:
        B, T = input_ids.shape
        s = self.rmt_config.segment_size
        if attention_mask is None or bool(attention_mask.all()):
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
            ids = input_ids
            lengths = torch.full((B,), T, device=input_ids.device)
        else:
            keep = attention_mask.bool()
            # real tokens first, in order: a stable sort of the padding flags
            positions = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # (B, T)
            ids = input_ids.gather(1, positions)
            lengths = keep.sum(1)
        num_segments = (lengths + s - 1) // s
        return _Plan(ids, positions, lengths, num_segments, int(num_segments.max()))

    def _step(self, plan: _Plan, j: int) -> _Step:
        """Which samples read which tokens at step j (samples are aligned at their last segment)."""
        s = self.rmt_config.segment_size
        n = plan.num_segments
        rows = torch.nonzero(j >= plan.num_steps - n).squeeze(1)  # (b,)
        k = j - (plan.num_steps - n[rows])  # each active sample's own segment index
        L = plan.lengths[rows]
        if self.rmt_config.alignment == "left":
            start = k * s
            end = torch.minimum(start + s, L)
        else:
            end = L - (n[rows] - 1 - k) * s
            start = (end - s).clamp(min=0)
        lengths = end - start
        w = int(lengths.max())
        offsets = torch.arange(w, device=start.device).view(1, -1)
        valid = offsets < lengths.view(-1, 1)  # (b, w)
        index = (start.view(-1, 1) + offsets).clamp(max=plan.ids.shape[1] - 1)  # (b, w)
        return _Step(rows, index, valid, lengths)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        *,
        return_logits: bool = True,
        return_predictions: bool = False,
    ) -> RMTOutput:
        """Read `input_ids` (B, T) segment by segment.

        Args:
            input_ids: (B, T) token ids; any length. Encoders: without special tokens.
            attention_mask: (B, T), 0 on padding (left, right or both). Padding never updates a
                sample's memory and never enters a loss.
            labels: causal LM: (B, T) ids, -100 where unscored (shifted inside, across segment
                boundaries too); sequence classification: (B,) class ids (or (B, C) for
                multi-label/regression as the backbone's head expects).
            memory: (B, m, d) to continue a read (``out.memory`` of a previous call).
            return_logits: False skips the (B, T, V) per-token outputs (``logits`` is None); with
                ``gradient_checkpointing`` a training step then keeps no per-token logits at all.
            return_predictions: also return ``predictions`` (B, T), the argmax token at every
                position (causal LMs), computed segment by segment: with ``return_logits=False``
                evaluation of inputs of millions of tokens keeps ids, never (B, T, V) logits.
        """
        if return_predictions and self.head != "token":
            raise ValueError("return_predictions=True needs a per-token head (a causal LM); a classifier's "
                             "prediction is out.logits.argmax(-1)")
        self._check_ids(input_ids, attention_mask)
        B, T = input_ids.shape
        memory = self._check_memory(memory, B)
        plan = self._plan(input_ids, attention_mask)
        targets = self._targets(labels, plan, input_ids.shape)

        k = self.rmt_config.bptt_depth
        N = plan.num_steps
        # no padding: segments tile the input in order, so outputs are simply concatenated
        uniform = bool((plan.lengths == T).all())
        gathered: list = []  # per step: outputs (uniform) or (rows, positions, outputs) to scatter
        predicted: list = []  # the same for the argmax predictions
        seg_losses: list[torch.Tensor] = []
        loss_sum = input_ids.new_zeros((), dtype=torch.float32)
        loss_count = 0
        seq_logits = seq_loss = None
        for j in range(N):
            step = self._step(plan, j)
            rows = step.rows
            ids = plan.ids[step.rows_index, step.index].masked_fill(~step.valid, 0)  # (b, w)
            seq_labels = targets[rows] if (targets is not None and self.head == "sequence") else None
            tok_targets = None
            if targets is not None and self.head != "sequence":
                tok_targets = targets[step.rows_index, step.index].masked_fill(~step.valid, -100)  # (b, w)
            keep = return_logits or return_predictions or self.head == "sequence"
            everyone = rows.numel() == B
            new_memory, outputs, head_loss, token_loss = self._segment(
                ids, step.lengths, memory if everyone else memory[rows], seq_labels, tok_targets, keep)
            if k is not None and j + 1 < N - k:
                new_memory = new_memory.detach()  # truncated BPTT: this transition is not backpropagated
            memory = new_memory if everyone else memory.index_copy(0, rows, new_memory)

            if self.head == "sequence":
                seq_logits, seq_loss = outputs, head_loss
                if head_loss is not None:
                    seg_losses.append(head_loss.detach().float())
                continue
            if return_logits or return_predictions:
                if not uniform:  # keep only real tokens, with where they go in the caller's tensor
                    positions = plan.positions[step.rows_index, step.index]  # (b, w)
                    where = (rows.view(-1, 1).expand_as(positions)[step.valid], positions[step.valid])
                if return_logits:
                    gathered.append(outputs if uniform else (*where, outputs[step.valid]))
                if return_predictions:
                    ids_out = outputs.argmax(-1)  # (b, w)
                    predicted.append(ids_out if uniform else (*where, ids_out[step.valid]))
            if token_loss is not None:
                count = int((tok_targets != -100).sum())
                loss_sum = loss_sum + token_loss
                loss_count += count
                seg_losses.append(token_loss.detach() / count if count else token_loss.detach() * float("nan"))

        if self.head == "sequence":
            return RMTOutput(loss=seq_loss, logits=seq_logits, memory=memory,
                             segment_losses=torch.stack(seg_losses) if seg_losses else None)
        full = _assemble(gathered, uniform, B, T) if return_logits else None
        loss = None
        if targets is not None:
            loss = loss_sum / loss_count if loss_count else loss_sum * float("nan")
        return RMTOutput(
            loss=loss,
            logits=full if self.head == "token" else None,
            last_hidden_state=full if self.head == "none" else None,
            memory=memory,
            segment_losses=torch.stack(seg_losses) if seg_losses else None,
            predictions=_assemble(predicted, uniform, B, T) if return_predictions else None,
        )

    def _targets(self, labels: Optional[torch.Tensor], plan: _Plan, shape: torch.Size) -> Optional[torch.Tensor]:
        """Labels packed like the plan's tokens; causal LMs shifted by one across the whole input."""
        if labels is None:
            return None
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        B = shape[0]
        if self.head == "none":
            raise ValueError(f"{type(_base_model(self.backbone)).__name__} has no head to compute a loss with; "
                             "wrap a model with a head (AutoModelForCausalLM, AutoModelForSequenceClassification)")
        if self.head == "sequence":
            if labels.shape[0] != B or labels.dim() > 2:
                raise ValueError(f"classification labels must have shape (batch,) = ({B},) "
                                 f"(or (batch, num_labels) for multi-label), got {tuple(labels.shape)}")
            if bool((plan.lengths == 0).any()):
                raise ValueError("a sample has no tokens (its attention_mask is all 0); a classifier needs at least one")
            return labels
        if labels.shape != shape:
            raise ValueError(f"labels must have the shape of input_ids {tuple(shape)}, got {tuple(labels.shape)}")
        packed = labels.gather(1, plan.positions)  # (B, Lmax)
        in_range = torch.arange(packed.shape[1], device=packed.device).view(1, -1) < plan.lengths.view(-1, 1)
        packed = packed.masked_fill(~in_range, -100)
        if not self.is_causal:
            return packed
        # token t predicts token t+1: shift once over each sample's real tokens
        return torch.cat([packed[:, 1:], packed.new_full((B, 1), -100)], dim=1)

    # ------------------------------------------------------------------ streaming

    @torch.no_grad()
    def stream(
        self,
        tokens: TokenChunks,
        memory: Optional[torch.Tensor] = None,
        *,
        compute_loss: bool = False,
        progress: bool = False,
    ) -> RMTStreamOutput:
        """Read an input of any length (millions of tokens) under no_grad with constant memory.

        Args:
            tokens: a (B, T) tensor, or an iterable of chunks ((B, t) tensors, 1-D tensors or lists
                of ids, for B=1) of any lengths: they are re-cut into `segment_size` segments, so
                the result does not depend on how the input was chunked.
            memory: (B, m, d) to continue from.
            compute_loss: causal LMs: also the mean next-token loss over the whole stream (the
                same as ``forward(all_tokens, labels=all_tokens).loss``).
            progress: show a tqdm bar of tokens read.

        Nothing per token is kept: only the memory, the running loss and one loss per segment.
        """
        if self.rmt_config.alignment != "left":
            raise ValueError("stream() reads segments as they arrive, which needs RMTConfig(alignment='left')")
        if compute_loss and not (self.is_causal and self.head == "token"):
            raise ValueError("compute_loss=True needs a causal language model")
        from tqdm.auto import tqdm

        s = self.rmt_config.segment_size
        chunks = tokens.split(s * 64, dim=1) if isinstance(tokens, torch.Tensor) else tokens
        device = self.initial_memory.device
        bar = tqdm(unit="tok", disable=not progress, desc="reading")
        buffer: Optional[torch.Tensor] = None
        prev_last = None  # (B, V) logits of the previous segment's last token: it predicts the next one
        seg_sums: list[list[float]] = []  # per segment: [loss sum, predicted tokens]
        num_tokens = num_segments = 0
        last_logits = None

        def consume(seg: torch.Tensor) -> None:
            nonlocal memory, prev_last, num_tokens, num_segments, last_logits
            if num_segments == 0:  # the caller's memory (or the initial one), checked once
                memory = self._check_memory(memory, seg.shape[0])
            lengths = torch.full((seg.shape[0],), seg.shape[1], device=device)
            memory, outputs, _, _ = self._segment(seg, lengths, memory)
            num_tokens += seg.shape[1]
            num_segments += 1
            last_logits = outputs if self.head == "sequence" else outputs[:, -1]
            if compute_loss:
                # a position's loss belongs to the segment it is in, as in forward(): the last
                # token of the previous segment predicts this segment's first token
                if prev_last is not None:
                    boundary = float(F.cross_entropy(prev_last.float(), seg[:, 0], reduction="sum"))
                    seg_sums[-1][0] += boundary
                    seg_sums[-1][1] += seg.shape[0]
                within = F.cross_entropy(outputs[:, :-1].flatten(0, 1).float(), seg[:, 1:].flatten(), reduction="sum")
                seg_sums.append([float(within), seg[:, 1:].numel()])
                prev_last = outputs[:, -1]
            bar.update(seg.shape[1])

        for chunk in chunks:
            chunk = torch.as_tensor(chunk, device=device)
            chunk = chunk.view(1, -1) if chunk.dim() == 1 else chunk
            if chunk.shape[1] == 0:
                continue
            self._check_ids(chunk, None)
            if buffer is not None and chunk.shape[0] != buffer.shape[0]:
                raise ValueError(f"stream() chunks must keep the batch size: a chunk of {chunk.shape[0]} rows came "
                                 f"after chunks of {buffer.shape[0]}; stream each batch of samples on its own")
            buffer = chunk if buffer is None else torch.cat([buffer, chunk], dim=1)
            while buffer.shape[1] >= s:
                consume(buffer[:, :s])
                buffer = buffer[:, s:]
        if buffer is not None and buffer.shape[1] > 0:
            consume(buffer)
        bar.close()
        if num_tokens == 0:
            raise ValueError("stream() got no tokens")
        loss = segment_losses = None
        if compute_loss:
            total, count = (sum(column) for column in zip(*seg_sums))
            loss = torch.tensor(total / count if count else float("nan"))
            segment_losses = torch.tensor([t / c if c else float("nan") for t, c in seg_sums])
        return RMTStreamOutput(memory=memory, loss=loss, num_tokens=num_tokens, num_segments=num_segments,
                               segment_losses=segment_losses, logits=last_logits)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        max_new_tokens: int = 20,
        memory: Optional[torch.Tensor] = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Continue `input_ids` (B, T) by `max_new_tokens` tokens; returns (B, T + new) like transformers.

        All full segments are read into memory, then the backbone decodes from the last (partial)
        segment with its KV cache; when the segment fills up, its memory is written and decoding
        continues in a new segment. Sampling options (``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``generation_config``, ...) go to the backbone's ``generate``. Ragged batches
        (``attention_mask``, padding on either side) decode together, each sample with its own
        segments and memory; like transformers, the result has the prompts left-padded and the
        new tokens after them, padded after each sample's end-of-sequence token.
        """
        if not (self.is_causal and self.head == "token"):
            raise ValueError(f"generate() needs a causal language model; {type(_base_model(self.backbone)).__name__} is not one")
        if self.rmt_config.alignment != "left":
            raise ValueError("generate() writes memory as segments fill up from the left, which needs "
                             "RMTConfig(alignment='left'); with 'right' every new token would re-cut all segments")
        if "max_length" in generate_kwargs:
            raise ValueError("pass max_new_tokens, not max_length: the input may be far longer than the backbone's context")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        self._check_ids(input_ids, attention_mask)
        B = input_ids.shape[0]
        memory = self._check_memory(memory, B)
        plan = self._plan(input_ids, attention_mask)  # each prompt's real tokens, packed to the left
        if bool((plan.lengths == 0).any()):
            raise ValueError("a prompt has no tokens (its attention_mask is all 0); give every sample at least one")
        gen_cfg = generate_kwargs.get("generation_config") or self.backbone.generation_config
        for name in ("num_beams", "num_return_sequences"):
            if (generate_kwargs.get(name) or getattr(gen_cfg, name, 1) or 1) != 1:
                raise ValueError(f"generate() decodes one sequence per prompt, greedily or by sampling: {name} must be 1 "
                                 "(a beam search would restart at every segment boundary)")
        eos = gen_cfg.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else (eos[0] if eos else 0)
        generate_kwargs.setdefault("pad_token_id", pad)

        s = self.rmt_config.segment_size
        lengths = plan.lengths.tolist()
        full = [(n - 1) // s * s for n in lengths]  # tokens in full segments before each last (non-empty) one
        if max(full):
            read = torch.arange(max(full), device=input_ids.device).view(1, -1) < torch.tensor(full, device=input_ids.device).view(-1, 1)
            memory = self(plan.ids[:, : max(full)], attention_mask=read.long(), memory=memory, return_logits=False).memory
        segments = [plan.ids[i, full[i] : lengths[i]] for i in range(B)]  # each (1..s,)
        new_tokens: list[torch.Tensor] = []
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        remaining = max_new_tokens
        while remaining > 0:
            # decode until the first segment fills up; one more token is predicted from a full
            # segment and opens its next one
            count = min(remaining, min(s - seg.shape[0] + 1 for seg in segments))
            embeds, mask = self._decoding_inputs(segments, memory)
            out = self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=count,
                                         min_new_tokens=0, **generate_kwargs)
            out = out[:, -count:] if out.shape[1] > count else out  # new tokens only, (B, <= count)
            out = out.masked_fill(finished.view(-1, 1), pad)
            if eos:
                hit = torch.isin(out, torch.tensor(eos, device=out.device))
                after = hit.long().cumsum(1) - hit.long() > 0  # positions after each sample's first eos
                out = out.masked_fill(after, pad)
                finished |= hit.any(1)
            new_tokens.append(out)
            remaining -= out.shape[1]
            if bool(finished.all()) or out.shape[1] < count:
                break
            segments = [torch.cat([seg, row]) for seg, row in zip(segments, out)]
            filled = [i for i, seg in enumerate(segments) if seg.shape[0] > s]
            if filled:  # write the memory of every segment that filled up
                rows = torch.tensor(filled, device=memory.device)
                written = self(torch.stack([segments[i][:s] for i in filled]), memory=memory[rows],
                               return_logits=False).memory
                memory = memory.index_copy(0, rows, written)
                for i in filled:
                    segments[i] = segments[i][s:]
        width = max(lengths)
        prompts = torch.stack([F.pad(plan.ids[i, : lengths[i]], (width - lengths[i], 0), value=pad) for i in range(B)])
        return torch.cat([prompts, *new_tokens], dim=1)

    def _decoding_inputs(self, segments: list[torch.Tensor], memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[sink] read mem | segment`` embeddings (B, L, d) and their mask (B, L) for decoding."""
        specials = self._embed(self.special_ids) if self.layout.num_special else None
        head = self.layout.head(memory.to(self.initial_memory.dtype), specials)  # (B, prefix, d)
        rows = [torch.cat([h, self._embed(seg)]) for h, seg in zip(head, segments)]
        width = max(r.shape[0] for r in rows)
        embeds = torch.stack([F.pad(r, (0, 0, width - r.shape[0], 0)) for r in rows])  # (B, L, d)
        mask = torch.stack([(torch.arange(width, device=r.device) >= width - r.shape[0]).long() for r in rows])
        return embeds, mask

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, path: Union[str, Path], **backbone_kwargs: Any) -> None:
        """Write ``rmt_config.json``, ``memory.safetensors`` and the backbone (``backbone/``).

        A peft-wrapped backbone writes only its adapter; load it over the same base model with
        ``from_pretrained(path, backbone=base_model)``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path / BACKBONE_DIR, **backbone_kwargs)
        save_file({"initial_memory": self.initial_memory.detach().cpu().contiguous()}, str(path / MEMORY_NAME))
        base = _base_model(self.backbone)
        self.rmt_config.to_json_file(path / CONFIG_NAME, backbone_class=type(base).__name__,
                                     is_peft=base is not self.backbone, rmt_format=1)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], backbone: Optional[nn.Module] = None,
                        **backbone_kwargs: Any) -> "RecurrentMemoryTransformer":
        """Load what `save_pretrained` wrote.

        Args:
            path: the folder.
            backbone: a model to load the saved memory (and, for peft saves, the adapter) onto;
                by default the saved backbone is loaded with the transformers class recorded in
                the config.
            backbone_kwargs: passed to the backbone's ``from_pretrained`` (``dtype=``, ...).
        """
        path = Path(path)
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: is {path} a folder written by RecurrentMemoryTransformer.save_pretrained?")
        data = json.loads(config_file.read_text())
        class_name = data.pop("backbone_class")
        is_peft = data.pop("is_peft", False)
        data.pop("rmt_format", None)
        config = RMTConfig.from_dict(data)
        if backbone is None and is_peft:
            raise ValueError(f"{path} holds a peft adapter, not a whole backbone: pass the base model, "
                             "from_pretrained(path, backbone=base_model)")
        if backbone is None:
            backbone_cls = getattr(transformers, class_name, None)
            if backbone_cls is None:
                raise ValueError(f"{path} was saved with backbone class {class_name!r}, which this transformers "
                                 f"{transformers.__version__} does not have")
            backbone = backbone_cls.from_pretrained(path / BACKBONE_DIR, **backbone_kwargs)
        elif is_peft:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, path / BACKBONE_DIR)
        model = cls(backbone, config)
        state = load_file(str(path / MEMORY_NAME))
        with torch.no_grad():
            model.initial_memory.copy_(state["initial_memory"].to(model.initial_memory.dtype))
        return model

