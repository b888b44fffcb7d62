"""BABILong-style samples: layout, exact lengths, lazy million-token streaming, the metric."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tracemalloc

import pytest

from rmt.tasks import BabilongTask, Tracker, babilong_match, get_task, parse_babi, parse_length


@pytest.mark.parametrize("qa", [1, 2, 3, 4, 5])
def test_layout_exact_length_and_answer(qa):
    task = get_task(f"babilong-qa{qa}", length="2k", seed=0)
    for i in range(5):
        ex = task.example(i)
        prompt_len = len(ex["input_ids"]) - len(task.target_ids(ex))
        assert prompt_len == 2048 == task.num_tokens(i)
        text = task.decode(ex["input_ids"])
        assert "\n\n<context>\n" in text and "\n</context>\n\nQuestion: " in text
        assert text.endswith(f"\nAnswer: {ex['answer']}") and task.decode(task.target_ids(ex)) == " " + ex["answer"]
        # the story's facts are all in the context, in order, and the tracker answers from them
        s = task.sample(i)
        facts = [task.decode(f).strip() for f in s.facts]
        at = 0
        for f in facts:  # in story order (a fact may repeat, so search after the previous one)
            at = text.index(f, at) + len(f)
        story = parse_babi("".join(f"{k} {f}\n" for k, f in enumerate(facts, 1)))[0]
        assert Tracker(story.lines).answer(s.question)[0] == s.answer
    assert task.example(1) == get_task(f"babilong-qa{qa}", length="2k", seed=0).example(1)
    assert task.example(1) != get_task(f"babilong-qa{qa}", length="2k", seed=1).example(1)


def test_zero_length_is_facts_only_and_short_length_fails():
    task = get_task("babilong-qa1", length="0k")
    context = task.decode(task.example(0)["input_ids"]).split("<context>\n")[1].split("\n</context>")[0]
    assert context == "".join(task.decode(f) for f in task.sample(0).facts)
    with pytest.raises(ValueError, match="too short"):
        get_task("babilong-qa1", length=100).example(0)


def test_chunks_equal_the_example():
    task = get_task("babilong-qa2", length="4k", seed=3)
    ex = task.example(0)
    chunks = list(task.iter_chunks(0, 500, include_answer=True))
    assert all(len(c) == 500 for c in chunks[:-1])
    assert [t for c in chunks for t in c] == ex["input_ids"]


def test_million_token_sample_streams_in_flat_memory():
    task = get_task("babilong-qa1", length="1M", seed=0)
    assert task.num_tokens(0) == 2**20
    peaks = {}
    for length in ("64k", "1M"):
        t = BabilongTask(1, length=length, background=task.background)
        tracemalloc.start()
        total = sum(len(c) for c in t.iter_chunks(0, 4096))
        peaks[length] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert total == parse_length(length)
    # a 1M-token sample held as a list of ints would be > 8 MB; streaming stays well under 1 MB
    assert peaks["1M"] < 1_000_000 and peaks["1M"] < 2 * peaks["64k"] + 100_000, peaks


def test_babilong_metric():
    labels = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
    assert babilong_match("Kitchen.", "kitchen", "Where is Mary?", labels)
    assert babilong_match("The most recent location of Mary is the kitchen. Not the garden", "kitchen", "Where is Mary?", labels)
    assert not babilong_match("garden or kitchen", "kitchen", "Where is Mary?", labels)
    assert not babilong_match("I do not know. She might be in the kitchen", "kitchen", "Where is Mary?", labels)
    assert not babilong_match("She is, after a long walk, in the kitchen", "kitchen", "Where is Mary?", labels, max_words=5)
    assert babilong_match("the office, north of the garden", "office", "What is north of the garden?", labels)
    task = get_task("babilong-qa1", length=0)
    exs = [task.example(i) for i in range(2)]
    assert task.score([" " + exs[0]["answer"], task.encode("nowhere")], exs) == {"accuracy": 0.5}


def test_parse_length():
    assert parse_length("0k") == 0 and parse_length("4k") == 4096 and parse_length("1M") == 2**20
    assert parse_length(1000) == 1000
    with pytest.raises(ValueError, match="token count"):
        parse_length("lots")
