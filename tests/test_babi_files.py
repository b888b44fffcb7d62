"""The bAbI reader on every file of the real v1.2 release in ../shared/babi (skipped where it is absent)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
from pathlib import Path

import pytest

from rmt.tasks.babi import (
    BABI_TASKS,
    Tracker,
    babi_file_name,
    babi_questions,
    find_babi_file,
    read_babi,
    stories_from_hub_row,
)
from rmt.tasks.babilong_prompts import task_labels

BABI_DIR = Path(__file__).parents[2] / "shared" / "babi"
needs_babi = pytest.mark.skipif(not (BABI_DIR / "MANIFEST.tsv").is_file(), reason=f"no bAbI data at {BABI_DIR}")


def _manifest() -> dict[tuple[str, str], tuple[int, int]]:
    rows = [line.split("\t") for line in (BABI_DIR / "MANIFEST.tsv").read_text().splitlines()[1:]]
    return {(r[0], r[1]): (int(r[3]), int(r[4])) for r in rows}


FILES = sorted(BABI_DIR.glob("*/qa*.txt.gz")) if BABI_DIR.is_dir() else []
# tasks whose answer is a word of its supporting facts
ANSWER_IN_SUPPORT = {1, 2, 3, 4, 5, 11, 12, 13, 14, 16}


def _qa(path: Path) -> int:
    return int(re.match(r"qa(\d+)_", path.name)[1])


@needs_babi
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name[:-7]}")
def test_every_file_reads_with_its_counts_and_consistent_answers(path):
    qa = _qa(path)
    stories = read_babi(path)
    questions = [q for s in stories for q in s.questions()]
    assert (len(stories), len(questions)) == _manifest()[(path.parent.name, path.name[:-3])]
    labels = {label.lower() for label in task_labels(qa)}
    for facts, q in questions:
        ids = [f.id for f in facts]
        assert ids == sorted(ids) and all(not f.is_question for f in facts)  # the facts told before it, in order
        by_id = {f.id: f.text for f in facts}
        assert q.supporting and set(q.supporting) <= set(by_id), q  # supporting facts come before the question
        parts = q.answer.lower().split(",") if qa == 8 else [q.answer.lower()]
        assert set(parts) <= labels, q  # the metric's labels cover every answer
        support = " ".join(by_id[i] for i in q.supporting).lower()
        if qa in ANSWER_IN_SUPPORT:
            assert q.answer.lower() in support, q
    if qa <= 5:  # qa1-qa5: replay the story and answer every question again
        for facts, q in questions:
            tracker = Tracker(facts)
            answer, support = tracker.answer(q.text)
            if qa == 5 and answer != q.answer:  # the question is ambiguous: two gifts fit it
                m = re.fullmatch(r"What did (\w+) give to (\w+)\?", q.text)
                gifts = {a[1] for _, kind, a in tracker.events if kind == "give" and (a[0], a[2]) == m.groups()}
                assert {answer, q.answer} <= gifts, q
                continue
            assert answer == q.answer, q
            if qa != 3:  # qa3's three supporting facts are chosen differently by the generator
                assert set(support) == set(q.supporting), q


@needs_babi
def test_supporting_ids_keep_their_file_order():
    facts, q = babi_questions(3, "test", BABI_DIR / "en")[0]
    assert q.supporting == (38, 25, 22)  # as the file writes them, not sorted
    assert q.text == "Where was the apple before the bathroom?" and q.answer == "office"
    assert len(facts) == 38 and facts[-1].id == 38


@needs_babi
def test_finding_files_in_a_folder(monkeypatch):
    assert find_babi_file(BABI_DIR, 1, "train").parent.name == "en"  # the shallowest, then name order
    assert find_babi_file(BABI_DIR / "en-10k", 1, "train").name == babi_file_name(1, "train") + ".gz"
    assert len(babi_questions(2, "train", BABI_DIR / "en-10k")) == 10_000
    monkeypatch.setenv("RMT_BABI_DIR", str(BABI_DIR / "en"))
    assert len(babi_questions(20, "test")) == 1000
    with pytest.raises(FileNotFoundError, match="qa3_three-supporting-facts_train.txt"):
        find_babi_file(BABI_DIR / "en-10k", 3, "train")


def test_names_and_bad_input(tmp_path):
    assert len(BABI_TASKS) == 20 and babi_file_name(19, "test") == "qa19_path-finding_test.txt"
    with pytest.raises(ValueError, match="1-20"):
        babi_file_name(21, "test")
    with pytest.raises(ValueError, match="split"):
        babi_questions(1, "dev", tmp_path)
    with pytest.raises(FileNotFoundError, match="no qa1_single"):
        babi_questions(1, "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        babi_questions(1, "test", "nowhere")


def test_hub_rows_become_stories():
    row = {"story": {"id": ["1", "2", "3"], "type": [0, 0, 1], "text": ["Mary went to the hallway.",
           "John moved to the office.", "Where is Mary?"], "supporting_ids": [[], [], ["1"]],
           "answer": ["", "", "hallway"]}}
    (facts, q), = stories_from_hub_row(row).questions()
    assert [f.text for f in facts] == ["Mary went to the hallway.", "John moved to the office."]
    assert (q.text, q.answer, q.supporting) == ("Where is Mary?", "hallway", (1,))
