"""Forward-pass FLOPs of a transformer with full attention and with RMT (scaling report, Fig. 2).

The count follows Hoffmann et al. 2022 ("Chinchilla", appendix F): a matrix product of
shapes ``(a, b) @ (b, c)`` costs ``2abc`` FLOPs, and the forward pass is the sum of the
per-layer terms (QKV projections, attention logits ``QK^T``, softmax, attention reduction,
output projection, dense FFN) over all layers, plus the final logits. Layer norms, biases,
residual additions and the causal mask are left out, as in that table.

RMT (Bulatov et al. 2022; Bulatov, Kuratov, Kapushev, Burtsev 2023, arXiv 2304.11062) reads
the input in segments of ``segment_size`` tokens. Every segment is one independent forward pass
over ``segment_size + num_mem_tokens`` positions, so the quadratic attention terms are paid per
segment and the total grows linearly with the number of segments.

Counting convention, chosen to reproduce the report's headline (x295 fewer FLOPs for OPT-125M and
x29 for OPT-175B at 2,048,000 tokens):

- ``segment_size`` counts input tokens only (as ``RMTConfig.segment_size`` does); memory tokens
  are extra positions on top of it. 2,048,000 tokens are exactly 4000 segments of 512, each
  processed as 512 + 10 = 522 positions. This gives x282 and x28.1 (within 5% of the report).
  The memory choice hardly matters: 502 tokens + 10 memory in 512 positions (4080 segments)
  also gives x282, and no memory at all gives x288 and x28.6.
- The token embedding is a table lookup and costs no FLOPs. Chinchilla's table prices it as a
  one-hot matrix product (``2 n V d``); with that term the OPT-125M ratio falls to x219, far from
  the report's x295, because at 125M parameters the two vocabulary products would be almost half
  of the per-token cost. The final logits (a real ``d x V`` product) are counted.
- A decoder RMT has a read and a write memory (``[read | segment | write]``), i.e. ``2m`` extra
  positions per segment: pass ``num_mem_tokens=2 * m`` to count that layout (x276 and x27.6).
- A partial last segment is counted at its own length (plus memory), not padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

OPT_VOCAB_SIZE = 50272
DEFAULT_SEGMENT_SIZE = 512
DEFAULT_NUM_MEM_TOKENS = 10
# 512, then 1k, 2k, ..., 2048k tokens: the report's x-axis (2,048,000 = 4000 segments of 512).
DEFAULT_LENGTHS: tuple[int, ...] = (512,) + tuple(1000 * 2**i for i in range(12))


@dataclass(frozen=True)
class TransformerShape:
    """The numbers a FLOPs count needs: depth, width, heads, FFN width, vocabulary."""

    name: str
    num_layers: int
    d_model: int
    num_heads: int
    ffn_dim: int
    vocab_size: int


def _opt(name: str, num_layers: int, d_model: int, num_heads: int) -> TransformerShape:
    return TransformerShape(name, num_layers, d_model, num_heads, 4 * d_model, OPT_VOCAB_SIZE)


# The published OPT configurations (Zhang et al. 2022, table 1). OPT-350M's 512-wide embedding
# projection is ignored: the count treats it as a plain 1024-wide model.
OPT_CONFIGS: dict[str, TransformerShape] = {
    shape.name: shape
    for shape in (
        _opt("opt-125m", 12, 768, 12),
        _opt("opt-350m", 24, 1024, 16),
        _opt("opt-1.3b", 24, 2048, 32),
        _opt("opt-2.7b", 32, 2560, 32),
        _opt("opt-6.7b", 32, 4096, 32),
        _opt("opt-13b", 40, 5120, 40),
        _opt("opt-30b", 48, 7168, 56),
        _opt("opt-66b", 64, 9216, 72),
        _opt("opt-175b", 96, 12288, 96),
    )
}


def get_config(name: str) -> TransformerShape:
    """An OPT configuration by name (``"opt-125m"``; ``"125m"`` and any case also work)."""
    key = name.lower()
    key = key if key.startswith("opt-") else f"opt-{key}"
    if key not in OPT_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(OPT_CONFIGS)}")
    return OPT_CONFIGS[key]


def from_hf_config(cfg: Any, name: str | None = None) -> TransformerShape:
    """The shape of any transformers ``PretrainedConfig``, to count your own model.

    Reads ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``vocab_size`` and the
    FFN width from ``intermediate_size`` (BERT, Llama), ``ffn_dim`` (OPT) or ``n_inner`` (GPT-2),
    defaulting to ``4 * hidden_size``. The count assumes a two-matrix FFN and full multi-head
    attention, so gated FFNs and grouped-query attention are approximated.
    """
    d_model = cfg.hidden_size
    ffn_dim = (
        getattr(cfg, "intermediate_size", None)
        or getattr(cfg, "ffn_dim", None)
        or getattr(cfg, "n_inner", None)
        or 4 * d_model
    )
    return TransformerShape(
        name=name or getattr(cfg, "name_or_path", "") or getattr(cfg, "model_type", "custom"),
        num_layers=cfg.num_hidden_layers,
        d_model=d_model,
        num_heads=cfg.num_attention_heads,
        ffn_dim=ffn_dim,
        vocab_size=cfg.vocab_size,
    )


def forward_flops(config: TransformerShape, seq_len: int) -> float:
    """FLOPs of one forward pass with full attention over ``seq_len`` positions."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    n, d, h = float(seq_len), config.d_model, config.num_heads
    # Q, K and V projections: three (n, d) @ (d, d) products.
    qkv = 2 * 3 * n * d * d
    # Attention logits Q K^T: per head (n, d/h) @ (d/h, n), over h heads.
    logits_qk = 2 * n * n * d
    # Softmax: exp, sum and divide over every (n, n) logit of every head.
    softmax = 3 * h * n * n
    # Attention reduction: per head (n, n) @ (n, d/h), over h heads.
    reduction = 2 * n * n * d
    # Output projection of the concatenated heads: (n, d) @ (d, d).
    out_proj = 2 * n * d * d
    # Dense FFN: (n, d) @ (d, ffn) up and (n, ffn) @ (ffn, d) down.
    ffn = 2 * n * 2 * d * config.ffn_dim
    # Final logits over the vocabulary: (n, d) @ (d, V). The embedding lookup costs nothing.
    final_logits = 2 * n * d * config.vocab_size
    layer = qkv + logits_qk + softmax + reduction + out_proj + ffn
    return config.num_layers * layer + final_logits


