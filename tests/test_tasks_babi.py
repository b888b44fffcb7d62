"""bAbI generator, tracker and file format."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random

import pytest

from rmt.tasks import Tracker, format_babi, generate_story, get_task, parse_babi, read_babi, write_babi
from rmt.tasks.babi import OBJECTS, PEOPLE, PLACES, QA5_PEOPLE


@pytest.mark.parametrize("qa", [1, 2, 3, 4, 5])
def test_tracker_agrees_with_every_generated_answer(qa):
    questions = 0
    for seed in range(800):
        story = generate_story(qa, random.Random(seed), num_questions=3)
        for facts, q in story.questions():
            answer, support = Tracker(facts).answer(q.text)
            assert (answer, support) == (q.answer, q.supporting), format_babi([story])
            assert set(support) <= {f.id for f in facts}
            vocab = QA5_PEOPLE + OBJECTS if qa == 5 else PLACES
            assert q.answer in vocab
            questions += 1
    assert questions >= 800


def test_vocabulary_is_the_original():
    text = format_babi(generate_story(q, random.Random(s)) for q in (1, 2, 3, 5) for s in range(200))
    for verb in ("moved", "went", "journeyed", "travelled", "got", "grabbed", "picked up", "took",
                 "dropped", "discarded", "put down", "left", "gave", "handed", "passed"):
        assert f" {verb} " in text
    names = {w for line in text.splitlines() for w in line.split()[1:2]}
    assert names <= set(PEOPLE) | set(QA5_PEOPLE) | {"Where", "Who", "What"}
    assert "is north of the" in format_babi(generate_story(4, random.Random(s)) for s in range(50))


def test_file_format_round_trip(tmp_path):
    stories = [generate_story(qa, random.Random(qa), num_questions=2) for qa in (1, 2, 3, 4, 5)]
    path = tmp_path / "qa_mixed.txt"
    write_babi(stories, path)
    assert read_babi(path) == stories
    assert format_babi(read_babi(path)) == path.read_text()


def test_reader_accepts_the_original_files():
    text = ("1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n"
            "1 Sandra journeyed to the garden.\n2 Where is Sandra? \tgarden\t1\n")
    stories = parse_babi(text)
    assert len(stories) == 2
    facts, q = stories[0].questions()[0]
    assert [f.text for f in facts] == ["Mary moved to the bathroom.", "John went to the hallway."]
    assert (q.text, q.answer, q.supporting) == ("Where is Mary?", "bathroom", (1,))
    assert Tracker(facts).answer(q.text) == ("bathroom", (1,))
    with pytest.raises(ValueError, match="expected"):
        parse_babi("Mary moved to the bathroom.\n")


def test_tracker_rejects_unknown_grammar():
    with pytest.raises(ValueError, match="grammar"):
        Tracker(parse_babi("1 Mary flew to the moon.\n2 Where is Mary? \tmoon\t1\n")[0].lines[:1])


@pytest.mark.parametrize("qa", [1, 2, 3, 4, 5])
def test_babi_task_examples(qa):
    task = get_task(f"babi-qa{qa}", seed=0)
    ex = task.example(5)
    assert ex == get_task(f"babi-qa{qa}", seed=0).example(5) and ex != get_task(f"babi-qa{qa}", seed=1).example(5)
    target = task.decode(task.target_ids(ex))
    assert target == " " + ex["answer"] and ex["labels"][: -len(target)] == [-100] * (len(ex["labels"]) - len(target))
    assert task.decode(ex["input_ids"]).rstrip(target).endswith("?")
    exs = [task.example(i) for i in range(4)]
    preds = [task.target_ids(e) for e in exs[:3]] + ["nowhere"]
    assert task.score(preds, exs) == {"accuracy": 0.75}


def test_babi_task_from_a_file(tmp_path):
    path = tmp_path / "qa1_train.txt"
    path.write_text("1 Mary moved to the bathroom.\n2 Where is Mary? \tbathroom\t1\n")
    task = get_task("babi-qa1", path=path)
    assert task.decode(task.example(0)["input_ids"]) == "Mary moved to the bathroom. Where is Mary? bathroom"
    with pytest.raises(ValueError, match="past the 1 questions"):
        task.example(1)


def test_tracker_answers_before_a_place_visited_twice():
    # the object is in the kitchen twice: bAbI asks about its last arrival there
    story = parse_babi("1 Mary got the milk.\n2 Mary went to the kitchen.\n3 Mary went to the garden.\n"
                       "4 Mary went to the kitchen.\n5 Where was the milk before the kitchen? \tgarden\t4 3 1\n")[0]
    facts, q = story.questions()[0]
    assert q.supporting == (4, 3, 1)  # file order, not sorted
    answer, support = Tracker(facts).answer(q.text)
    assert answer == "garden" and set(support) <= {1, 3, 4}
