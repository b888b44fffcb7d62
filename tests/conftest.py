"""Tiny random backbones (hidden 32, 2 layers, vocab 99) built in milliseconds, never downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

import rmt

VOCAB = 99
CLS, SEP = 1, 2
SINK = 1  # the tiny Llama's BOS, put first in every segment by the "llama-sink" kind


def tiny_gpt2(n_positions: int = 64) -> transformers.PreTrainedModel:
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                                  bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama(max_positions: int = 64) -> transformers.PreTrainedModel:
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert(max_positions: int = 64, num_labels: int = 3) -> transformers.PreTrainedModel:
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=max_positions, num_labels=num_labels)
    return transformers.BertForSequenceClassification(cfg).eval()


# "llama-sink": the decoder layout with a sink token first, [sink | read | segment | write]
BACKBONES = {"gpt2": tiny_gpt2, "llama": tiny_llama, "llama-sink": tiny_llama, "bert": tiny_bert}


# every memory mechanism of the registry; a new one is tested by every invariant by being listed here
MECHANISMS = ["rmt", "armt", "mt", "rmt+xl"]  # "+xl": with a Transformer-XL cache of 12 token positions


def wrap(kind: str, mechanism: str = "rmt", **config) -> rmt.RecurrentMemoryTransformer:
    if mechanism.endswith("+xl"):
        if kind == "bert":
            pytest.skip("xl_cache is for decoders")
        mechanism = mechanism[: -len("+xl")]
        config.setdefault("xl_cache", 12)
    config.setdefault("memory", mechanism)
    config.setdefault("num_mem_tokens", 4)
    config.setdefault("segment_size", 8)
    if kind == "bert":
        config.setdefault("cls_token_id", CLS)
        config.setdefault("sep_token_id", SEP)
    if kind.endswith("-sink"):
        config.setdefault("sink_token_id", SINK)
    if config["memory"] == "armt":
        config.setdefault("d_mem", 8)
    torch.manual_seed(0)
    model = rmt.RecurrentMemoryTransformer(BACKBONES[kind](), rmt.RMTConfig(**config)).eval()
    if config["memory"] == "armt":  # W_v starts at zero (nothing written); a trained-looking one writes
        with torch.no_grad():
            for block in getattr(model.mechanism, "inner", model.mechanism).assoc:  # inner: under an XL cache
                block.W_v.weight.normal_(0, 0.3)
    return model


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB - 1, (batch, length), generator=g)  # no special ids


def state_rows(state, rows):
    """The rows of a memory state (a tensor or a tuple of tensors, batch first)."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t[rows], state)


def max_diff(a, b) -> float:
    """Largest absolute difference between two memory states (tensors or tuples of tensors)."""
    from torch.utils._pytree import tree_leaves

    return max(float((x - y).abs().max()) for x, y in zip(tree_leaves(a), tree_leaves(b)))


@pytest.fixture(params=list(BACKBONES))
def kind(request) -> str:
    return request.param


@pytest.fixture(params=MECHANISMS)
def mechanism(request) -> str:
    return request.param


@pytest.fixture(params=["gpt2", "llama", "llama-sink"])
def decoder_kind(request) -> str:
    return request.param


def labels_for(kind: str, ids: torch.Tensor) -> torch.Tensor:
    """Labels for a batch: class ids for the BERT classifier, the ids themselves for decoders."""
    if kind == "bert":
        return torch.arange(ids.shape[0]) % 3
    return ids.clone()


def with_specials(ids: torch.Tensor) -> torch.Tensor:
    b = ids.shape[0]
    return torch.cat([torch.full((b, 1), CLS), ids, torch.full((b, 1), SEP)], dim=1)
