"""Attention maps of memory operations: the scaling report's Fig. 6 (Bulatov et al., 2023, arXiv 2304.11062).

`segment_attentions(model, input_ids)` reads one input through the wrapper's own segment loop
(`forward`, so `_advance`), with the backbone switched to eager attention for the call and asked
for its attention weights by a hook; it returns, per segment, the weights the backbone computed
(layers, heads, L, L), the row it read and the mechanism's layout of that row
(`MemoryMechanism.layout`: which positions are read or write memory, special tokens, tokens).

`attention_maps` averages each segment's weights over heads (one layer, or the mean over layers)
into one (L, L) map and says which memory operation the segment shows, given where the facts and
the question are: (a) *write* (the first fact goes into memory), (b) *keep* (a segment without a
fact), (c) *append* (a later fact is added), (d) *read* (the question segment; the position whose
output gives the answer reads memory). Its summary is the attention mass that the memory
positions whose outputs become the next memory put on the fact tokens against the other tokens.
`plot_attention_maps` draws the panels; `attention_json` is the memory<->token blocks.

Mechanisms: token memory (``rmt``: decoders ``[sink] read | segment | write``, encoders
``[CLS] memory segment [SEP]``) and the Memory Transformer (``mt``, nothing carried). With
associative memory (``armt``) the memory tokens after the segment write the state through layer
hooks and the tokens read it through the same hooks, outside attention: its maps show the writes,
not the reads. An XL cache adds earlier segments' keys to every row: not drawn (an error says so).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from ..recurrent import _base_model

MEMORY_ROLES = ("read", "write", "memory")
SPECIAL_ROLES = ("sink", "cls", "sep")
WRITERS = ("write", "memory")  # rows whose outputs become the next state
READ_KEYS = ("read", "memory")  # keys through which the tokens read the state
ROLE_LABELS = {"read": "r", "write": "w", "memory": "m", "sink": "<sink>", "cls": "[CLS]", "sep": "[SEP]"}
LABEL_POSITIONS_UP_TO = 72  # longer rows are labelled by block, not by position


@dataclass
class SegmentAttention:
    """What the backbone computed on one segment of the read."""

    attentions: torch.Tensor  # (layers, heads, L, L): row = query, column = key
    inputs_embeds: torch.Tensor  # (L, d): the laid-out row the backbone read
    attention_mask: torch.Tensor  # the mask it was given, (1, L) or (1, 1, L, L)
    blocks: list[tuple[str, int, int]]  # (role, start, end) of the row's blocks, in order
    tokens: tuple[int, int]  # [start, end) of the segment's tokens in the input

    def positions(self, *roles: str) -> list[int]:
        return [i for role, start, end in self.blocks if role in roles for i in range(start, end)]


@dataclass
class AttentionRead:
    segments: list[SegmentAttention]
    output: Any  # the wrapper's RMTOutput of the same read (predictions for causal LMs)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """The backbone with eager attention (the implementation that returns its weights), restored after."""
    base = _base_model(model.backbone)
    before = base.config._attn_implementation
    if before != "eager":
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            base.set_attn_implementation(before)


def _blocks(layout: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    blocks, at = [], 0
    for role, size in layout:
        blocks.append((role, at, at + size))
        at += size
    return blocks


@torch.no_grad()
def segment_attentions(model: nn.Module, input_ids: torch.Tensor) -> AttentionRead:
    """Read `input_ids` (1, T) with `model` once and return every segment's attention weights.

    The read is the model's own `forward`; hooks on the backbone ask it for ``output_attentions``
    and keep what it returns, so the maps are the weights of the real segments, memory included.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"attention maps read one sample: input_ids must be (1, T), got {tuple(input_ids.shape)}")
    if model.rmt_config.xl_cache:
        raise ValueError(f"attention maps of a model with xl_cache={model.rmt_config.xl_cache} are not drawn: its keys "
                         "include the cache of earlier segments")
    mechanism = model.mechanism
    try:
        fixed = sum(size for _, size in mechanism.layout(0))
    except NotImplementedError as err:
        raise ValueError(str(err)) from None
    captured: list[tuple] = []

    def ask(module, args, kwargs):
        return args, {**kwargs, "output_attentions": True}

    def keep(module, args, kwargs, out):
        if not out.attentions or out.attentions[0] is None:
            raise ValueError(f"{type(_base_model(model.backbone)).__name__} returned no attention weights with eager attention")
        captured.append((torch.stack([a[0] for a in out.attentions]).float(),  # (layers, H, L, L)
                         kwargs["inputs_embeds"][0], kwargs["attention_mask"]))

    predictions = model.head.per_token and model.head.has_loss
    with ExitStack() as stack:
        stack.enter_context(eager_attention(model))
        for handle in (model.backbone.register_forward_pre_hook(ask, with_kwargs=True),
                       model.backbone.register_forward_hook(keep, with_kwargs=True)):
            stack.callback(handle.remove)
        output = model(input_ids, return_logits=not model.head.per_token, return_predictions=predictions)
    segments, offset = [], 0
    for attentions, embeds, mask in captured:
        n = embeds.shape[0] - fixed  # the segment's tokens
        segments.append(SegmentAttention(attentions, embeds, mask, _blocks(mechanism.layout(n)), (offset, offset + n)))
        offset += n
    if offset != input_ids.shape[1]:
        raise RuntimeError(f"the backbone's calls covered {offset} of {input_ids.shape[1]} tokens: one call per segment "
                           f"was expected ({len(captured)} calls)")
    return AttentionRead(segments, output)


