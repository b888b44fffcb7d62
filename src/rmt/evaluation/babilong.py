"""BABILong evaluation: generate an answer, then compare it, for every task x length; table, JSON, heatmap.

Three kinds of model, as the benchmark evaluates them:

* a Hugging Face causal LM with full attention, reading the official prompt, up to its context
  (cells whose inputs do not fit are left out and reported as such);
* an RMT (a run of ``rmt train`` or a folder written by ``save_pretrained``), reading
  ``"{context} {question}"`` with no prompt (as the authors' fine-tuned RMTs were evaluated): the
  input is streamed segment by segment into memory (``model.stream``), then the answer is
  generated from the last partial segment (``model.generate``), so inputs of millions of tokens
  never sit in memory whole; samples of one input length stream together, ``batch_size`` at a time;
* the same RMT's backbone without memory (``num_mem_tokens=0``): it sees only the last segment.

An RMT over a sequence classifier (a BERT trained with ``kind: classification``, as the RMT scaling
paper trained qa1-qa3) answers with the label it picks, from its config's ``id2label``.

Both metrics are reported: the benchmark's strict ``compare_answers`` and lm-eval's lenient match.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch

from ..config import RMTConfig
from ..data.corpus import BackgroundText, background_text
from ..recurrent import RecurrentMemoryTransformer
from ..tasks.babilong import BabilongTask, context_length
from ..tasks.babilong_prompts import compare_answers, lenient_match
from ..training.run_dir import write_json_atomic, write_text_atomic

METRICS = ("accuracy", "lenient")  # the benchmark's strict check, lm-eval's substring match
DEFAULT_MAX_NEW_TOKENS = 16  # lm-eval's babilong generation length


@dataclass
class Reader:
    """A model under evaluation and how it is given the input."""

    name: str
    model: Any  # a transformers causal LM (full attention) or a RecurrentMemoryTransformer
    tokenizer: Any
    spec: str  # where it was loaded from
    is_rmt: bool = False
    info: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return "none" if self.is_rmt else "official"

    @cached_property
    def weights_hash(self) -> str:
        """A hash of the weights: kept answers of a model since retrained in place are not reused."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @property
    def max_positions(self) -> Optional[int]:
        """The longest input (prompt and answer) a full-attention model can read; None for an RMT."""
        if self.is_rmt:
            return None
        cfg = self.model.config
        return next((getattr(cfg, n) for n in ("max_position_embeddings", "n_positions")
                     if isinstance(getattr(cfg, n, None), int)), None)


def load_reader(spec: str, name: Optional[str] = None, tokenizer: Any = None) -> Reader:
    """A model to evaluate from ``spec``: a run of ``rmt train``, a folder of ``save_pretrained``
    (an RMT), or a packaged name (``smollm2-135m``), a model folder or a hub name (full attention)."""
    from ..backbones import load_backbone

    path = Path(spec)
    name = name or path.name or spec
    if (path / "train_config.json").is_file():
        from ..training.trainer import load_run, make_tasks

        model, config = load_run(path)
        tok = tokenizer if tokenizer is not None else make_tasks(config).tokenizer
        return Reader(name, model.eval(), tok, spec, is_rmt=True, info=_rmt_info(model))
    if (path / "rmt_config.json").is_file():
        model = RecurrentMemoryTransformer.from_pretrained(path)
        return Reader(name, model.eval(), tokenizer or _folder_tokenizer(path), spec, is_rmt=True, info=_rmt_info(model))
    model, tok = load_backbone(spec, dtype=torch.float32)
    return Reader(name, model.eval(), tokenizer or tok, spec, info={"kind": "full attention"})


