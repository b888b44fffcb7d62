"""Byte tokenizer, background text and collation."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from rmt.data import BackgroundText, ByteTokenizer, background_text, collate_causal_lm, collate_classification, rechunk


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    text = "Héllo, wörld!"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text
    assert tok.vocab_size == 262 and len(tok) == 262
    specials = [tok.pad_token_id, tok.sep_token_id, tok.cls_token_id]
    assert len(set(specials)) == 3 and all(i >= 256 for i in specials)
    assert tok.decode([*tok.encode("a"), tok.sep_token_id]) == "a<sep>"
    assert tok.decode([tok.cls_token_id, *tok.encode("a")], skip_special_tokens=True) == "a"
    assert tok.encode("a", add_special_tokens=True) == [tok.bos_token_id, 97, tok.eos_token_id]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([999])


def test_bundled_background_exact_lengths_and_seeds():
    bg = background_text()
    assert len(bg) > 10_000  # sentences
    for n in (0, 1, 17, 1000, 5000):
        assert len(bg.tokens(n, seed=3)) == n
    assert bg.tokens(500, seed=1) == bg.tokens(500, seed=1)
    assert bg.tokens(500, seed=1) != bg.tokens(500, seed=2)
    text = bg.tokenizer.decode(bg.tokens(2000, seed=5))
    assert text.count(" the ") > 5  # real English, not random bytes
    chunks = list(bg.iter_tokens(10_000, seed=5, chunk_tokens=512))
    assert [len(c) for c in chunks[:-1]] == [512] * 19 and len(chunks[-1]) == 10_000 - 19 * 512
    assert [t for c in chunks for t in c][:2000] == bg.tokens(2000, seed=5)


def test_background_cycles_through_a_small_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("One sentence here. Another one there!\n\nA third?")
    bg = background_text(tmp_path)
    assert len(bg) == 3
    text = bg.tokenizer.decode(bg.tokens(200, seed=0))
    assert len(bg.tokens(200, seed=0)) == 200 and "Another one there!" in text and "  " not in text


def test_background_facts_inserted_at_sentence_boundaries():
    bg = background_text()
    facts = [bg.encode(" FACTONE."), bg.encode(" FACTTWO.")]
    pieces = list(bg.iter_with_facts(3000, facts, [0, 1500], seed=9))
    ids = [t for p in pieces for t in p]
    assert len(ids) == 3000 + sum(map(len, facts))
    text = bg.tokenizer.decode(ids)
    assert text.startswith(" FACTONE.") and text.index("FACTTWO") > 1400
    assert text[text.index(" FACTTWO") - 1] in ".!?\"'’”)]"  # inserted after a sentence end
    with pytest.raises(ValueError, match="sorted"):
        list(bg.iter_with_facts(10, facts, [5, 2], seed=0))


def test_background_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="neither an existing path"):
        background_text("no_such_file_anywhere")
    with pytest.raises(ValueError, match="not found"):
        background_text([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="empty"):
        BackgroundText(["   "])


def test_rechunk():
    assert list(rechunk(iter([[1, 2, 3], [4], [5, 6, 7, 8, 9]]), 4)) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_collate_right_pads_and_masks():
    batch = collate_causal_lm([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                               {"input_ids": [8], "labels": [8]}], pad_token_id=256)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 256, 256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    batch = collate_classification([{"input_ids": [1, 2], "label": 3}, {"input_ids": [4], "label": 0}], 0)
    assert batch["labels"].tolist() == [3, 0] and batch["labels"].dtype == torch.long


def test_background_sentences_longer_than_the_models_context_encode_without_a_warning(caplog):
    """Background text is cut into segments, so a long sentence is not an error: transformers'
    'Token indices sequence length is longer than the specified maximum' would only be noise."""
    from rmt.data.word_tokenizer import word_tokenizer

    tok = word_tokenizer.__wrapped__(500)  # a fresh one: transformers warns once per tokenizer
    tok.model_max_length = 4
    text = background_text(None, tok)
    long = next(i for i in range(len(text)) if len(text.sentence(i).split()) > 8)
    with caplog.at_level("WARNING"):
        ids = text.encode(text.sentence(long))
    assert not [r for r in caplog.records if "sequence length" in r.getMessage()]
    assert len(ids) > 4 and ids == tok.encode(text.sentence(long), add_special_tokens=False)
