"""`rmt` as an lm-evaluation-harness model: every input, of any length, is read through memory.

Importing this module registers the model as ``rmt`` with lm-eval (``register_model``)::

    import rmt.evaluation.lm_eval_model  # noqa: F401
    lm_eval.simple_evaluate(model="rmt", model_args="path=RUN_OR_FOLDER", tasks=["babilong_qa1"])

lm-eval 0.4 has no plugin discovery for models, so its own ``lm_eval`` command cannot see a model
registered by another package; ``rmt-lm-eval`` is that command with ``rmt`` registered first::

    rmt-lm-eval --model rmt --model_args path=RUN --tasks babilong_qa1

``path`` is a run of ``rmt train`` or a ``save_pretrained`` folder; ``tokenizer=NAME_OR_PATH`` for a
folder without one; ``no_memory=True`` evaluates the backbone without memory (the baseline).

Offline, the BABILong tasks cannot fetch their dataset from the hub: :func:`write_local_tasks`
writes task files that read a local dataset in the published schema (``input``, ``question``,
``target``, as :func:`rmt.tasks.babilong.write_dataset` writes it) and are otherwise lm-eval's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import lm_eval.models  # noqa: F401  (lm-eval registers its own models only into an empty registry: first)
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ..data.corpus import rechunk
from ..tasks.babilong_prompts import lm_eval_task_dir
from .babilong import DEFAULT_MAX_NEW_TOKENS, generate_streamed, is_classifier, load_reader
from .babilong import no_memory as without_memory


@register_model("rmt")
class RMTLM(LM):
    """An RMT for lm-eval: ``generate_until``, ``loglikelihood`` and ``loglikelihood_rolling`` through memory."""

    def __init__(self, path: str | None = None, tokenizer: str | None = None, no_memory: bool | str = False,
                 max_gen_toks: int | str = DEFAULT_MAX_NEW_TOKENS, **_: Any) -> None:
        super().__init__()
        if not path:
            raise ValueError("the rmt model needs path=RUN_OR_FOLDER (a run of `rmt train` or a save_pretrained folder)")
        tok = None
        if tokenizer:
            from ..backbones import backbone_tokenizer

            tok = backbone_tokenizer(tokenizer)
        reader = load_reader(path, tokenizer=tok)
        if not reader.is_rmt:
            raise ValueError(f"{path} is not an RMT (no rmt_config.json or train_config.json); evaluate plain "
                             "models with lm-eval's own hf model")
        if is_classifier(reader.model):
            raise ValueError(f"{path} is an RMT classifier (it picks a label, it does not generate text), which lm-eval "
                             "cannot score; evaluate it with `rmt babilong`")
        if str(no_memory).lower() in ("true", "1", "yes"):
            reader = without_memory(reader)
        self.model, self.tokenizer = reader.model, reader.tokenizer
        self.max_gen_toks = int(max_gen_toks)
        self.segment_size = self.model.rmt_config.segment_size

    # -- helpers ---------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _chunks(self, ids: Sequence[int]) -> Iterator[list[int]]:
        return rechunk(iter([list(ids)]), self.segment_size)

    @torch.no_grad()
    def _continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log p(continuation | context) and whether it is the greedy continuation.

        The segments before the one holding the last context token are streamed into memory; only
        the rest is read with logits, so memory stays flat for contexts of any length.
        """
        ids = context + continuation
        s = self.segment_size
        full = (len(context) - 1) // s if context else 0
        memory = self.model.stream(self._chunks(ids[: full * s])).memory if full else None
        rest = torch.tensor([ids[full * s:]])  # (1, t)
        logits = self.model(rest, memory=memory).logits[0].float()  # (t, V)
        start = len(context) - full * s - 1  # the position predicting the first continuation token
        scores = F.log_softmax(logits[start: start + len(continuation)], dim=-1)  # (n, V)
        target = torch.tensor(continuation)
        logprob = float(scores.gather(1, target.view(-1, 1)).sum())
        return logprob, bool((scores.argmax(-1) == target).all())

    # -- the lm-eval interface -------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            # a context's trailing spaces belong to the continuation, as lm-eval's hf model does it
            stripped = context.rstrip(" ")
            continuation = context[len(stripped):] + continuation
            context_ids = self._encode(stripped)
            if not context_ids:  # nothing to condition on: start from end-of-sequence, as lm-eval does
                context_ids = [self.tokenizer.eos_token_id]
            out.append(self._continuation_logprobs(context_ids, self._encode(continuation)))
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            ids = [self.tokenizer.eos_token_id, *self._encode(request.args[0])]  # every token predicted
            read = self.model.stream(self._chunks(ids), compute_loss=True)
            out.append(-float(read.loss) * (len(ids) - 1))
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            ids = self._encode(context) or [self.tokenizer.eos_token_id]
            new = generate_streamed(self.model, self._chunks(ids), len(ids), max_new)
            eos = self.tokenizer.eos_token_id
            text = self.tokenizer.decode(new[: new.index(eos)] if eos in new else new, skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def write_local_tasks(folder: str | Path, data: str | Path, tasks: Sequence[int], lengths: Sequence[str]) -> list[str]:
    """lm-eval task files for a local BABILong dataset; returns the task names (``babilong_qa1_1k_local``).

    ``data`` is a folder written by :func:`rmt.tasks.babilong.write_dataset` (``{length}/qa{N}.jsonl``).
    Each task includes lm-eval's own ``babilong_qaN.yaml`` (prompt, few-shot examples, generation
    settings, metric) and replaces only where the data comes from. Pass ``folder`` to lm-eval as
    ``TaskManager(include_path=folder)`` (or ``--include_path``).
    """
    source = lm_eval_task_dir()
    folder, data = Path(folder), Path(data).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for qa in tasks:
        for length in lengths:
            rows = data / str(length) / f"qa{qa}.jsonl"
            if not rows.is_file():
                raise FileNotFoundError(f"{rows} not found: write the dataset first (rmt.tasks.babilong.write_dataset)")
            name = f"babilong_qa{qa}_{length}_local"
            config = {"include": str(source / f"babilong_qa{qa}.yaml"), "task": name, "custom_dataset": None,
                      "dataset_path": "json", "dataset_name": None, "test_split": f"qa{qa}",
                      "dataset_kwargs": {"data_files": {f"qa{qa}": str(rows)}}}
            (folder / f"{name}.yaml").write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
            names.append(name)
    return names


def main() -> None:
    """``rmt-lm-eval``: lm-eval's command line with the ``rmt`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