def no_memory(reader: Reader) -> Reader:
    """The baseline of an RMT: its backbone and segment size without memory (it reads only the last segment)."""
    if not reader.is_rmt:
        raise ValueError(f"{reader.name} is not an RMT; a no-memory baseline is built from one")
    cfg = reader.model.rmt_config
    model = RecurrentMemoryTransformer(reader.model.backbone, RMTConfig(
        num_mem_tokens=0, segment_size=cfg.segment_size, sink_token_id=cfg.sink_token_id,
        cls_token_id=cfg.cls_token_id, sep_token_id=cfg.sep_token_id)).eval()
    return Reader(f"{reader.name}-no-memory", model, reader.tokenizer, reader.spec, is_rmt=True,
                  info={**_rmt_info(model), "kind": "no memory (the RMT's backbone, last segment only)"})


def _rmt_info(model: RecurrentMemoryTransformer) -> dict:
    cfg = model.rmt_config
    return {"kind": "rmt", "num_mem_tokens": cfg.num_mem_tokens, "segment_size": cfg.segment_size}


def _folder_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    for folder in (path, path / "backbone"):
        try:
            return AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError):
            continue
    raise FileNotFoundError(f"no tokenizer in {path} or {path / 'backbone'}: pass one (--tokenizer NAME_OR_PATH)")


# -- answering ----------------------------------------------------------------------------------
def answer_rmt(model: RecurrentMemoryTransformer, task: BabilongTask, index: int, split: str,
               max_new_tokens: int) -> list[int]:
    """Read sample ``index`` through memory and generate its answer (new token ids)."""
    return answer_rmt_batch(model, task, [index], split, max_new_tokens)[0]


def answer_rmt_batch(model: RecurrentMemoryTransformer, task: BabilongTask, indices: Sequence[int], split: str,
                     max_new_tokens: int) -> list[list[int]]:
    """Read samples ``indices``, all of one input length, through memory together; their answers' new ids."""
    chunks, num_tokens = _batch_chunks(task, indices, split, model.rmt_config.segment_size)
    return generate_streamed(model, chunks, num_tokens, max_new_tokens)


def _batch_chunks(task: BabilongTask, indices: Sequence[int], split: str, segment_size: int) -> tuple[Iterator, int]:
    """Samples ``indices`` as one stream of (B, segment_size) ... then (B, 1..segment_size) tensors, and
    their input length (they must share one)."""
    lengths = {task.num_tokens(i, split) for i in indices}
    if len(lengths) != 1:
        raise ValueError(f"samples streamed together must have one input length, got {sorted(lengths)}")
    streams = [task.iter_chunks(i, segment_size, split) for i in indices]
    return (torch.tensor(rows) for rows in zip(*streams)), lengths.pop()


def is_classifier(model: RecurrentMemoryTransformer) -> bool:
    """Whether an RMT answers with a label (a sequence-classification backbone) rather than by generating."""
    return not model.backbone.can_generate()


def classifier_labels(model: RecurrentMemoryTransformer, task: BabilongTask) -> list[str]:
    """The answer each class of an RMT classifier stands for (its config's ``id2label``), checked
    against ``task``'s labels, so a model is never scored with another task's label order."""
    id2label = getattr(model.backbone.config, "id2label", None) or {}
    names = [id2label.get(i, id2label.get(str(i))) for i in range(len(id2label))]
    if not names or any(n not in task.labels for n in names):
        raise ValueError(f"the classifier's labels {names} are not answers of qa{task.qa} ({list(task.labels)}): "
                         f"evaluate it on the tasks it was trained for (models trained before labels were "
                         f"stored in their config cannot be scored)")
    return names


@torch.no_grad()
def classify_rmt_batch(model: RecurrentMemoryTransformer, task: BabilongTask, indices: Sequence[int],
                       split: str) -> list[str]:
    """Read samples ``indices``, all of one input length, through memory together; the label each gets."""
    names = classifier_labels(model, task)
    chunks, _ = _batch_chunks(task, indices, split, model.rmt_config.segment_size)
    if not model.num_mem_tokens:  # without memory, the segments before the last change nothing
        chunks = iter(deque(chunks, maxlen=1))
    logits = model.stream(chunks).logits  # (B, num_labels)
    return [names[c] for c in logits.argmax(-1).tolist()]


