"""memorize, detect-and-memorize, reasoning (AAAI 2024)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from rmt.tasks import Tracker, get_task, parse_babi

NAMES = ["memorize", "detect-and-memorize", "reasoning"]


def _facts(text):
    """The bAbI sentences hidden in a decoded context."""
    import re

    pattern = r"(?:[A-Z][a-z]+ (?:moved|went back|went|journeyed|travelled) to the \w+\.|The \w+ is (?:north|south|east|west) of the \w+\.)"
    return re.findall(pattern, text)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["classification", "causal-lm"])
def test_exact_length_determinism_and_answer(name, kind):
    task = get_task(name, seed=0, length=700, kind=kind)
    assert task.num_labels == 6 and task.label_names == sorted(task.label_names)
    for i in range(20):
        ex = task.example(i)
        assert len(ex["input_ids"]) == 700
        text = task.decode(ex["input_ids"])
        question = text[text.rindex(" W") + 1 :] if kind == "classification" else None
        if kind == "causal-lm":
            target = task.decode(task.target_ids(ex))
            assert target == " " + ex["answer"] and text.endswith("?" + target)
            answer, question = ex["answer"], text[: -len(target)][text[: -len(target)].rindex(" W") + 1 :]
        else:
            answer = task.label_names[ex["label"]]
        facts = _facts(text)
        assert len(facts) == (2 if name == "reasoning" else 1)
        if name == "memorize":
            assert text.startswith(" " + facts[0])
        story = "".join(f"{k} {f}\n" for k, f in enumerate(facts, 1))
        assert Tracker(parse_babi(story)[0].lines).answer(question)[0] == answer
    assert task.example(3) == get_task(name, seed=0, length=700, kind=kind).example(3)
    assert task.example(3) != get_task(name, seed=1, length=700, kind=kind).example(3)


def test_fact_positions_vary_for_detect():
    task = get_task("detect-and-memorize", length=2000)
    starts = {task.decode(task.example(i)["input_ids"]).find(_facts(task.decode(task.example(i)["input_ids"]))[0])
              for i in range(10)}
    assert len(starts) > 5


def test_length_from_segments_and_errors():
    task = get_task("memorize", num_segments=4, segment_size=128)
    assert len(task.example(0)["input_ids"]) == 512
    batch = task.collate([task.example(i) for i in range(3)])
    assert batch["input_ids"].shape == (3, 512) and batch["labels"].shape == (3,)
    assert task.score([task.example(i)["label"] for i in range(3)], [task.example(i) for i in range(3)]) == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="too short"):
        get_task("reasoning", length=20).example(0)
    with pytest.raises(ValueError, match="together"):
        get_task("memorize", num_segments=4)
    with pytest.raises(ValueError, match="kind"):
        get_task("memorize", kind="regression")


def test_local_background_text(tmp_path):
    (tmp_path / "noise.txt").write_text("Zebras graze quietly. " * 200)
    task = get_task("memorize", length=300, background=str(tmp_path / "noise.txt"))
    assert "Zebras graze quietly." in task.decode(task.example(0)["input_ids"])


@pytest.mark.parametrize("name,segments", [("reasoning", (1, 3)), ("reasoning", (2, 2)), ("reasoning", (1, 4)),
                                           ("detect-and-memorize", (2,)), ("memorize", (1,))])
@pytest.mark.parametrize("kind", ["classification", "causal-lm"])
def test_fact_segments_put_each_fact_inside_its_segment(name, segments, kind):
    from rmt.tasks import task_at

    S = 96  # bytes: two facts fit in one segment
    task = task_at(name, 4, S, kind=kind, fact_segments=segments)
    for i in range(5):
        ex, spans = task.example(i), task.spans(i)
        assert len(ex["input_ids"]) == 4 * S
        for fact, segment in zip(spans["facts"], segments):
            assert (segment - 1) * S <= fact["start"] < fact["end"] <= segment * S
            assert task.decode(ex["input_ids"][fact["start"] : fact["end"]]) == " " + fact["text"]
        start, end = spans["question"]
        assert task.decode(ex["input_ids"][start:end]).startswith(" W")
        assert end == (spans["answer"][0] if kind == "causal-lm" else 4 * S)
        if kind == "causal-lm":
            assert task.decode(ex["input_ids"][slice(*spans["answer"])]) == " " + ex["answer"]
    if name == "memorize":
        assert spans["facts"][0]["start"] == 0  # still at the very start


def test_spans_of_the_default_distribution_and_it_is_unchanged_by_them():
    task = get_task("reasoning", seed=0, length=700)
    for i in range(5):
        ex, spans = task.example(i), task.spans(i)
        found = _facts(task.decode(ex["input_ids"]))
        assert [f["text"] for f in spans["facts"]] == found
        assert [task.decode(ex["input_ids"][f["start"] : f["end"]]) for f in spans["facts"]] == [" " + f for f in found]
    placed = get_task("reasoning", seed=0, num_segments=4, segment_size=175, fact_segments=(1, 3))
    plain = get_task("reasoning", seed=0, num_segments=4, segment_size=175)
    assert plain.example(0) == task.example(0)  # fact_segments is the only change
    assert placed.example(0) != plain.example(0)


def test_fact_segments_errors():
    with pytest.raises(ValueError, match="needs num_segments"):
        get_task("reasoning", length=200, fact_segments=(1, 2))
    with pytest.raises(ValueError, match="2 fact"):
        get_task("reasoning", num_segments=4, segment_size=48, fact_segments=(1,))
    with pytest.raises(ValueError, match="in order"):
        get_task("reasoning", num_segments=4, segment_size=48, fact_segments=(3, 1))
    with pytest.raises(ValueError, match=r"1\.\.4"):
        get_task("detect-and-memorize", num_segments=4, segment_size=48, fact_segments=(5,))
    with pytest.raises(ValueError, match="at the start"):
        get_task("memorize", num_segments=4, segment_size=48, fact_segments=(2,))
    with pytest.raises(ValueError, match="more than a segment"):
        get_task("reasoning", num_segments=4, segment_size=40, fact_segments=(2, 2)).example(0)


PLACE_WORD = r"\b(?:bathroom|hallway|garden|office|bedroom|kitchen)\b"


@pytest.mark.parametrize("name", NAMES)
def test_decoys_are_background_sentences_naming_a_place_at_about_their_rate(name):
    import re

    from rmt.tasks import task_at

    plain, decoyed = task_at(name, 32, 64), task_at(name, 32, 64, decoy_rate=0.25)
    pool = set(decoyed._decoys)
    assert pool and all(re.search(PLACE_WORD, s, re.IGNORECASE) for s in pool)

    def places(task, i):  # place words outside the facts and the question
        text = task.decode(task.example(i)["input_ids"])
        for fact in _facts(text):
            text = text.replace(fact, "")
        return len(re.findall(PLACE_WORD, text[: text.rindex(" W")], re.IGNORECASE))

    n = 40
    added = sum(places(decoyed, i) - places(plain, i) for i in range(n)) / n
    assert 0.6 * 0.25 * 32 < added <= 0.25 * 32 * 3  # about 8 decoys (a sentence can name two places)
    for i in range(n):
        ex, spans = decoyed.example(i), decoyed.spans(i)
        assert len(ex["input_ids"]) == 32 * 64
        text = decoyed.decode(ex["input_ids"])
        assert [f["text"] for f in spans["facts"]] == _facts(text)  # the facts stay whole and findable
        for f in spans["facts"]:
            assert decoyed.decode(ex["input_ids"][f["start"] : f["end"]]) == " " + f["text"]
        assert decoyed.example(i)["label"] == plain.example(i)["label"]  # the story is drawn as without decoys
    assert decoyed.example(3) == task_at(name, 32, 64, decoy_rate=0.25).example(3)
    assert task_at(name, 32, 64, decoy_rate=0).example(3) == plain.example(3)


def test_decoys_fit_short_inputs_and_errors(tmp_path):
    from rmt.tasks import task_at

    short = task_at("detect-and-memorize", 1, 64, decoy_rate=3.0)  # more decoys than fit: as many as fit
    assert all(len(short.example(i)["input_ids"]) == 64 for i in range(20))
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="decoy_rate must be a number"):
            task_at("detect-and-memorize", 4, 64, decoy_rate=bad)
    with pytest.raises(ValueError, match="per segment"):
        get_task("detect-and-memorize", length=400, decoy_rate=0.1)
    with pytest.raises(ValueError, match="do not go together"):
        get_task("reasoning", num_segments=4, segment_size=175, fact_segments=(1, 3), decoy_rate=0.1)
    (tmp_path / "noise.txt").write_text("Zebras graze quietly. " * 200)
    with pytest.raises(ValueError, match="has none"):
        task_at("memorize", 4, 64, decoy_rate=0.1, background=str(tmp_path / "noise.txt"))


def test_uniform_decoy_places_name_every_place_alike_in_the_books_sentences():
    import collections
    import re

    from rmt.tasks import task_at
    from rmt.tasks.memory_tasks import _with_place

    assert _with_place(" The Garden gate, the office and the garden.", "hallway") == \
        " The Hallway gate, the hallway and the hallway."
    plain = task_at("detect-and-memorize", 32, 64, decoy_rate=0.25)
    uniform = task_at("detect-and-memorize", 32, 64, decoy_rate=0.25, decoy_places="uniform")

    def places(task, i):  # place words outside the facts and the question
        text = task.decode(task.example(i)["input_ids"])
        for fact in _facts(text):
            text = text.replace(fact, "")
        return collections.Counter(w.lower() for w in re.findall(PLACE_WORD, text[: text.rindex(" W")], re.IGNORECASE))

    book, drawn = collections.Counter(), collections.Counter()
    for i in range(60):
        book += places(plain, i)
        drawn += places(uniform, i)
        assert uniform.example(i)["label"] == plain.example(i)["label"]  # the story is drawn as without decoys
        assert len(uniform.example(i)["input_ids"]) == 32 * 64
    assert book["bathroom"] == book["hallway"] == 0  # the bundled books never name them
    assert sum(drawn.values()) > 0.6 * sum(book.values())
    share = sum(drawn.values()) / 6
    assert all(0.5 * share < drawn[p] < 1.6 * share for p in uniform.label_names), drawn  # every place alike
    assert task_at("detect-and-memorize", 32, 64, decoy_rate=0.25, decoy_places="book").example(3) == plain.example(3)
    for bad in ("balanced", None):
        with pytest.raises(ValueError, match="decoy_places must be one of"):
            task_at("detect-and-memorize", 4, 64, decoy_rate=0.1, decoy_places=bad)
    # a run trained with uniform decoys is read without decoys (`rmt eval --task-arg decoy_rate=0`)
    assert task_at("detect-and-memorize", 32, 64, decoy_places="uniform").example(3) == \
        task_at("detect-and-memorize", 32, 64).example(3)


def test_decoy_facts_are_about_the_other_people_and_leave_the_answer_alone():
    from rmt.tasks import task_at

    task = task_at("detect-and-memorize", 32, 64, decoy_rate=0.25, decoy_facts=0.5)
    others = 0
    for i in range(30):
        ex, spans = task.example(i), task.spans(i)
        text = task.decode(ex["input_ids"])
        person = text[text.rindex("Where is ") + 9 : -1]
        facts = _facts(text)
        mine = [f for f in facts if f.startswith(person + " ")]
        assert mine == [spans["facts"][0]["text"]]  # one fact about the person asked: the one that answers
        assert mine[0].endswith(f"the {task.label_names[ex['label']]}.")
        others += len(facts) - 1
    assert 0.6 * 0.5 * 8 < others / 30 < 1.4 * 0.5 * 8  # half of about 8 decoys
    assert task_at("detect-and-memorize", 32, 64, decoy_rate=0.25).example(0) != task.example(0)
    for bad, says in ((1.5, "share of the decoys"), (True, "share of the decoys")):
        with pytest.raises(ValueError, match=says):
            task_at("detect-and-memorize", 4, 64, decoy_rate=0.1, decoy_facts=bad)
    with pytest.raises(ValueError, match="needs decoy_rate"):
        task_at("detect-and-memorize", 4, 64, decoy_facts=0.5)
    with pytest.raises(ValueError, match="where a person is"):
        task_at("reasoning", 4, 64, decoy_rate=0.1, decoy_facts=0.5)
