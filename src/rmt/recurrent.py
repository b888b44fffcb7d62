"""RecurrentMemoryTransformer: cut a long input into segments and carry memory between them.

The loop (`_advance`) is the only segment loop: `forward`, `stream` and `generate` all read
through it. Per step it selects the state of the samples active in the step (`schedule.step`),
runs one segment through the memory mechanism (`memory/`), detaches the new state where
`bptt_depth` says, and scatters it back. The head strategy (`heads.py`) says what a segment's
outputs and loss are, and collects them over the whole read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import checks, schedule
from .config import RMTConfig
from .generation import generate
from .heads import HiddenHead, SequenceHead, StepOutput, head_for
from .memory import BackboneInfo, MemoryMechanism, State, extra_positions, get_mechanism, wrap_with_cache
from .memory.associative import AssociativeBlock
from .outputs import RMTOutput, RMTStreamOutput
from .saving import RMTPretrainedConfig, load, save, unsaved_keys
from .streaming import stream


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


def _max_positions(cfg: Any) -> Optional[int]:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _input_embeddings(backbone: nn.Module, base: nn.Module) -> nn.Embedding:
    try:
        embeddings = backbone.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        embeddings = None
    if not isinstance(embeddings, nn.Embedding):
        raise TypeError(f"{type(base).__name__} has no input embedding layer (get_input_embeddings() gave "
                        f"{type(embeddings).__name__}); RMT feeds memory through inputs_embeds and needs one")
    hidden = getattr(base.config, "hidden_size", embeddings.embedding_dim)
    if hidden != embeddings.embedding_dim:
        raise ValueError(f"{type(base).__name__} embeds tokens in {embeddings.embedding_dim} dims but its hidden states "
                         f"have {hidden}; the memory read from the outputs cannot be fed back as input embeddings")
    return embeddings


def _special_ids(config: RMTConfig, base: nn.Module, is_causal: bool, vocab: int) -> tuple[RMTConfig, list[int]]:
    """The special tokens around every segment (a decoder's sink; an encoder's [CLS] and [SEP]),
    and a copy of the config with them resolved (the caller's config is never changed)."""
    if is_causal:
        sink = config.sink_token_id
        if sink is not None and not 0 <= sink < vocab:
            raise ValueError(f"sink_token_id={sink} is outside the backbone's vocabulary of {vocab} tokens")
        return config, [] if sink is None else [sink]
    if config.sink_token_id is not None:
        raise ValueError(f"sink_token_id is for decoders; {type(base).__name__} is an encoder, whose segments "
                         "already start with [CLS]: leave sink_token_id=None")

    def first(*names: str) -> Optional[int]:
        values = [getattr(base.config, n, None) for n in names]
        return next((v for v in values if isinstance(v, int)), None)

    cls_id = first("cls_token_id", "bos_token_id") if config.cls_token_id is None else config.cls_token_id
    sep_id = first("sep_token_id", "eos_token_id") if config.sep_token_id is None else config.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError(
            "an encoder needs the ids of its [CLS] and [SEP] tokens to put around every segment and its config "
            "does not give them: pass RMTConfig(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)")
    for name, value in (("cls_token_id", cls_id), ("sep_token_id", sep_id)):
        if not 0 <= value < vocab:
            raise ValueError(f"{name}={value} is outside the backbone's vocabulary of {vocab} tokens")
    return dataclasses.replace(config, cls_token_id=int(cls_id), sep_token_id=int(sep_id)), [int(cls_id), int(sep_id)]


@torch.no_grad()
def _check_4d_masks(backbone: nn.Module, base: nn.Module, is_causal: bool, embeddings: nn.Embedding) -> None:
    """bidirectional_memory needs a decoder that honours a 4-D attention mask: probe it on 3 positions."""
    if not is_causal:
        raise ValueError(f"bidirectional_memory is for decoders; {type(base).__name__} is an encoder, where every "
                         "position already sees every other")
    x = embeddings.weight[:3].detach().unsqueeze(0)  # (1, 3, d)
    mask = torch.zeros(1, 1, 3, 3, dtype=x.dtype, device=x.device)  # position 0 may see 1 and 2: not causal
    try:
        causal = backbone(inputs_embeds=x, output_hidden_states=True, use_cache=False).hidden_states[-1]
        full = backbone(inputs_embeds=x, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states[-1]
    except Exception as err:  # noqa: BLE001 - any failure means the model does not take such masks
        raise ValueError(f"bidirectional_memory needs a backbone that takes a 4-D attention mask; {type(base).__name__} "
                         f"failed with one ({type(err).__name__}: {err})") from None
    if torch.allclose(causal[:, 0], full[:, 0]):
        raise ValueError(f"bidirectional_memory needs a backbone that honours a 4-D attention mask; "
                         f"{type(base).__name__} ignored one")


class RecurrentMemoryTransformer(transformers.PreTrainedModel):
    """Wrap a transformers model so it reads inputs of any length through a recurrent memory.

    The memory mechanism is `config.memory` (see `rmt.memory`); its layout is decided from the
    backbone: with token memory, causal models get ``[read mem | segment | write mem]``, encoders
    ``[CLS] mem segment [SEP]`` (encoder inputs are given without special tokens; the wrapper adds
    them around every segment). Unknown attributes are forwarded to the backbone. A
    `transformers.PreTrainedModel`, so the transformers `Trainer` trains, checkpoints and reloads it.

    Example::

        model = rmt.RecurrentMemoryTransformer(AutoModelForCausalLM.from_pretrained("gpt2"),
                                               rmt.RMTConfig(num_mem_tokens=10, segment_size=512))
        out = model(input_ids, labels=input_ids)      # input_ids: (B, T), T as long as you like
    """

    config_class = RMTPretrainedConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, backbone: nn.Module, config: Optional[RMTConfig] = None):
        config = RMTConfig() if config is None else config
        if not isinstance(config, RMTConfig):
            raise TypeError(f"config must be an rmt.RMTConfig, got {type(config).__name__}")
        base = _base_model(backbone)
        if not isinstance(base, transformers.PreTrainedModel):
            raise TypeError(f"backbone must be a transformers PreTrainedModel (e.g. from AutoModelForCausalLM), "
                            f"got {type(backbone).__name__}")
        if getattr(base.config, "is_encoder_decoder", False):
            raise ValueError(f"{type(base).__name__} is an encoder-decoder model; RMT wraps decoder-only (GPT-2, "
                             "Llama, ...) or encoder-only (BERT, ...) models")
        embeddings = _input_embeddings(backbone, base)
        is_causal = _is_causal(base)
        head = head_for(base, is_causal)
        if is_causal and isinstance(head, SequenceHead):
            raise ValueError(f"{type(base).__name__}: sequence classification with a decoder is not supported; use the "
                             "causal LM (answer as text) or an encoder (BERT-like) classifier")
        config, special = _special_ids(config, base, is_causal, embeddings.num_embeddings)
        mechanism_cls = get_mechanism(config.memory)
        if config.xl_cache and not is_causal:
            raise ValueError(f"xl_cache is for decoders; {type(base).__name__} is an encoder")
        needed = config.segment_size + extra_positions(config, is_causal)
        limit = _max_positions(base.config)
        if limit is not None and needed > limit:
            fits = limit - (needed - config.segment_size)
            raise ValueError(
                f"segment_size={config.segment_size} with {config.num_mem_tokens} memory tokens ({config.memory!r}) needs "
                f"{needed} positions" + (f" (with an XL cache of {config.xl_cache})" if config.xl_cache else "") + f" but {type(base).__name__} has {limit}; the largest segment_size that fits is {fits}"
                + ("" if fits > 0 else " (none: use fewer memory tokens)"))

        if config.bidirectional_memory:
            _check_4d_masks(backbone, base, is_causal, embeddings)
        super().__init__(RMTPretrainedConfig(rmt=config.to_dict(), backbone_class=type(base).__name__))
        self.rmt_config = config
        self.backbone = backbone
        self.is_causal = is_causal
        self.head = head
        self.gradient_checkpointing = config.gradient_checkpointing
        info = BackboneInfo(backbone, base, is_causal, embeddings.embedding_dim, embeddings, len(special))
        self.mechanism: MemoryMechanism = wrap_with_cache(mechanism_cls(config, info), config, info)
        self.register_buffer("special_ids", torch.tensor(special, dtype=torch.long, device=embeddings.weight.device),
                             persistent=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("backbone", "mechanism"):
                raise
            return getattr(self.backbone, name)

    # ------------------------------------------------------------------ transformers integration

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> Optional[nn.Module]:
        return self.backbone.get_output_embeddings()

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """The backbone's own tying (the Trainer calls it after loading a checkpoint without the tied copies)."""
        _base_model(self.backbone).tie_weights()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute each segment in the backward pass (what ``RMTConfig(gradient_checkpointing=True)`` does)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    @property
    def _keys_to_ignore_on_save(self) -> set[str]:
        """Keys of the state dict that `save_pretrained` does not write (tied copies, a peft model's frozen
        base): the Trainer then knows that their absence from a checkpoint is expected."""
        return unsaved_keys(self)

    def save_pretrained(self, save_directory: Union[str, Path], state_dict: Optional[dict] = None,
                        **kwargs: Any) -> None:
        """Write ``rmt_config.json``, ``model.safetensors`` (every tensor of the wrapper that is not a
        frozen base weight: the backbone, the memory mechanism, everything) and ``backbone/`` (the
        backbone's config; a peft backbone's adapter config).

        A peft-wrapped backbone writes only its adapter; load it over the same base model with
        ``from_pretrained(path, backbone=base_model)``. Hub and Trainer keywords are accepted.
        """
        save(self, Path(save_directory), state_dict, is_main_process=kwargs.get("is_main_process", True))

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], backbone: Optional[nn.Module] = None,
                        **backbone_kwargs: Any) -> "RecurrentMemoryTransformer":
        """Load what `save_pretrained` wrote, from a folder or a hub repo id (with network).

        Args:
            path: the folder, or ``user/repo`` on the Hugging Face hub.
            backbone: a model to load the saved weights onto (a peft save needs its base model);
                by default the backbone is built from the saved config with the recorded class.
            backbone_kwargs: ``dtype=`` for the loaded model; hub options (``revision=``, ``token=``).
        """
        return load(cls, path, backbone, backbone_kwargs)

    def set_write_threshold(self, value: float) -> None:
        """``memory="armt"``: from now on drop every write whose gate is at or below ``value`` (see
        `RMTConfig.write_threshold`), e.g. to read a model with a stricter gate than it was trained
        with. The config (and so what `save_pretrained` writes) follows."""
        if self.rmt_config.memory != "armt":
            raise ValueError(f"write_threshold is an option of memory='armt'; this model has memory={self.rmt_config.memory!r}")
        config = dataclasses.replace(self.rmt_config, write_threshold=value)  # checked as at construction
        for block in self.mechanism.modules():
            if isinstance(block, AssociativeBlock):  # also inside an XL cache
                block.threshold = config.write_threshold
        self.rmt_config = config
        self.config.rmt = config.to_dict()

    # ------------------------------------------------------------------ memory

    @property
    def num_mem_tokens(self) -> int:
        return self.rmt_config.num_mem_tokens

    @property
    def initial_memory(self) -> Optional[torch.Tensor]:
        """The learned (m, d) memory vectors of the mechanism (None if it has none)."""
        return self.mechanism.memory_embeddings()

    def init_memory(self, batch_size: int) -> State:
        """The state before the first segment for `batch_size` samples (token memory: (B, m, d))."""
        return self.mechanism.init_state(batch_size)

    # ------------------------------------------------------------------ one segment

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(ids)

    def _specials(self) -> Optional[torch.Tensor]:
        """(n, d) embeddings of the special tokens around each segment, or None."""
        return self._embed(self.special_ids) if self.special_ids.numel() else None

    def _segment(self, ids: torch.Tensor, lengths: torch.Tensor, state: State, labels: Optional[torch.Tensor],
                 targets: Optional[torch.Tensor], keep: bool) -> tuple:
        """Run one segment: ids (b, w) right-padded, lengths (b,), the active rows' state.

        Returns the new state, the head's outputs (None unless `keep`), the backbone's loss (sequence
        heads given `labels`) and the summed token loss against `targets` (b, w) (-100 unscored). The
        token loss is computed here, inside the checkpointed region, so that with ``keep=False`` a
        segment's (b, w, V) logits are never kept for the backward pass.
        """
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._segment_impl, ids, lengths, state, labels, targets, keep, use_reentrant=False)
        return self._segment_impl(ids, lengths, state, labels, targets, keep)

    def _segment_impl(self, ids, lengths, state, labels, targets, keep):
        p, w = self.mechanism.token_start, ids.shape[1]
        head_kwargs = self.head.backbone_kwargs(p, w, ids.device, labels)

        def run(**inputs: Any) -> Any:
            kwargs = dict(inputs, output_hidden_states=True, return_dict=True, **head_kwargs)
            if self.is_causal:
                kwargs.setdefault("use_cache", False)
            return self.backbone(**kwargs)

        out, new_state = self.mechanism.segment(run, self._embed(ids), lengths, state, self._specials())
        outputs = self.head.outputs(out, p, w)
        token_loss = self.head.token_loss(outputs, targets) if targets is not None else None
        head_loss = out.loss if labels is not None else None
        return new_state, outputs if keep else None, head_loss, token_loss

    def _advance(self, plan: schedule.Plan, state: State, targets: Optional[torch.Tensor],
                 keep: bool) -> Iterator[tuple[State, StepOutput]]:
        """The segment loop: yields the whole batch's state after each step and that step's outputs."""
        k, N, B = self.rmt_config.bptt_depth, plan.num_steps, plan.ids.shape[0]
        per_token = self.head.per_token
        for j in range(N):
            step = schedule.step(plan, j)
            rows, everyone = step.rows, step.rows.numel() == B
            ids = step.gather(plan.ids, 0)  # (b, w)
            seq_labels = targets[rows] if (targets is not None and not per_token) else None
            tok_targets = step.gather(targets, -100) if (targets is not None and per_token) else None
            active = state if everyone else self.mechanism.select(state, rows)
            new, outputs, head_loss, token_loss = self._segment(ids, step.lengths, active, seq_labels, tok_targets,
                                                                keep or not per_token)
            if k is not None and j + 1 < N - k:
                new = self.mechanism.detach(new)  # truncated BPTT: this transition is not backpropagated
            state = new if everyone else self.mechanism.scatter(state, rows, new)
            count = int((tok_targets != -100).sum()) if tok_targets is not None else 0
            yield state, StepOutput(step, outputs, head_loss, token_loss, count)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        memory: Optional[State] = None,
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
            memory: the state to continue a read from (``out.memory`` of a previous call).
            return_logits: False skips the (B, T, V) per-token outputs (``logits`` is None); with
                ``gradient_checkpointing`` a training step then keeps no per-token logits at all.
            return_predictions: also return ``predictions`` (B, T), the argmax token at every
                position (causal LMs), computed segment by segment: with ``return_logits=False``
                evaluation of inputs of millions of tokens keeps ids, never (B, T, V) logits.
        """
        if return_predictions and not (self.head.per_token and self.head.has_loss):
            raise ValueError("return_predictions=True needs a per-token head (a causal LM); a classifier's "
                             "prediction is out.logits.argmax(-1)")
        self._check_ids(input_ids, attention_mask)
        B = input_ids.shape[0]
        state = self.mechanism.check_state(memory, B)
        plan = schedule.plan(input_ids, attention_mask, self.rmt_config.segment_size, self.rmt_config.alignment)
        targets = self._targets(labels, plan, input_ids.shape)
        collector = self.head.collector(plan, input_ids.shape, return_logits, return_predictions)
        for state, result in self._advance(plan, state, targets, keep=return_logits or return_predictions):
            collector.add(result)
        return collector.finish(state)

    def _check_ids(self, input_ids: Any, attention_mask: Any) -> None:
        cls_id = None if self.is_causal else int(self.special_ids[0])
        checks.check_ids(input_ids, attention_mask, self.get_input_embeddings().num_embeddings, cls_id)

    def _targets(self, labels: Optional[torch.Tensor], plan: schedule.Plan, shape: torch.Size) -> Optional[torch.Tensor]:
        """Labels packed like the plan's tokens; causal LMs shifted by one across the whole input."""
        if labels is None:
            return None
        if isinstance(self.head, HiddenHead):
            raise ValueError(f"{type(_base_model(self.backbone)).__name__} has no head to compute a loss with; "
                             "wrap a model with a head (AutoModelForCausalLM, AutoModelForSequenceClassification)")
        if self.head.per_token:
            checks.check_token_labels(labels, shape, self.get_input_embeddings().num_embeddings)
        else:
            num_labels = getattr(_base_model(self.backbone).config, "num_labels", 2)
            checks.check_sequence_labels(labels, shape[0], num_labels, plan.lengths)
        return self.head.targets(labels, plan)

    # ------------------------------------------------------------------ streaming, generation

    def stream(self, tokens: Any, memory: Optional[State] = None, *, compute_loss: bool = False,
               progress: bool = False) -> RMTStreamOutput:
        """Read an input of any length (millions of tokens) under no_grad with constant memory.

        Args:
            tokens: a (B, T) tensor, or an iterable of chunks ((B, t) tensors, 1-D tensors or lists
                of ids, for B=1) of any lengths: they are re-cut into `segment_size` segments, so
                the result does not depend on how the input was chunked.
            memory: the state to continue from.
            compute_loss: causal LMs: also the mean next-token loss over the whole stream (the
                same as ``forward(all_tokens, labels=all_tokens).loss``).
            progress: show a tqdm bar of tokens read.

        Nothing per token is kept: only the state, the running loss and one loss per segment.
        """
        return stream(self, tokens, memory, compute_loss=compute_loss, progress=progress)

    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 max_new_tokens: int = 20, memory: Optional[State] = None, **generate_kwargs: Any) -> torch.Tensor:
        """Continue `input_ids` (B, T) by `max_new_tokens` tokens; returns (B, T + new) like transformers.

        All full segments are read into memory, then the backbone decodes from the last (partial)
        segment with its KV cache; when the segment fills up, its memory is written and decoding
        continues in a new segment. Sampling options (``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``generation_config``, ...) go to the backbone's ``generate``. Ragged batches
        (``attention_mask``, padding on either side) decode together, each sample with its own
        segments and memory; like transformers, the result has the prompts left-padded and the
        new tokens after them, padded after each sample's end-of-sequence token.
        """
        return generate(self, input_ids, attention_mask, max_new_tokens, memory, **generate_kwargs)