@torch.no_grad()
def generate_streamed(model: RecurrentMemoryTransformer, chunks: Iterator[Any], num_tokens: int,
                      max_new_tokens: int, **generate_kwargs: Any) -> Any:
    """Greedy continuation (new token ids) of an input of ``num_tokens`` ids given as ``segment_size`` chunks.

    The full segments are streamed into memory (``model.stream``), then ``model.generate`` decodes
    from the last partial segment: what ``generate`` on the whole input does, without holding it.
    Chunks are lists of ids (one sample: returns its new ids) or (B, s) tensors, the B samples read
    together (returns B lists of new ids).
    """
    full = (num_tokens - 1) // model.rmt_config.segment_size  # segments read before the one decoding starts in
    memory = None
    if full and model.num_mem_tokens:
        memory = model.stream(_take(chunks, full)).memory
    else:  # without memory, the segments before the last change nothing
        for _ in range(full):
            next(chunks)
    last = next(chunks)
    batched = isinstance(last, torch.Tensor) and last.dim() == 2
    last = last if batched else torch.tensor([last])  # (B, 1..s)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(last, max_new_tokens=max_new_tokens, memory=memory, **generate_kwargs)
    new = out[:, last.shape[1]:].tolist()
    return new if batched else new[0]


@torch.no_grad()
def answer_full(model: Any, tokenizer: Any, inputs: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers of a full-attention causal LM to a batch of inputs (left-padded)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(map(len, inputs))
    ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in inputs])  # (B, T)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in inputs])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad)
    return [row[width:].tolist() for row in out]


def _take(chunks, count: int):
    for _ in range(count):
        yield next(chunks)


def _decode(tokenizer: Any, ids: list[int]) -> str:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos in ids:
        ids = ids[: ids.index(eos)]
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(ids)