# ---------------------------------------------------------------------------------------------- maps


@dataclass
class Panel:
    """One segment's map and what it shows."""

    segment: int  # counted from 1
    operation: str  # write, keep, append, read (joined by '+'), or 'read/write' without facts
    title: str
    contents: str  # what the segment holds
    matrix: torch.Tensor  # (L, L) averaged over heads (and layers)
    blocks: list[tuple[str, int, int]]
    labels: list[str]  # one per position of the row
    facts: list[tuple[int, int, int]] = field(default_factory=list)  # (fact number, row start, row end)
    question: Optional[tuple[int, int]] = None  # row start, end
    answer_row: Optional[int] = None  # the row whose output gives the answer
    summary: dict[str, Any] = field(default_factory=dict)


def _mass(matrix: torch.Tensor, rows: Sequence[int], cols: Sequence[int]) -> Optional[float]:
    """Mean over `rows` of the attention summed over `cols` (None without rows)."""
    if not rows:
        return None
    return float(matrix[list(rows)][:, list(cols)].sum(-1).mean()) if cols else 0.0


def _overlap(span: tuple[int, int], tokens: tuple[int, int]) -> Optional[tuple[int, int]]:
    start, end = max(span[0], tokens[0]), min(span[1], tokens[1])
    return (start, end) if start < end else None


def attention_maps(read: AttentionRead, layer: Optional[int] = None, *, facts: Sequence[dict] = (),
                   question: Optional[tuple[int, int]] = None, answer_at: Optional[int] = None,
                   token_labels: Optional[Sequence[str]] = None, carries_memory: bool = True) -> list[Panel]:
    """One panel per segment: heads averaged, `layer` (an index; None: the mean over layers).

    Args:
        facts: ``{"text", "start", "end"}`` per fact, token offsets in the input (`Task.spans`).
        question: [start, end) of the question in the input.
        answer_at: the input position whose output gives the answer (a causal LM's last question
            token); None: the ``[CLS]`` row of the last segment (an encoder classifier's pooled position).
        token_labels: one label per input token (the tokenizer's words).
    """
    layers = read.segments[0].attentions.shape[0]
    if layer is not None and not -layers <= layer < layers:
        raise ValueError(f"layer {layer}: the backbone has {layers} layers (0..{layers - 1}, or all)")
    has_facts = bool(facts) or question is not None
    panels = []
    for j, seg in enumerate(read.segments):
        att = seg.attentions[layer] if layer is not None else seg.attentions.mean(0)  # (H, L, L)
        matrix = att.mean(0)  # (L, L)
        token_start = seg.positions("tokens")[0] if seg.positions("tokens") else 0
        to_row = token_start - seg.tokens[0]  # input offset -> row position
        labels = []
        for role, start, end in seg.blocks:
            for i in range(start, end):
                if role == "tokens":
                    labels.append(token_labels[i - to_row] if token_labels else str(i - to_row))
                elif role in MEMORY_ROLES:
                    labels.append(f"{ROLE_LABELS[role]}{i - start}")
                else:
                    labels.append(ROLE_LABELS.get(role, role))
        here = []
        for k, fact in enumerate(facts, 1):
            span = _overlap((fact["start"], fact["end"]), seg.tokens)
            if span:
                here.append((k, span[0] + to_row, span[1] + to_row))
        before = [k for k, fact in enumerate(facts, 1) if fact["end"] <= seg.tokens[0]]
        q = _overlap(question, seg.tokens) if question else None
        q_row = (q[0] + to_row, q[1] + to_row) if q else None
        answer_row = None
        if answer_at is not None and seg.tokens[0] <= answer_at < seg.tokens[1]:
            answer_row = answer_at + to_row
        elif answer_at is None and j == len(read.segments) - 1 and seg.positions("cls"):
            answer_row = seg.positions("cls")[0]
        asked = " ".join(labels[q_row[0] : q_row[1]]) if q_row else None
        where = labels[answer_row] if answer_row is not None else None
        operation, title, contents = _describe(j + 1, here, before, asked, where, has_facts, facts, carries_memory)
        panel = Panel(j + 1, operation, title, contents, matrix, seg.blocks, labels, here, q_row, answer_row)
        panel.summary = _summary(panel, seg)
        panels.append(panel)
    return panels


