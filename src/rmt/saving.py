"""save_pretrained / from_pretrained: every tensor of the wrapper that is not a frozen base weight.

A saved folder (format 2)::

    rmt_config.json      the RMTConfig, the backbone's class, rmt_format
    model.safetensors    the wrapper's state dict: backbone.*, mechanism.*, anything added later
                         (a peft backbone: only its adapter, not the frozen base; tied copies once)
    backbone/            the backbone's config.json (a peft backbone: its adapter_config.json)

The weights file has the wrapper's own key names, so the transformers `Trainer` (which saves through
`save_pretrained` and reloads checkpoints with ``model.load_state_dict``) resumes and restores the
best model with it. Format 1 (``memory.safetensors`` with the initial memory beside a whole
transformers save in ``backbone/``) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "rmt_config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_MEMORY_NAME = "memory.safetensors"
BACKBONE_DIR = "backbone"
FORMAT = 2


class RMTPretrainedConfig(transformers.PretrainedConfig):
    """What transformers sees as the wrapper's config: the RMTConfig as a dict and the backbone's class."""

    model_type = "rmt"

    def __init__(self, rmt: Optional[dict] = None, backbone_class: Optional[str] = None, **kwargs: Any):
        self.rmt = dict(rmt or {})
        self.backbone_class = backbone_class
        super().__init__(**kwargs)


def _adapter_names(model: Any) -> set[str]:
    return set(getattr(model.backbone, "peft_config", {}) or {})


def _aliases(state: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose tensor shares storage with an earlier key (tied weights): written once."""
    seen: dict[tuple, str] = {}
    aliases = set()
    for key, tensor in state.items():
        ident = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            aliases.add(key)
        else:
            seen[ident] = key
    return aliases


def _saved(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a state dict that a save holds."""
    adapters = _adapter_names(model)
    aliases = _aliases(state)

    def kept(key: str) -> bool:
        if key in aliases:
            return False
        if adapters and key.startswith("backbone."):  # a peft backbone: its adapter (and modules_to_save) only
            return bool(adapters & set(key.split(".")))
        return True

    return {k: v for k, v in state.items() if kept(k)}


def unsaved_keys(model: Any) -> set[str]:
    state = model.state_dict()
    return set(state) - set(_saved(model, state))


def save(model: Any, path: Path, state: Optional[dict] = None, is_main_process: bool = True) -> None:
    if not is_main_process:
        return
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state is None else state
    tensors = {k: v.detach().cpu().contiguous() for k, v in _saved(model, state).items()}
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt", "rmt_format": str(FORMAT)})
    backbone_dir = path / BACKBONE_DIR
    backbone_dir.mkdir(exist_ok=True)
    is_peft = bool(_adapter_names(model))
    base = model.backbone.get_base_model() if is_peft else model.backbone
    if is_peft:
        for name, cfg in model.backbone.peft_config.items():
            cfg.save_pretrained(str(backbone_dir if name == "default" else backbone_dir / name))
    else:
        base.config.save_pretrained(backbone_dir)
        if getattr(base, "generation_config", None) is not None and base.can_generate():
            base.generation_config.save_pretrained(backbone_dir)
    legacy = path / LEGACY_MEMORY_NAME
    if legacy.exists():  # an older save in the same folder: its memory file would contradict this one
        legacy.unlink()
    model.rmt_config.to_json_file(path / CONFIG_NAME, backbone_class=type(base).__name__,
                                  is_peft=is_peft, rmt_format=FORMAT)


def _local_folder(path: Any, hub_kwargs: dict) -> Path:
    """A local folder as given, or a hub repo id downloaded (users with network)."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ValueError(f"{path} is a file; from_pretrained takes the folder written by save_pretrained")
    if isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(path, **hub_kwargs))
        except Exception as err:  # offline, unknown repo, no access: say which
            raise OSError(f"{path} is not a local folder and could not be fetched from the hub ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    raise FileNotFoundError(f"{path} not found: give a folder written by RecurrentMemoryTransformer.save_pretrained "
                            "or a hub repo id (user/name)")


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file} cannot be read as safetensors ({err}); the save is damaged: save the model again") from None


