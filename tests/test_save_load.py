"""save_pretrained / from_pretrained: every tensor round-trips; old saves load; bad saves are named."""

import json

import pytest
import torch
from conftest import random_ids, wrap
from safetensors.torch import save_file

import rmt


def perturb_all(model: rmt.RecurrentMemoryTransformer) -> None:
    """Every saved tensor of the wrapper (parameters, persistent buffers) moved off its constructor value."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=g).to(tensor.dtype) * 0.1)


def test_save_and_load_round_trip(kind, tmp_path, mechanism):
    model = wrap(kind, mechanism)
    perturb_all(model)  # a trained-looking model: backbone and every parameter outside it
    ids = random_ids(2, 27)
    before = model(ids)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"rmt_config.json", "model.safetensors", "backbone"} <= files
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # no pickles
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path).eval()
    assert loaded.rmt_config == model.rmt_config
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:  # every tensor, the mechanism's included
        assert torch.equal(ours[name], theirs[name]), name
    after = loaded(ids)
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    torch.testing.assert_close(after.memory, before.memory, atol=0, rtol=0)


def test_a_new_parameter_of_the_wrapper_is_saved(tmp_path):
    """Nothing is hand-picked: a tensor added to the mechanism is in the save and loads back."""
    model = wrap("gpt2")
    model.mechanism.register_parameter("extra", torch.nn.Parameter(torch.randn(3)))
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "model.safetensors")["mechanism.extra"], model.mechanism.extra.detach())


def test_tied_weights_are_written_once_and_stay_tied(tmp_path):
    model = wrap("gpt2")
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "backbone.transformer.wte.weight" in keys and "backbone.lm_head.weight" not in keys
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)
    assert loaded.backbone.lm_head.weight.data_ptr() == loaded.backbone.transformer.wte.weight.data_ptr()


def write_format_1(model: rmt.RecurrentMemoryTransformer, path) -> None:
    """What save_pretrained wrote before format 2 (rmt 0.1 on 2026-12-01)."""
    path.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(path / "backbone")
    save_file({"initial_memory": model.initial_memory.detach().contiguous()}, str(path / "memory.safetensors"))
    base = model.backbone
    model.rmt_config.to_json_file(path / "rmt_config.json", backbone_class=type(base).__name__, is_peft=False,
                                  rmt_format=1)
    data = json.loads((path / "rmt_config.json").read_text())
    data.pop("memory")  # format 1 had no memory field
    (path / "rmt_config.json").write_text(json.dumps(data))


def test_format_1_saves_still_load(kind, tmp_path):
    model = wrap(kind)
    perturb_all(model)
    write_format_1(model, tmp_path)
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 19)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_saves_that_do_not_fit_are_named(tmp_path):
    model = wrap("gpt2")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "rmt_config.json").read_text())
    (tmp_path / "rmt_config.json").write_text(json.dumps({**config, "num_mem_tokens": 3}))
    with pytest.raises(ValueError, match=r"model.safetensors does not fit .*mechanism.initial_memory"):
        rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)
    (tmp_path / "rmt_config.json").write_text(json.dumps({**config, "rmt_format": 9}))
    with pytest.raises(ValueError, match="rmt_format=9"):
        rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)
    (tmp_path / "rmt_config.json").write_text(json.dumps(config))
    backbone_config = json.loads((tmp_path / "backbone" / "config.json").read_text())
    (tmp_path / "backbone" / "config.json").write_text(json.dumps({**backbone_config, "n_layer": 1}))
    with pytest.raises(ValueError, match="unexpected .*h.1"):  # one layer fewer: not silently another network
        rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)
    (tmp_path / "backbone" / "config.json").write_text(json.dumps(backbone_config))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors cannot be read"):
        rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path / "nowhere")


def test_a_hub_repo_id_is_downloaded(tmp_path, monkeypatch):
    """Users with network pass ``user/repo``; here the download is a local copy."""
    model = wrap("llama")
    model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained("someone/rmt-tiny", revision="main")
    assert calls == [("someone/rmt-tiny", {"revision": "main"})]
    ids = random_ids(1, 11)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_the_callers_config_is_not_changed():
    from conftest import tiny_bert

    backbone = tiny_bert()
    backbone.config.cls_token_id, backbone.config.sep_token_id = 1, 2
    config = rmt.RMTConfig(num_mem_tokens=2, segment_size=8)
    model = rmt.RecurrentMemoryTransformer(backbone, config)
    assert config.cls_token_id is None and config.sep_token_id is None  # resolved on the model's own copy
    assert model.rmt_config.cls_token_id is not None


def test_push_to_hub_uploads_a_folder_that_loads(tmp_path, monkeypatch):
    """Users with network push with transformers' own push_to_hub; here the hub is a local folder."""
    import shutil

    from transformers.utils import hub

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

    uploaded = tmp_path / "hub"

    def fake_upload(self, folder, repo_id, **kwargs):
        shutil.copytree(folder, uploaded)
        return repo_id

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: type("Card", (), {"save": lambda self, p: None})())
    monkeypatch.setattr(type(wrap("gpt2")), "_upload_modified_files", fake_upload)
    model = wrap("gpt2", "armt")
    assert model.push_to_hub("someone/armt-tiny") == "someone/armt-tiny"
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(uploaded)
    ids = random_ids(1, 13)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
