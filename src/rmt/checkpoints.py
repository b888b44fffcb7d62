"""The BABILong authors' fine-tuned RMT checkpoints, loaded into `rmt`.

``booydar/rmt-gpt2-babilong-qa1`` (and ``-qa2`` ... ) were trained with ``MemoryCell`` /
``RecurrentWrapper`` of ``booydar/recurrent-memory-transformer`` (branch ``babilong-release``,
``modeling_rmt/language_modeling.py``). Their state dict holds ``memory_cell.memory`` (m, d), the
initial memory, and ``memory_cell.model.*``, the GPT-2 backbone. Their segment is
``[memory | tokens | memory]``: the same memory vectors are read before the tokens and written
after them, positions restart at 0 every segment, and the next memory is the last hidden state at
the write positions. That is `rmt`'s decoder layout without a sink token, so the weights load
as they are (the tests check the outputs against their cell). What differs:

* their batches pad each segment and write memory after the padding; `rmt` writes it after each
  sample's last real token (no difference for one sample, or batches of equal lengths);
* their fine-tuning put a ``GEN`` token after the question and the answer after it: evaluate
  them with the answer marker ``GEN`` (``rmt babilong --answer-marker GEN``);
* their segment size is not in the checkpoint (512 in the BABILong runs): pass ``segment_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import transformers

from .config import RMTConfig
from .recurrent import RecurrentMemoryTransformer

MEMORY_KEY = "memory_cell.memory"
BACKBONE_PREFIX = "memory_cell.model."
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def convert_babilong_rmt(source: str | Path | dict[str, torch.Tensor], backbone_config: Any = "gpt2",
                         segment_size: int = 512, out: Optional[str | Path] = None,
                         tokenizer: Any = None) -> RecurrentMemoryTransformer:
    """An `rmt` model from one of the authors' checkpoints.

    Args:
        source: a state dict, a weights file (``.safetensors`` or ``.bin``), a folder holding one,
            or a hub repository such as ``"booydar/rmt-gpt2-babilong-qa1"`` (needs network).
        backbone_config: the backbone's ``transformers`` config, or a name or folder to load it from
            (``"gpt2"``: the authors fine-tuned GPT-2 small).
        segment_size: tokens per segment (512 in the authors' BABILong runs).
        out: if given, the converted model is written there with ``save_pretrained`` (and the tokenizer).
        tokenizer: saved next to the model when ``out`` is given.
    """
    state = source if isinstance(source, dict) else _load_state(source)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if MEMORY_KEY not in state:
        raise ValueError(f"not a MemoryCell/RecurrentWrapper checkpoint: no {MEMORY_KEY!r} among its keys "
                         f"({', '.join(sorted(state)[:4])}, ...)")
    memory = state[MEMORY_KEY]  # (m, d)
    weights = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    config = backbone_config
    if not isinstance(config, transformers.PretrainedConfig):
        config = transformers.AutoConfig.from_pretrained(str(backbone_config))
    backbone = transformers.AutoModelForCausalLM.from_config(config)
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in backbone._tied_weights_keys] if _tied(backbone) else missing
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fit a {type(backbone).__name__} of this config: "
                         f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    model = RecurrentMemoryTransformer(backbone, RMTConfig(num_mem_tokens=memory.shape[0], segment_size=segment_size))
    with torch.no_grad():
        model.initial_memory.copy_(memory.to(model.initial_memory.dtype))
    model.eval()
    if out is not None:
        model.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return model


def _tied(model: Any) -> bool:
    return bool(getattr(model, "_tied_weights_keys", None)) and getattr(model.config, "tie_word_embeddings", False)


def _load_state(source: str | Path) -> dict[str, torch.Tensor]:
    path = Path(source)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {path}")
        path = found[0]
    elif not path.exists():
        if "/" not in str(source):
            raise FileNotFoundError(f"checkpoint {source!r} is neither a file, a folder nor a hub repository")
        path = _download(str(source))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _download(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    errors = []
    for name in WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as err:  # the other file name, or no network: say so below
            errors.append(f"{name}: {type(err).__name__}")
    raise FileNotFoundError(f"cannot download {repo!r} ({'; '.join(errors)}); with no network, pass a local file")
