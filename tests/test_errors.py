"""Bad input gets a clear error naming the problem and the fix."""

import pytest
import torch
import transformers
from conftest import VOCAB, random_ids, tiny_bert, tiny_gpt2, tiny_llama, wrap

import rmt


@pytest.mark.parametrize("field,value,error", [
    ("num_mem_tokens", -1, ValueError), ("segment_size", 0, ValueError), ("bptt_depth", -2, ValueError),
    ("segment_size", 8.5, TypeError), ("num_mem_tokens", True, TypeError), ("alignment", "middle", ValueError),
    ("sink_token_id", -1, ValueError), ("sink_token_id", "<s>", TypeError),
])
def test_config_rejects_bad_values(field, value, error):
    with pytest.raises(error, match=field):
        rmt.RMTConfig(**{field: value})


@pytest.mark.parametrize("build,limit,fits", [(tiny_gpt2, 64, 64 - 2 * 4), (tiny_llama, 64, 64 - 2 * 4),
                                              (tiny_bert, 64, 64 - 4 - 2)])
def test_segment_too_long_says_the_largest_that_fits(build, limit, fits):
    config = rmt.RMTConfig(num_mem_tokens=4, segment_size=fits + 1, cls_token_id=1, sep_token_id=2)
    with pytest.raises(ValueError, match=f"has {limit}; the largest segment_size that fits is {fits}"):
        rmt.RecurrentMemoryTransformer(build(), config)
    config.segment_size = fits
    rmt.RecurrentMemoryTransformer(build(), config)  # the size it names does fit


def test_the_sink_token_counts_against_the_positions_and_must_exist():
    config = rmt.RMTConfig(num_mem_tokens=4, segment_size=64 - 2 * 4, sink_token_id=1)
    with pytest.raises(ValueError, match="the largest segment_size that fits is 55"):
        rmt.RecurrentMemoryTransformer(tiny_llama(), config)
    with pytest.raises(ValueError, match="sink_token_id=99 is outside the backbone's vocabulary of 99"):
        rmt.RecurrentMemoryTransformer(tiny_llama(), rmt.RMTConfig(num_mem_tokens=4, segment_size=8, sink_token_id=VOCAB))
    with pytest.raises(ValueError, match="sink_token_id is for decoders"):
        rmt.RecurrentMemoryTransformer(tiny_bert(), rmt.RMTConfig(cls_token_id=1, sep_token_id=2, sink_token_id=1))


def test_backbone_must_be_a_transformers_model():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        rmt.RecurrentMemoryTransformer(torch.nn.Linear(3, 3), rmt.RMTConfig())


def test_backbone_without_input_embeddings():
    class NoEmbeddings(transformers.GPT2LMHeadModel):
        def get_input_embeddings(self):
            raise NotImplementedError

    model = NoEmbeddings(tiny_gpt2().config)
    with pytest.raises(TypeError, match="no input embedding layer"):
        rmt.RecurrentMemoryTransformer(model, rmt.RMTConfig(segment_size=8))


def test_encoder_decoder_is_refused():
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37,
                                                                        num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="encoder-decoder"):
        rmt.RecurrentMemoryTransformer(t5, rmt.RMTConfig(segment_size=8))


def test_encoder_needs_special_token_ids():
    with pytest.raises(ValueError, match="cls_token_id=tokenizer.cls_token_id"):
        rmt.RecurrentMemoryTransformer(tiny_bert(), rmt.RMTConfig(segment_size=8))


def test_encoder_inputs_with_cls_already_are_refused():
    model = wrap("bert")
    ids = random_ids(2, 10)
    ids[:, 0] = 1  # [CLS]
    with pytest.raises(ValueError, match="without special tokens"):
        model(ids)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_bad_inputs(kind):
    model = wrap(kind)
    ids = random_ids(2, 12)
    with pytest.raises(ValueError, match="empty"):
        model(ids[:, :0])
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        model(ids[0])
    with pytest.raises(TypeError, match="integer token ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="vocabulary"):
        model(ids + VOCAB)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids, attention_mask=torch.ones(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="only 0"):
        model(ids, attention_mask=torch.full_like(ids, 2))
    with pytest.raises(ValueError, match=r"memory does not fit .* expected \(2, 4, 32\), got \(2, 3, 32\)"):
        model(ids, memory=torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match="labels must have|classification labels"):
        model(ids, labels=torch.zeros(3, 12, dtype=torch.long))


def test_generate_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="causal language model"):
        wrap("bert").generate(random_ids(1, 4))
    model = wrap("gpt2")
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(random_ids(1, 4), max_length=30)
    with pytest.raises(ValueError, match="positive"):
        model.generate(random_ids(1, 4), max_new_tokens=0)
    with pytest.raises(ValueError, match="alignment='left'"):
        wrap("gpt2", alignment="right").generate(random_ids(1, 12))
    empty = torch.ones(2, 5, dtype=torch.long)
    empty[1] = 0
    with pytest.raises(ValueError, match="a prompt has no tokens"):
        model.generate(random_ids(2, 5), attention_mask=empty)
    for option in ({"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}):
        with pytest.raises(ValueError, match="one sequence per prompt"):
            model.generate(random_ids(2, 5), max_new_tokens=4, **option)


def test_from_pretrained_on_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)


def test_classifier_refuses_an_empty_sample():
    model = wrap("bert")
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(ValueError, match="no tokens"):
        model(ids, attention_mask=mask, labels=torch.tensor([0, 1]))


def test_stream_chunks_must_keep_the_batch_size():
    model = wrap("gpt2")
    chunks = [random_ids(2, 8), random_ids(2, 8), random_ids(3, 8)]
    with pytest.raises(ValueError, match="a chunk of 3 rows came after chunks of 2"):
        model.stream(iter(chunks))