def _describe(s: int, here: list, before: list, question: Optional[str], answer_at: Optional[str],
              has_facts: bool, facts: Sequence[dict], carries_memory: bool) -> tuple[str, str, str]:
    if not has_facts:
        return "read/write", f"segment {s}: memory read and written", "no facts marked in this task"
    parts, what = [], []
    numbers = ", ".join(str(k) for k, _, _ in here)
    if here:
        parts.append(("append", f"fact {numbers} added to memory") if before else ("write", f"fact {numbers} into memory"))
        what += [f'fact {k}: "{facts[k - 1]["text"]}"' for k, _, _ in here]
    if question is not None or answer_at is not None:
        parts.append(("read", "the answer reads memory"))
        what.append((f'question: "{question}"' if question else "") + (f", answer read at {answer_at!r}" if answer_at else ""))
    if not parts:
        parts.append(("keep", "no fact, memory carried"))
        what.append("background text only")
    operation = "+".join(p for p, _ in parts)
    title = f"segment {s}: {operation}: " + "; ".join(t for _, t in parts)
    if not carries_memory:
        title += " (nothing carried)"
    return operation, title, "; ".join(what)


def _summary(panel: Panel, seg: SegmentAttention) -> dict[str, Any]:
    m = panel.matrix
    tokens = seg.positions("tokens")
    fact_cols = [i for _, start, end in panel.facts for i in range(start, end)]
    other_cols = [i for i in tokens if i not in set(fact_cols)]
    writers = seg.positions(*WRITERS)
    memory_cols, special_cols = seg.positions(*MEMORY_ROLES), seg.positions(*SPECIAL_ROLES)
    summary: dict[str, Any] = {
        "tokens": len(tokens), "fact_tokens": len(fact_cols),
        "fact_share": len(fact_cols) / len(tokens) if tokens else None,  # what uniform attention puts on the facts
        "write_on_facts": _mass(m, writers, fact_cols) if fact_cols else None,
        "write_on_other_tokens": _mass(m, writers, other_cols),
        "write_on_memory": _mass(m, writers, memory_cols),
        "write_on_special": _mass(m, writers, special_cols),
        "tokens_on_memory": _mass(m, tokens, seg.positions(*READ_KEYS)) if seg.positions(*READ_KEYS) else None,
    }
    on_facts, on_other = summary["write_on_facts"], summary["write_on_other_tokens"]
    # the facts' part of the writes' attention on tokens, over the part uniform attention would give them
    summary["fact_lift"] = (on_facts / (on_facts + on_other) / summary["fact_share"]
                            if on_facts is not None and on_facts + on_other > 0 else None)
    if panel.answer_row is not None:
        q_cols = list(range(*panel.question)) if panel.question else []
        row = [panel.answer_row]
        summary.update(answer_on_memory=_mass(m, row, memory_cols), answer_on_question=_mass(m, row, q_cols),
                       answer_on_other_tokens=_mass(m, row, [i for i in tokens if i not in set(q_cols)]))
    return summary


def describe_panel(panel: Panel) -> str:
    """One line: the operation and the summary numbers."""
    s = panel.summary
    parts = [panel.title]
    if s["write_on_other_tokens"] is not None:
        facts = "" if s["write_on_facts"] is None else (
            f"{s['write_on_facts']:.3f} on the facts ({s['fact_tokens']}/{s['tokens']} tokens: x{s['fact_lift']:.2f} "
            f"uniform), ")
        parts.append(f"memory writes attend {facts}{s['write_on_other_tokens']:.3f} on other tokens, "
                     f"{s['write_on_memory']:.3f} on memory, {s['write_on_special']:.3f} on special tokens")
    if s["tokens_on_memory"] is not None:
        parts.append(f"tokens on memory {s['tokens_on_memory']:.3f}")
    if "answer_on_memory" in s:
        parts.append(f"answer position on memory {s['answer_on_memory']:.3f}, on the question "
                     f"{s['answer_on_question']:.3f}")
    return " | ".join(parts)