def load(cls: Any, path: Any, backbone: Optional[Any], kwargs: dict) -> Any:
    from .config import RMTConfig

    hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "token", "cache_dir") if k in kwargs}
    folder = _local_folder(path, hub_kwargs)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: is {folder} a folder written by "
                                "RecurrentMemoryTransformer.save_pretrained?")
    try:
        data = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the save is damaged") from None
    class_name = data.pop("backbone_class", None)
    is_peft = data.pop("is_peft", False)
    version = data.pop("rmt_format", 1)
    if version not in (1, FORMAT):
        raise ValueError(f"{config_file} has rmt_format={version!r}; this rmt reads formats 1 and {FORMAT}: "
                         "upgrade rmt to load it")
    config = RMTConfig.from_dict(data)
    backbone_dir = folder / BACKBONE_DIR
    dtype = kwargs.pop("dtype", None)
    if backbone is None and is_peft:
        raise ValueError(f"{folder} holds a peft adapter, not a whole backbone: pass the base model, "
                         "from_pretrained(path, backbone=base_model)")
    if backbone is None:
        backbone_cls = getattr(transformers, class_name or "", None)
        if backbone_cls is None:
            raise ValueError(f"{folder} was saved with backbone class {class_name!r}, which this transformers "
                             f"{transformers.__version__} does not have")
        if version == 1:
            backbone = backbone_cls.from_pretrained(backbone_dir, **kwargs)
        else:
            backbone = backbone_cls._from_config(backbone_cls.config_class.from_pretrained(backbone_dir), **kwargs)
    elif is_peft:
        from peft import PeftModel

        if version == 1:
            backbone = PeftModel.from_pretrained(backbone, backbone_dir)
        else:
            from peft import PeftConfig, get_peft_model

            peft_config = PeftConfig.from_pretrained(str(backbone_dir))
            peft_config.inference_mode = True  # as PeftModel.from_pretrained: the adapter loads frozen
            backbone = get_peft_model(backbone, peft_config)
    model = cls(backbone, config)
    if version == 1:
        state = _read_tensors(folder / LEGACY_MEMORY_NAME)
        _load_into(model, {"mechanism.initial_memory": state["initial_memory"]}, folder / LEGACY_MEMORY_NAME,
                   partial=True)
    else:
        _load_into(model, _read_tensors(folder / WEIGHTS_NAME), folder / WEIGHTS_NAME, partial=False)
    if dtype is not None:
        model.to(dtype)
    return model.eval()  # as transformers' from_pretrained: dropout off until .train()


def _load_into(model: Any, tensors: dict[str, torch.Tensor], file: Path, partial: bool) -> None:
    """Copy saved tensors into the model: every key must exist with the same shape, and (unless
    `partial`) every tensor a save holds must be there."""
    state = model.state_dict()
    unexpected = sorted(set(tensors) - set(state))
    wrong = [f"{k}: saved {tuple(v.shape)}, model {tuple(state[k].shape)}" for k, v in tensors.items()
             if k in state and tuple(v.shape) != tuple(state[k].shape)]
    missing = sorted(set(_saved(model, state)) - set(tensors)) if not partial else []
    if unexpected or wrong or missing:
        parts = ([f"unexpected {unexpected[:5]}"] if unexpected else []) + ([f"shape mismatch {wrong[:5]}"] if wrong else []) \
            + ([f"missing {missing[:5]}"] if missing else [])
        raise ValueError(f"{file} does not fit the model built from {file.parent / CONFIG_NAME}: {'; '.join(parts)}; "
                         "was the file or the config edited, or copied from another save?")
    model.load_state_dict(tensors, strict=False)