def num_segments(seq_len: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Segments RMT cuts ``seq_len`` tokens into (the last one may be partial)."""
    if segment_size < 1:
        raise ValueError(f"segment_size must be >= 1, got {segment_size}")
    return max(1, math.ceil(seq_len / segment_size))


def rmt_forward_flops(
    config: TransformerShape,
    seq_len: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    num_mem_tokens: int = DEFAULT_NUM_MEM_TOKENS,
) -> float:
    """FLOPs of RMT reading ``seq_len`` tokens: one forward pass per segment, memory included."""
    if num_mem_tokens < 0:
        raise ValueError(f"num_mem_tokens must be >= 0, got {num_mem_tokens}")
    if segment_size < 1:
        raise ValueError(f"segment_size must be >= 1, got {segment_size}")
    full, last = divmod(seq_len, segment_size)
    # Every full segment is the same forward pass over segment + memory positions.
    flops = full * forward_flops(config, segment_size + num_mem_tokens)
    # A partial last segment (or a whole input shorter than a segment) at its own length.
    if last or not full:
        flops += forward_flops(config, last + num_mem_tokens)
    return flops


def flops_ratio(
    config: TransformerShape,
    seq_len: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    num_mem_tokens: int = DEFAULT_NUM_MEM_TOKENS,
) -> float:
    """How many times fewer FLOPs RMT needs than full attention on ``seq_len`` tokens."""
    return forward_flops(config, seq_len) / rmt_forward_flops(
        config, seq_len, segment_size, num_mem_tokens
    )


def flops_report(
    config: TransformerShape,
    seq_len: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    num_mem_tokens: int = DEFAULT_NUM_MEM_TOKENS,
) -> dict[str, Any]:
    """Both counts and their ratio for one model and length, as a JSON-ready dict."""
    full = forward_flops(config, seq_len)
    rmt = rmt_forward_flops(config, seq_len, segment_size, num_mem_tokens)
    return {
        "model": config.name,
        "length": seq_len,
        "segment_size": segment_size,
        "num_mem_tokens": num_mem_tokens,
        "num_segments": num_segments(seq_len, segment_size),
        "full_attention_flops": full,
        "rmt_flops": rmt,
        "ratio": full / rmt,
    }


def plot_relative_flops(
    path: str | Path,
    configs: Iterable[TransformerShape] | None = None,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    num_mem_tokens: int = DEFAULT_NUM_MEM_TOKENS,
) -> Path:
    """Draw the report's Figure 2 to a PNG and return its path.

    One colour per model; solid lines are full attention, dashed lines RMT. Both are FLOPs
    divided by the model's full-attention FLOPs on one ``segment_size``-token input, on log-log
    axes, so the gap between a model's two lines is ``flops_ratio``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(OPT_CONFIGS.values() if configs is None else configs)
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.get_cmap("viridis")([i / max(1, len(configs) - 1) for i in range(len(configs))])
    for config, color in zip(configs, colors):
        base = forward_flops(config, segment_size)
        full = [forward_flops(config, n) / base for n in lengths]
        rmt = [rmt_forward_flops(config, n, segment_size, num_mem_tokens) / base for n in lengths]
        ax.plot(lengths, full, color=color, label=config.name)
        ax.plot(lengths, rmt, color=color, linestyle="--")
    ax.plot([], [], color="gray", label="full attention")
    rmt_label = f"RMT ({segment_size} tokens + {num_mem_tokens} memory per segment)"
    ax.plot([], [], color="gray", linestyle="--", label=rmt_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input length, tokens")
    ax.set_ylabel(f"FLOPs relative to a {segment_size}-token input")
    ax.set_title("Forward-pass FLOPs: full attention vs RMT")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