def attention_json(panels: Sequence[Panel], digits: int = 4) -> list[dict]:
    """Per panel: the layout, the summary and the memory<->token blocks of the map."""
    out = []
    for p in panels:
        rows = [i for role, a, b in p.blocks if role in MEMORY_ROLES for i in range(a, b)]
        tokens = [i for role, a, b in p.blocks if role == "tokens" for i in range(a, b)]
        m = p.matrix.double()  # float32 rounded to 4 digits prints as 0.004399999976158142
        out.append({
            "segment": p.segment, "operation": p.operation, "title": p.title, "contents": p.contents,
            "blocks": [{"role": r, "start": a, "end": b} for r, a, b in p.blocks],
            "labels": p.labels,
            "facts": [{"fact": k, "start": a, "end": b} for k, a, b in p.facts],
            "question": list(p.question) if p.question else None, "answer_row": p.answer_row,
            "summary": {k: (round(v, digits) if isinstance(v, float) else v) for k, v in p.summary.items()},
            "memory_positions": rows, "token_positions": tokens,
            "memory_to_tokens": m[rows][:, tokens].round(decimals=digits).tolist() if rows else [],
            "tokens_to_memory": m[tokens][:, rows].round(decimals=digits).tolist() if rows else [],
        })
    return out


# ---------------------------------------------------------------------------------------------- plot

ROLE_COLORS = {"read": "tab:orange", "write": "tab:orange", "memory": "tab:orange", "sink": "tab:gray",
               "cls": "tab:gray", "sep": "tab:gray"}


def plot_attention_maps(path: str | Path, panels: Sequence[Panel], title: str = "") -> Path:
    """One heatmap per segment (rows: queries, columns: keys), memory and special positions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n + 0.8, 5.4), squeeze=False, layout="constrained")
    vmax = max(float(p.matrix.max()) for p in panels)
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)  # square root: the memory's small weights stay visible
    image = None
    for ax, p in zip(axes[0], panels):
        L = p.matrix.shape[0]
        image = ax.imshow(p.matrix.numpy(), cmap="viridis", norm=norm, interpolation="nearest")
        for role, start, end in p.blocks:
            if role != "tokens":
                for edge in (start - 0.5, end - 0.5):
                    ax.axhline(edge, color="white", lw=0.5)
                    ax.axvline(edge, color="white", lw=0.5)
        for k, start, end in p.facts:  # the fact's columns
            ax.add_patch(Rectangle((start - 0.5, -0.5), end - start, L, fill=False, edgecolor="red", lw=1.0))
        if p.answer_row is not None:
            ax.add_patch(Rectangle((-0.5, p.answer_row - 0.5), L, 1, fill=False, edgecolor="deepskyblue", lw=1.0))
        colors = _position_colors(p, L)
        if L <= LABEL_POSITIONS_UP_TO:
            ticks, labels = list(range(L)), p.labels
            size = max(3.0, min(6.0, 300 / L))
        else:
            ticks, labels, colors = _block_ticks(p)
            size = 6.0
        for set_ticks, set_labels, axis in ((ax.set_xticks, ax.set_xticklabels, ax.xaxis), (ax.set_yticks, ax.set_yticklabels, ax.yaxis)):
            set_ticks(ticks)
            set_labels(labels, fontsize=size, rotation=90 if axis is ax.xaxis else 0)
            for tick, color in zip(axis.get_ticklabels(), colors):
                tick.set_color(color)
        ax.set_title(f"{p.title}\n{_wrap(p.contents, 60)}", fontsize=7.5)
        ax.set_xlabel("key position", fontsize=7)
        ax.set_ylabel("query position", fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.6, pad=0.01, label="attention weight (square-root scale)")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=160)
    plt.close(fig)
    return path


def _position_colors(p: Panel, L: int) -> list[str]:
    colors = ["black"] * L
    for role, start, end in p.blocks:
        for i in range(start, end):
            colors[i] = ROLE_COLORS.get(role, "black")
    if p.question:
        for i in range(*p.question):
            colors[i] = "tab:blue"
    for _, start, end in p.facts:
        for i in range(start, end):
            colors[i] = "red"
    return colors


def _block_ticks(p: Panel) -> tuple[list[float], list[str], list[str]]:
    """Long rows: one tick per block (memory, special) and per fact."""
    ticks, labels, colors = [], [], []
    for role, start, end in p.blocks:
        ticks.append((start + end - 1) / 2)
        labels.append("tokens" if role == "tokens" else f"{role} ({end - start})" if end - start > 1 else ROLE_LABELS.get(role, role))
        colors.append(ROLE_COLORS.get(role, "black"))
    for k, start, end in p.facts:
        ticks.append((start + end - 1) / 2)
        labels.append(f"fact {k}")
        colors.append("red")
    order = sorted(range(len(ticks)), key=ticks.__getitem__)
    return [ticks[i] for i in order], [labels[i] for i in order], [colors[i] for i in order]


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
