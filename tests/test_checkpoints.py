"""The authors' MemoryCell/RecurrentWrapper checkpoints load into rmt and give the same outputs as their cell."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers

import rmt
from rmt.checkpoints import convert_babilong_rmt

M, SEG = 4, 8


def _their_checkpoint():
    """A state dict with the authors' key layout over a tiny GPT-2, and the GPT-2 itself."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=98, eos_token_id=98)
    gpt2 = transformers.GPT2LMHeadModel(cfg).eval()
    memory = torch.randn(M, 32) * gpt2.get_input_embeddings().weight.std()
    state = {"memory_cell.memory": memory, **{f"memory_cell.model.{k}": v for k, v in gpt2.state_dict().items()}}
    return state, gpt2, cfg


@torch.no_grad()
def _their_forward(gpt2, memory, ids):
    """Their RecurrentWrapper.forward, left-aligned segments: [mem | seg | mem] per call, logits of the tokens."""
    state = memory.unsqueeze(0)  # (1, m, d)
    logits = []
    for start in range(0, ids.shape[1], SEG):
        embeds = gpt2.get_input_embeddings()(ids[:, start:start + SEG])
        out = gpt2(inputs_embeds=torch.cat([state, embeds, state], dim=1), output_hidden_states=True)
        logits.append(out.logits[:, M:-M])
        state = out.hidden_states[-1][:, -M:]
    return torch.cat(logits, dim=1), state


def test_their_layout_gives_the_same_outputs_as_ours(tmp_path):
    state, gpt2, cfg = _their_checkpoint()
    model = convert_babilong_rmt(state, backbone_config=cfg, segment_size=SEG, out=tmp_path / "converted")
    assert model.num_mem_tokens == M and model.rmt_config.segment_size == SEG
    ids = torch.randint(0, 98, (1, 3 * SEG + 3))  # three full segments and a partial one
    theirs, their_memory = _their_forward(gpt2, state["memory_cell.memory"], ids)
    ours = model(ids)
    torch.testing.assert_close(ours.logits, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.memory, their_memory, atol=1e-5, rtol=1e-4)
    # the written folder is an ordinary rmt save
    again = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path / "converted")
    torch.testing.assert_close(again(ids).logits, ours.logits)


def test_files_and_folders_and_bad_checkpoints(tmp_path):
    state, gpt2, cfg = _their_checkpoint()
    torch.save(state, tmp_path / "pytorch_model.bin")
    ids = torch.randint(0, 98, (1, 2 * SEG))
    a = convert_babilong_rmt(tmp_path, backbone_config=cfg, segment_size=SEG)
    b = convert_babilong_rmt(tmp_path / "pytorch_model.bin", backbone_config=cfg, segment_size=SEG)
    torch.testing.assert_close(a(ids).logits, b(ids).logits)
    with pytest.raises(ValueError, match="not a MemoryCell"):
        convert_babilong_rmt({"transformer.wte.weight": torch.zeros(99, 32)}, backbone_config=cfg)
    with pytest.raises(ValueError, match="does not fit"):
        convert_babilong_rmt({**state, "memory_cell.model.extra.weight": torch.zeros(1)}, backbone_config=cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        convert_babilong_rmt(tmp_path / "empty", backbone_config=cfg)