# -- the grid ----------------------------------------------------------------------------------
def evaluate_babilong(readers: Sequence[Reader], tasks: Sequence[int], lengths: Sequence[str],
                      num_samples: int | Mapping[str, int],
                      babi: Any = None, background: Optional[str] = None, split: str = "test",
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 1,
                      prompt_source: str = "auto", answer_marker: str = "", progress: bool = True,
                      cells: Optional[str | Path] = None) -> dict:
    """Every reader on the first ``num_samples`` samples of every task x length (an int, or one per
    length: ``{"0k": 200, "1M": 20}``, every length given).

    ``cells``: a folder where each finished cell's answers are kept (written atomically), so that an
    interrupted evaluation run again with the same folder reads them back and computes only the
    rest. A kept cell is used only if everything its answers depend on is the same (the model's
    weights, its spec and settings, the samples, split, prompt, background and answer length);
    otherwise it is computed again and replaced.

    ``answer_marker`` goes after the question for RMTs (``"GEN"`` for the authors' checkpoints).
    ``batch_size`` samples are read at a time: a full-attention model's left-padded, an RMT's of
    one input length streamed together (each gets what it gets alone).
    Returns ``{"results": {model: {metric: {"qaN": {length: value or None}}}}, "outputs": ...}``;
    a cell a full-attention model cannot read (input longer than its context) is None.
    """
    from tqdm.auto import tqdm

    per_length = samples_per_length(num_samples, lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for length in lengths:
        context_length(length)  # a bad length fails before any model runs
    start = time.time()
    resumed = 0
    texts: dict[int, BackgroundText] = {}  # the background text read once per tokenizer
    results: dict = {r.name: {m: {} for m in METRICS} for r in readers}
    outputs: dict = {r.name: {} for r in readers}
    bar = tqdm(total=len(readers) * len(tasks) * sum(per_length.values()), unit="sample", desc="BABILong",
               disable=not progress)
    for reader in readers:
        key = id(reader.tokenizer)
        if key not in texts:
            texts[key] = background_text(background, reader.tokenizer)
        for qa in tasks:
            for length in lengths:
                task = BabilongTask(qa, tokenizer=reader.tokenizer, length=length, babi=babi, background=texts[key],
                                    prompt=reader.prompt, prompt_source=prompt_source,
                                    answer_marker=answer_marker if reader.is_rmt else "")
                available = task.num_samples(split)
                wanted = per_length[str(length)]
                count = wanted if available is None else min(wanted, available)
                kept = None if cells is None else Path(cells) / _file_name(reader.name) / f"qa{qa}-{length}.json"
                settings = None if kept is None else {
                    "reader": reader.spec, "info": reader.info, "prompt": reader.prompt, "weights": reader.weights_hash,
                    "count": count, "split": split, "max_new_tokens": max_new_tokens, "babi": str(babi),
                    "background": str(background), "prompt_source": prompt_source, "answer_marker": answer_marker}
                answers = _kept_answers(kept, settings)
                if answers is not None:
                    resumed += 1
                    bar.update(count)
                else:
                    answers = _answer_cell(reader, task, count, split, max_new_tokens, batch_size, bar)
                    if kept is not None and answers is not None:
                        kept.parent.mkdir(parents=True, exist_ok=True)
                        write_json_atomic(kept, {"settings": settings, "answers": answers})
                bar.update(wanted - count)
                cell = f"qa{qa}", str(length)
                if answers is None:
                    for m in METRICS:
                        results[reader.name][m].setdefault(cell[0], {})[cell[1]] = None
                    continue
                strict, lenient, rows = [], [], []
                for i, text in enumerate(answers):
                    s = task.sample(i, split)
                    strict.append(compare_answers(s.answer, text, s.question, task.labels))
                    lenient.append(lenient_match(s.answer, text))
                    rows.append({"question": s.question, "target": s.answer, "output": text, "correct": strict[-1]})
                results[reader.name]["accuracy"].setdefault(cell[0], {})[cell[1]] = sum(strict) / len(strict)
                results[reader.name]["lenient"].setdefault(cell[0], {})[cell[1]] = sum(lenient) / len(lenient)
                outputs[reader.name].setdefault(cell[0], {})[cell[1]] = rows
    bar.close()
    return {"results": results, "outputs": outputs, "seconds": round(time.time() - start, 1), "resumed_cells": resumed}


def _kept_answers(path: Optional[Path], settings: Optional[dict]) -> Optional[list[str]]:
    """The answers kept in ``path`` if they were computed with ``settings``; None to compute them."""
    if path is None or not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # damaged (not written by write_json_atomic): computed again
    same = json.loads(json.dumps(settings, default=str)) == kept.get("settings")
    return kept.get("answers") if same else None


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def samples_per_length(num_samples: int | Mapping[str, int], lengths: Sequence[str],
                       name: str = "num_samples") -> dict[str, int]:
    """``{length: samples}`` from one count for every length or a count per length (each >= 1, none
    missing); ``name`` is what errors call the argument."""
    if isinstance(num_samples, Mapping):
        given = {str(k): v for k, v in num_samples.items()}
        missing, extra = [str(n) for n in lengths if str(n) not in given], sorted(set(given) - set(map(str, lengths)))
        if missing or extra:
            raise ValueError(f"{name} per length must name exactly the lengths evaluated: "
                             f"{'missing ' + ', '.join(missing) if missing else 'not evaluated: ' + ', '.join(extra)}")
        counts = {str(n): given[str(n)] for n in lengths}
    else:
        counts = {str(n): num_samples for n in lengths}
    for length, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            where = f" for {length}" if isinstance(num_samples, Mapping) else ""
            raise ValueError(f"{name} must be >= 1, got {n!r}{where}")
    return counts


def _answer_cell(reader: Reader, task: BabilongTask, count: int, split: str, max_new_tokens: int,
                 batch_size: int, bar) -> Optional[list[str]]:
    """The generated answers of one cell, or None if a full-attention model cannot read its inputs."""
    answers: list[str] = []
    if reader.is_rmt:  # samples of one input length stream together, batch_size at a time, in sample order
        by_length: dict[int, list[int]] = {}
        for i in range(count):
            by_length.setdefault(task.num_tokens(i, split), []).append(i)
        found: dict[int, str] = {}
        classifier = is_classifier(reader.model)
        for group in by_length.values():
            for begin in range(0, len(group), batch_size):
                batch = group[begin:begin + batch_size]
                if classifier:
                    found.update(zip(batch, classify_rmt_batch(reader.model, task, batch, split)))
                else:
                    new = answer_rmt_batch(reader.model, task, batch, split, max_new_tokens)
                    found.update((i, _decode(reader.tokenizer, ids)) for i, ids in zip(batch, new))
                bar.update(len(batch))
        return [found[i] for i in range(count)]
    limit = reader.max_positions
    if limit is not None and max(task.num_tokens(i, split) for i in range(count)) + max_new_tokens > limit:
        bar.update(count)
        return None
    for begin in range(0, count, batch_size):  # one batch of inputs in memory at a time
        batch = [[t for piece in task.iter_pieces(i, split) for t in piece]
                 for i in range(begin, min(begin + batch_size, count))]
        answers += [_decode(reader.tokenizer, ids) for ids in answer_full(reader.model, reader.tokenizer, batch,
                                                                          max_new_tokens)]
        bar.update(len(batch))
    return answers


# -- reports -----------------------------------------------------------------------------------
def format_table(results: dict, tasks: Sequence[int], lengths: Sequence[str], metric: str = "accuracy") -> str:
    """The leaderboard layout: one block per model, tasks as rows, lengths as columns, percent correct."""
    blocks = []
    for name, by_metric in results.items():
        table = by_metric[metric]
        header = f"{'':<6}" + "".join(f"{str(length):>8}" for length in lengths)
        lines = [f"{name}: {metric} (%)", header]
        for qa in tasks:
            cells = [table[f"qa{qa}"][str(length)] for length in lengths]
            lines.append(f"{f'qa{qa}':<6}" + "".join(f"{_pct(v):>8}" for v in cells))
        means = [[table[f"qa{qa}"][str(length)] for qa in tasks] for length in lengths]
        lines.append(f"{'mean':<6}" + "".join(
            f"{_pct(sum(col) / len(col)) if None not in col else '-':>8}" for col in means))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n(- : longer than the model's context)"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f}"


def plot_heatmap(path: str | Path, results: dict, tasks: Sequence[int], lengths: Sequence[str],
                 title: str = "") -> None:
    """The leaderboard's heatmap: a panel per model and metric, tasks x lengths, percent correct."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(name, metric) for name in results for metric in METRICS]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 0.75 * len(lengths) * len(panels), 0.9 + 0.45 * len(tasks)),
                             squeeze=False)
    for ax, (name, metric) in zip(axes[0], panels):
        table = results[name][metric]
        grid = np.array([[np.nan if table[f"qa{qa}"][str(n)] is None else 100 * table[f"qa{qa}"][str(n)]
                          for n in lengths] for qa in tasks])
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for r in range(grid.shape[0]):
            for c in range(grid.shape[1]):
                ax.text(c, r, "-" if np.isnan(grid[r, c]) else f"{grid[r, c]:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(tasks)), [f"qa{qa}" for qa in tasks])
        ax.set_title(f"{name}\n{'strict' if metric == 'accuracy' else 'lenient'}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: str | Path, report: dict) -> Path:
    """Write ``report`` as ``babilong.json`` in ``out``; returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "babilong.json"
    write_text_atomic(path, json.dumps(report, indent=1, default=str) + "\n")
    return path
