"""BABILong on real bAbI: layout, exact lengths, fact order and spread, lazy 10M-token streaming, scoring."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import tracemalloc
from pathlib import Path

import pytest

from rmt.tasks import BabilongTask, Tracker, babilong_prompt, context_length, get_task, parse_babi
from rmt.data.word_tokenizer import word_tokenizer
from rmt.tasks.babilong import write_dataset

BABI_DIR = Path(__file__).parents[2] / "shared" / "babi" / "en"
needs_babi = pytest.mark.skipif(not BABI_DIR.is_dir(), reason=f"no bAbI data at {BABI_DIR}")


def test_lengths_are_the_benchmarks():
    assert context_length("0k") == 0 and context_length("1k") == 700 and context_length("4k") == 3700
    assert context_length("128k") == 127_700 and context_length("1M") == 999_700 and context_length("10M") == 9_999_700
    assert context_length(1234) == 1234 == context_length("1234")
    with pytest.raises(ValueError, match="not a BABILong length"):
        context_length("lots")
    with pytest.raises(ValueError, match=">= 0"):
        context_length(-1)


@needs_babi
@pytest.mark.parametrize("qa", [1, 3, 5, 8, 19])
def test_layout_exact_length_and_facts_in_order(qa):
    task = get_task(f"babilong-qa{qa}", length="2k", babi=BABI_DIR, seed=0)
    prompt = babilong_prompt(qa)
    for i in range(3):
        s = task.sample(i)
        context = [t for piece in task.iter_context(i) for t in piece]
        assert len(context) == 1700 and task.num_tokens(i) == len(s.head) + 1700 + len(s.tail)
        text = task.decode(task.example(i)["input_ids"])
        assert text.startswith(prompt.instruction) and prompt.post_prompt in text
        assert f"\n</context>\n\nQuestion: {s.question} {s.answer}" in text  # no "Answer:", the answer scored
        facts, q = task.question(i)
        assert (q.text, q.answer) == (s.question, s.answer) and len(facts) <= 1700 // 8
        at = 0
        for f in facts:  # every fact of the story, in file order
            at = text.index(f.text, at) + len(f.text)
    assert task.example(1) == get_task(f"babilong-qa{qa}", length="2k", babi=BABI_DIR, seed=0).example(1)
    assert task.example(1) != get_task(f"babilong-qa{qa}", length="2k", babi=BABI_DIR, seed=1).example(1)


@needs_babi
def test_facts_are_spread_over_the_whole_context():
    task = BabilongTask(1, length="16k", babi=BABI_DIR)
    where = []
    for i in range(20):
        s = task.sample(i)
        where += [p / s.noise_tokens for p in s.positions]
    assert min(where) < 0.1 and max(where) > 0.9 and 0.35 < sum(where) / len(where) < 0.65


@needs_babi
def test_zero_length_is_the_facts_alone_and_samples_that_do_not_fit_are_left_out():
    task = BabilongTask(2, length="0k", babi=BABI_DIR, prompt="none")
    facts, q = task.question(0)
    assert task.decode(task.example(0)["input_ids"]) == "".join(" " + f.text for f in facts) + f" {q.text} {q.answer}"
    assert task.num_samples() == 1000
    short = BabilongTask(3, length="1k", babi=BABI_DIR)  # qa3 stories run to 100+ facts: 700 tokens hold 87
    assert 0 < short.num_samples() < 1000
    assert all(len(f) <= 87 and sum(len(short.encode(" " + x.text)) for x in f) <= 700 for f, _ in short.questions())
    with pytest.raises(ValueError, match="fit in a context of 30 tokens"):
        BabilongTask(3, length=30, babi=BABI_DIR).sample(0)
    with pytest.raises(ValueError, match="has 1000 samples"):
        task.sample(1000)


def test_generated_stories_need_no_data():
    task = get_task("babilong-qa1", length="1k", babi="generated")
    s = task.sample(0)
    facts = [task.decode(f).strip() for f in s.facts]
    story = parse_babi("".join(f"{k} {f}\n" for k, f in enumerate(facts, 1)))[0]
    assert Tracker(story.lines).answer(s.question)[0] == s.answer
    with pytest.raises(ValueError, match="qa1-qa5 only"):
        BabilongTask(7, babi="generated")


def test_chunks_equal_the_example():
    task = get_task("babilong-qa2", length="4k", seed=3, babi="generated")
    ex = task.example(0)
    chunks = list(task.iter_chunks(0, 500, include_answer=True))
    assert all(len(c) == 500 for c in chunks[:-1])
    assert [t for c in chunks for t in c] == ex["input_ids"]


def test_ten_million_token_sample_streams_in_flat_memory():
    task = get_task("babilong-qa1", length="10M", seed=0, babi="generated", prompt="none")
    assert task.num_tokens(0) == 9_999_700 + len(task.sample(0).tail)
    peaks = {}
    for length in ("64k", "1M"):
        t = BabilongTask(1, length=length, background=task.background, babi="generated", prompt="none")
        tracemalloc.start()
        total = sum(len(c) for c in t.iter_chunks(0, 4096))
        peaks[length] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert total == t.num_tokens(0)
    # a 1M-token sample held as a list of ints would be > 8 MB; streaming stays well under 1 MB
    assert peaks["1M"] < 1_000_000 and peaks["1M"] < 2 * peaks["64k"] + 100_000, peaks


@needs_babi
def test_scores_both_metrics_on_generated_text():
    task = get_task("babilong-qa1", length=0, babi=BABI_DIR)
    exs = [task.example(i) for i in range(3)]
    preds = [f"The most recent location is {exs[0]['answer']}.", "bathroom\nkitchen", task.encode(" nowhere")]
    scores = task.score(preds, exs)
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["lenient"] == pytest.approx((1 + (exs[1]["answer"] in ("bathroom", "kitchen"))) / 3)


@needs_babi
def test_written_dataset_has_the_published_schema(tmp_path):
    tasks = [BabilongTask(qa, length="1k", babi=BABI_DIR) for qa in (1, 2)]
    files = write_dataset(tmp_path, tasks, 4)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["1k/qa1.jsonl", "1k/qa2.jsonl"]
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"input", "question", "target"} for r in rows)
    facts, q = tasks[0].question(0)
    assert rows[0]["question"] == q.text and rows[0]["target"] == q.answer
    assert all(f.text in rows[0]["input"] for f in facts) and rows[0]["input"] == rows[0]["input"].strip()
    # byte tokenizer: the text is the context exactly, stripped of its leading space as published
    assert len(tasks[0].encode(" " + rows[0]["input"])) == 700


def test_answer_marker_follows_the_question():
    task = BabilongTask(1, length=0, babi="generated", prompt="none", answer_marker="GEN")
    s = task.sample(0)
    assert task.decode(s.tail) == f" {s.question}GEN"


@needs_babi
@pytest.mark.parametrize("prompt,length", [("none", 300), ("official", 3000)])
def test_fill_input_makes_the_whole_sample_the_length(prompt, length):
    task = BabilongTask(1, length=length, babi=BABI_DIR, prompt=prompt, fill="input")
    for i in range(3):
        assert len(task.example(i)["input_ids"]) == length  # prompt, context, question and answer
    published = BabilongTask(1, length=length, babi=BABI_DIR, prompt=prompt)
    assert published.num_tokens(0) - len(published.sample(0).head) - len(published.sample(0).tail) == length
    facts_only = BabilongTask(1, length=0, babi=BABI_DIR, prompt="none", fill="input")
    assert facts_only.example(0) == BabilongTask(1, length=0, babi=BABI_DIR, prompt="none").example(0)
    with pytest.raises(ValueError, match="fill must be 'context'"):
        BabilongTask(1, babi=BABI_DIR, fill="sample")
    with pytest.raises(ValueError, match="fit in a context of 20 tokens"):
        BabilongTask(1, length=20, babi=BABI_DIR, fill="input", prompt="official").sample(0)


@needs_babi
def test_train_indices_wrap_around_the_file_with_new_layouts():
    task = BabilongTask(1, length=200, babi=BABI_DIR, prompt="none")
    n = task.num_samples("train")
    assert task.question(n + 5, "train") == task.question(5, "train")
    assert task.example(n + 5, "train")["input_ids"] != task.example(5, "train")["input_ids"]  # another background
    with pytest.raises(ValueError, match=f"has {task.num_samples()} samples"):
        task.sample(task.num_samples(), "test")


def test_classification_samples_are_the_input_and_the_answers_label():
    tok = word_tokenizer(2000)
    lm = BabilongTask(1, tokenizer=tok, length=120, babi="generated", prompt="none", fill="input")
    cls = BabilongTask(1, tokenizer=tok, length=120, babi="generated", prompt="none", fill="input", kind="classification")
    assert cls.label_names == list(cls.labels) and cls.num_labels == 6
    for i in range(5):
        ex = cls.example(i, "train")
        assert len(ex["input_ids"]) == 120  # fill="input": context and question are the whole length, no answer
        assert cls.label_names[ex["label"]] == ex["answer"] == lm.sample(i, "train").answer
        assert tok.decode(ex["input_ids"]).endswith(lm.sample(i, "train").question.lower().replace("?", " ?"))
    examples = [cls.example(i) for i in range(4)]
    right = [e["label"] for e in examples]
    assert cls.score(right, examples) == {"accuracy": 1.0, "lenient": 1.0}
    wrong = [(label + 1) % 6 for label in right]
    assert cls.score(wrong, examples)["accuracy"] == 0.0


def test_classification_needs_single_label_answers():
    with pytest.raises(ValueError, match="kind must be"):
        BabilongTask(1, babi="generated", kind="regression")


@needs_babi
def test_a_list_answer_is_not_a_class():
    task = BabilongTask(8, babi=BABI_DIR, length=0, prompt="none", kind="classification")
    lists = [i for i in range(50) if "," in task.sample(i).answer]
    assert lists
    with pytest.raises(ValueError, match="not one of the task's labels"):
        task.example(lists[0])


def test_vary_length_ends_samples_anywhere_with_the_same_facts():
    tok = word_tokenizer(2000)
    exact = BabilongTask(1, tokenizer=tok, length=128, babi="generated", prompt="none", fill="input")
    varied = BabilongTask(1, tokenizer=tok, length=128, babi="generated", prompt="none", fill="input",
                          vary_length=True)
    lengths = [varied.num_tokens(i, "train") for i in range(40)]
    assert all(exact.num_tokens(i, "train") + 1 == 128 for i in range(5))  # + the answer's one token
    assert max(lengths) < 128 and len(set(lengths)) > 10  # ends spread, never past the length
    assert lengths == [varied.num_tokens(i, "train") for i in range(40)]  # seeded
    for i in range(5):
        a, b = exact.sample(i, "train"), varied.sample(i, "train")
        assert (a.facts, a.question, a.answer) == (b.facts, b.question, b.answer)
        assert b.noise_tokens <= a.noise_tokens
    with pytest.raises(ValueError, match="fill='input'"):
        BabilongTask(1, babi="generated", vary_length=True)
