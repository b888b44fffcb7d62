"""What the backbone's head gives per segment, and how a whole read collects it.

Three kinds of backbone, told apart by their class (`head_for`):

* `TokenHead`: per-token logits (causal LMs): (b, w, V) at each segment's token positions, a token
  cross-entropy summed per segment (computed inside a checkpointed segment, so a training step
  never keeps the logits), collected into (B, T, V) logits and/or (B, T) argmax predictions;
* `SequenceHead`: one output per input (``...ForSequenceClassification``): the last segment's
  logits and the backbone's own loss;
* `HiddenHead`: a bare model: the token positions' last hidden states, no loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from . import schedule
from .outputs import RMTOutput


@dataclass
class StepOutput:
    """What one step of the loop produced for the rows active in it."""

    step: schedule.Step
    outputs: Optional[torch.Tensor]  # (b, w, ·) per token, (b, C) per sequence; None unless kept
    head_loss: Optional[torch.Tensor] = None  # the backbone's own loss (sequence heads)
    token_loss: Optional[torch.Tensor] = None  # summed token cross-entropy (token heads)
    count: int = 0  # tokens scored in `token_loss`


class TokenHead:
    """Per-token logits of a causal LM (or any per-token head)."""

    per_token = True
    has_loss = True

    def __init__(self, slices_logits: bool, is_causal: bool):
        self.slices_logits = slices_logits  # the backbone takes transformers' `logits_to_keep`
        self.is_causal = is_causal

    def backbone_kwargs(self, token_start: int, width: int, device: torch.device, labels: Any) -> dict:
        if not self.slices_logits:
            return {}
        # the LM head projects only the token positions, never memory or special positions
        return {"logits_to_keep": torch.arange(token_start, token_start + width, device=device)}

    def outputs(self, out: Any, token_start: int, width: int) -> torch.Tensor:
        return out.logits if self.slices_logits else out.logits[:, token_start : token_start + width]  # (b, w, V)

    def token_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")

    def targets(self, labels: torch.Tensor, plan: schedule.Plan) -> torch.Tensor:
        return schedule.pack(labels, plan, shift=self.is_causal)

    def collector(self, plan: schedule.Plan, shape: torch.Size, logits: bool, predictions: bool) -> "TokenCollector":
        return TokenCollector(plan, shape, logits, predictions, self)


class HiddenHead(TokenHead):
    """A model without a head: the last hidden states at the token positions, no loss."""

    has_loss = False

    def __init__(self):
        super().__init__(slices_logits=False, is_causal=False)

    def outputs(self, out: Any, token_start: int, width: int) -> torch.Tensor:
        return out.hidden_states[-1][:, token_start : token_start + width]  # (b, w, d)


class SequenceHead:
    """One output per input: the last segment's logits and the backbone's loss."""

    per_token = False
    has_loss = True

    def backbone_kwargs(self, token_start: int, width: int, device: torch.device, labels: Any) -> dict:
        return {} if labels is None else {"labels": labels}

    def outputs(self, out: Any, token_start: int, width: int) -> torch.Tensor:
        return out.logits  # (b, C)

    def targets(self, labels: torch.Tensor, plan: schedule.Plan) -> torch.Tensor:
        return labels

    def collector(self, plan: schedule.Plan, shape: torch.Size, logits: bool, predictions: bool) -> "SequenceCollector":
        return SequenceCollector()


@dataclass
class SequenceCollector:
    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    losses: list = field(default_factory=list)

    def add(self, result: StepOutput) -> None:
        # every sample is active in the last step (samples are aligned at their last segment)
        self.logits, self.loss = result.outputs, result.head_loss
        if result.head_loss is not None:
            self.losses.append(result.head_loss.detach().float())

    def finish(self, state: Any) -> RMTOutput:
        return RMTOutput(loss=self.loss, logits=self.logits, memory=state,
                         segment_losses=torch.stack(self.losses) if self.losses else None)


class TokenCollector:
    """Per-step token outputs into (B, T, ·) logits / predictions, and the token-weighted loss."""

    def __init__(self, plan: schedule.Plan, shape: torch.Size, logits: bool, predictions: bool, head: TokenHead):
        self.plan, self.shape, self.head = plan, shape, head
        self.keep_logits, self.keep_predictions = logits, predictions
        self.uniform = plan.uniform  # segments tile the input: outputs are simply concatenated
        self.logits: list = []
        self.predictions: list = []
        self.losses: list[torch.Tensor] = []
        self.loss_sum: Optional[torch.Tensor] = None
        self.loss_count = 0

    def add(self, result: StepOutput) -> None:
        step, outputs = result.step, result.outputs
        if self.keep_logits or self.keep_predictions:
            if not self.uniform:  # keep only real tokens, with where they go in the caller's tensor
                positions = self.plan.positions[step.rows_index, step.index]  # (b, w)
                where = (step.rows.view(-1, 1).expand_as(positions)[step.valid], positions[step.valid])
            if self.keep_logits:
                self.logits.append(outputs if self.uniform else (*where, outputs[step.valid]))
            if self.keep_predictions:
                ids = outputs.argmax(-1)  # (b, w)
                self.predictions.append(ids if self.uniform else (*where, ids[step.valid]))
        if result.token_loss is not None:
            loss, count = result.token_loss, result.count
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.loss_count += count
            self.losses.append(loss.detach() / count if count else loss.detach() * float("nan"))

    def finish(self, state: Any) -> RMTOutput:
        B, T = self.shape
        full = schedule.assemble(self.logits, self.uniform, B, T) if self.keep_logits else None
        loss = None
        if self.loss_sum is not None:
            loss = self.loss_sum / self.loss_count if self.loss_count else self.loss_sum * float("nan")
        hidden = isinstance(self.head, HiddenHead)
        return RMTOutput(
            loss=loss,
            logits=None if hidden else full,
            last_hidden_state=full if hidden else None,
            memory=state,
            segment_losses=torch.stack(self.losses) if self.losses else None,
            predictions=schedule.assemble(self.predictions, self.uniform, B, T) if self.keep_predictions else None,
        )


def head_for(model: Any, is_causal: bool) -> Any:
    """The head strategy of a transformers model (the base model under a peft wrapper)."""
    import inspect

    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return SequenceHead()
    if getattr(model, "base_model", model) is model:
        return HiddenHead()
    return TokenHead("logits_to_keep" in inspect.signature(model.forward).parameters, is_causal)
