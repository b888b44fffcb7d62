"""bAbI-style facts (Weston et al. 2015, tasks qa1-qa5): a generator, a replaying tracker, the file format.

The generator simulates a small world forward (who is where, who holds what) and asks a question
whose answer it reads off its state. :class:`Tracker` answers the same question a different way:
it parses the story's sentences and searches backwards through the events. Both must agree on
every generated question; the tests check thousands. The original file format is read and written
by :func:`parse_babi` / :func:`format_babi`; :func:`babi_questions` reads any of the 20 tasks of the
real v1.2 release from a folder (or from the hub through ``datasets``), one sample per question.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.corpus import read_text_file
from .base import Task, _check_lengths, causal_example, register

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
QA5_PEOPLE = ("Bill", "Fred", "Jeff", "Mary")  # the original qa5 cast
PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "apple", "milk")
MOVE_VERBS = ("moved", "went", "journeyed", "travelled", "went back")
GRAB_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
QA_TASKS = (1, 2, 3, 4, 5)
DEFAULT_NUM_FACTS = {1: 6, 2: 10, 3: 14, 4: 2, 5: 10}


# -- the file format ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BabiLine:
    """One numbered line of a story: a fact, or a question with its answer and supporting line ids."""

    id: int
    text: str
    answer: str | None = None
    supporting: tuple[int, ...] = ()

    @property
    def is_question(self) -> bool:
        return self.answer is not None


@dataclass
class Story:
    """Lines numbered from 1, facts and questions interleaved as in the bAbI files."""

    lines: list[BabiLine] = field(default_factory=list)

    def questions(self) -> list[tuple[list[BabiLine], BabiLine]]:
        """Each question with the facts told before it (the question's context)."""
        out, facts = [], []
        for line in self.lines:
            if line.is_question:
                out.append((list(facts), line))
            else:
                facts.append(line)
        return out


def parse_babi(text: str) -> list[Story]:
    """Stories from the bAbI format (``3 Where is Mary? \\tbathroom\\t1``); ids restart at 1 per story."""
    stories: list[Story] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        number, _, rest = raw.strip("\n").partition(" ")
        if not number.isdigit():
            raise ValueError(f"line {n}: expected '<id> <text>', got {raw!r}")
        line_id = int(number)
        if line_id == 1 or not stories:
            stories.append(Story())
        if "\t" in rest:
            parts = rest.split("\t")
            if len(parts) < 2:
                raise ValueError(f"line {n}: a question needs '<question>\\t<answer>\\t<ids>', got {raw!r}")
            support = tuple(int(s) for s in (parts[2].split() if len(parts) > 2 else []))
            stories[-1].lines.append(BabiLine(line_id, parts[0].strip(), parts[1].strip(), support))
        else:
            stories[-1].lines.append(BabiLine(line_id, rest.strip()))
    return stories


def read_babi(path: str | Path) -> list[Story]:
    """Stories from a bAbI file such as ``qa1_single-supporting-fact_train.txt`` (or its ``.gz``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bAbI file {path} not found")
    return parse_babi(read_text_file(path))


def format_babi(stories: Iterable[Story]) -> str:
    """The bAbI file text of ``stories`` (inverse of :func:`parse_babi`)."""
    rows = []
    for story in stories:
        for line in story.lines:
            if line.is_question:
                rows.append(f"{line.id} {line.text} \t{line.answer}\t{' '.join(map(str, line.supporting))}")
            else:
                rows.append(f"{line.id} {line.text}")
    return "\n".join(rows) + "\n"


def write_babi(stories: Iterable[Story], path: str | Path) -> None:
    """Write ``stories`` in the bAbI file format."""
    Path(path).write_text(format_babi(stories), encoding="utf-8")


# -- the 20 tasks of the v1.2 release -----------------------------------------------------------
BABI_TASKS = {1: "single-supporting-fact", 2: "two-supporting-facts", 3: "three-supporting-facts",
              4: "two-arg-relations", 5: "three-arg-relations", 6: "yes-no-questions", 7: "counting",
              8: "lists-sets", 9: "simple-negation", 10: "indefinite-knowledge", 11: "basic-coreference",
              12: "conjunction", 13: "compound-coreference", 14: "time-reasoning", 15: "basic-deduction",
              16: "basic-induction", 17: "positional-reasoning", 18: "size-reasoning", 19: "path-finding",
              20: "agents-motivations"}
BABI_SPLITS = ("train", "test")
BABI_DIR_ENV = "RMT_BABI_DIR"  # a folder of bAbI files used when no source is given
BABI_HUB = "facebook/babi_qa"  # the published sets, through `datasets` (needs network)

Question = tuple[list[BabiLine], BabiLine]  # the facts told before a question, and the question


def babi_file_name(qa: int, split: str) -> str:
    """The v1.2 file name of task ``qa`` and ``split``, e.g. ``qa3_three-supporting-facts_test.txt``."""
    _check_babi(qa, split)
    return f"qa{qa}_{BABI_TASKS[qa]}_{split}.txt"


def find_babi_file(folder: str | Path, qa: int, split: str) -> Path:
    """The file of task ``qa`` and ``split`` in a bAbI folder (such as ``tasks_1-20_v1-2/en-10k``), gzipped or not.

    The folder itself is searched first, then its subfolders in name order (``en`` before ``en-10k``).
    """
    folder, name = Path(folder), babi_file_name(qa, split)
    if not folder.is_dir():
        raise FileNotFoundError(f"bAbI folder {folder} not found")
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    found = sorted(p for pattern in (name, f"{name}.gz") for p in folder.rglob(pattern))
    if not found:
        raise FileNotFoundError(f"no {name} (or {name}.gz) under {folder}")
    return min(found, key=lambda p: (len(p.parts), p.parts))


def babi_questions(qa: int, split: str = "test", source: str | Path | None = None) -> list[Question]:
    """Every question of a bAbI task as one sample: the facts told before it, in file order, and the question.

    Args:
        qa: the task, 1-20.
        split: ``"train"`` or ``"test"``.
        source: a bAbI folder or file; ``None`` reads the folder named by ``$RMT_BABI_DIR``, else the
            published sets through ``datasets`` (``facebook/babi_qa``, needs network); a ``datasets``
            name reads that dataset (configs named like ``en-qa1``; ``name:config-prefix`` for another
            prefix, e.g. ``facebook/babi_qa:en-10k``).
    """
    _check_babi(qa, split)
    if source is None:
        source = os.environ.get(BABI_DIR_ENV) or BABI_HUB
    path = Path(source)
    if path.is_dir():
        path = find_babi_file(path, qa, split)
    if path.is_file():
        return list(_questions_of_file(str(path.resolve())))
    name, _, prefix = str(source).partition(":")
    if "/" not in name:
        raise FileNotFoundError(f"bAbI source {source!r} is neither a folder, a file nor a datasets name")
    return [q for story in _hub_stories(name, f"{prefix or 'en'}-qa{qa}", split) for q in story.questions()]


@functools.lru_cache(maxsize=8)
def _questions_of_file(path: str) -> tuple[Question, ...]:
    return tuple(q for story in read_babi(path) for q in story.questions())


def _hub_stories(name: str, config: str, split: str) -> list[Story]:
    import datasets  # only this path needs it

    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, or an unknown name: say what to do instead
        raise FileNotFoundError(f"cannot load bAbI {config!r} from {name!r} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}); pass a bAbI folder, or set "
                                f"${BABI_DIR_ENV}") from None
    return [stories_from_hub_row(row) for row in rows]


def stories_from_hub_row(row: dict) -> Story:
    """A story from a row of the ``facebook/babi_qa`` dataset (``{"story": {"id", "type", "text", "supporting_ids", "answer"}}``)."""
    story = row["story"]
    lines = []
    for line_id, kind, text, support, answer in zip(story["id"], story["type"], story["text"],
                                                     story["supporting_ids"], story["answer"]):
        if kind == 1:  # a question
            lines.append(BabiLine(int(line_id), text.strip(), answer.strip(), tuple(int(s) for s in support)))
        else:
            lines.append(BabiLine(int(line_id), text.strip()))
    return Story(lines)


def _check_babi(qa: int, split: str) -> None:
    if qa not in BABI_TASKS:
        raise ValueError(f"bAbI task must be 1-20, got {qa!r}")
    if split not in BABI_SPLITS:
        raise ValueError(f"bAbI split must be one of {BABI_SPLITS}, got {split!r}")


# -- the generator: a forward simulation --------------------------------------------------------
class _World:
    """Forward state of people and objects; every fact is chosen among the moves that are legal now."""

    def __init__(self, rng: random.Random, people: Sequence[str]) -> None:
        self.rng, self.people = rng, list(people)
        self.loc: dict[str, tuple[str, int]] = {}  # person -> (place, id of the move that put them there)
        self.held: dict[str, tuple[str, int]] = {}  # object -> (holder, id of the grab or give)
        self.dropped: dict[str, tuple[str, int, int]] = {}  # object -> (place, drop id, holder's move id)
        self.history: dict[str, list[tuple[str, tuple[int, ...]]]] = {}  # object -> [(place, ids)]
        self.last_give: tuple[str, str, str, int] | None = None  # (giver, object, receiver, id)

    def act(self, fid: int, qa: int) -> str:
        """Choose a legal action for task ``qa``, apply it as fact ``fid``, return its sentence."""
        rng = self.rng
        grabs = [(p, o) for p in self.loc for o in OBJECTS if o not in self.held
                 and (o not in self.dropped or self.dropped[o][0] == self.loc[p][0])]
        drops = [(h, o) for o, (h, _) in self.held.items()]
        gives = [(h, o, q) for h, o in drops for q in self.loc if q != h and self.loc[q][0] == self.loc[h][0]]
        options = [("move", 0.45)]
        if qa in (2, 3, 5):
            options += [("grab", 0.3)] * bool(grabs) + [("drop", 0.15)] * bool(drops)
        if qa == 5 and gives:
            options.append(("give", 0.6))  # qa5 questions are about gifts: make them common
        kind = rng.choices([k for k, _ in options], [w for _, w in options])[0]
        if kind == "grab":
            p, o = rng.choice(grabs)
            self.held[o] = (p, fid)
            self.dropped.pop(o, None)
            place, move_id = self.loc[p]
            hist = self.history.setdefault(o, [])
            if not hist or hist[-1][0] != place:
                hist.append((place, (move_id, fid)))
            return f"{p} {rng.choice(GRAB_VERBS)} the {o} there."
        if kind == "drop":
            p, o = rng.choice(drops)
            del self.held[o]
            self.dropped[o] = (self.loc[p][0], fid, self.loc[p][1])
            return f"{p} {rng.choice(DROP_VERBS)} the {o}{rng.choice(['', ' there'])}."
        if kind == "give":
            p, o, q = rng.choice(gives)
            self.held[o] = (q, fid)
            self.last_give = (p, o, q, fid)
            return f"{p} {rng.choice(GIVE_VERBS)} the {o} to {q}."
        p = rng.choice(self.people)
        place = rng.choice([x for x in PLACES if x != self.loc.get(p, ("",))[0]])
        self.loc[p] = (place, fid)
        for o, (h, grab_id) in self.held.items():
            if h == p and self.history[o][-1][0] != place:
                self.history[o].append((place, (fid, grab_id)))
        return f"{p} {rng.choice(MOVE_VERBS)} to the {place}."

    def question(self, qa: int) -> tuple[str, str, tuple[int, ...]] | None:
        """A question about the current state as (text, answer, supporting ids), or None if none fits."""
        rng = self.rng
        if qa == 1:
            if not self.loc:
                return None
            p = rng.choice(sorted(self.loc))
            return f"Where is {p}?", self.loc[p][0], (self.loc[p][1],)
        if qa == 2:
            known = sorted(set(self.held) | set(self.dropped))
            if not known:
                return None
            o = rng.choice(known)
            if o in self.held:
                h, grab_id = self.held[o]
                place, move_id = self.loc[h]
                return f"Where is the {o}?", place, tuple(sorted({grab_id, move_id}))
            place, drop_id, move_id = self.dropped[o]
            return f"Where is the {o}?", place, tuple(sorted({drop_id, move_id}))
        if qa == 3:
            asks = []
            for o, hist in sorted(self.history.items()):
                places = [p for p, _ in hist]
                asks += [(o, i) for i in range(1, len(hist)) if places.count(places[i]) == 1]
            if not asks:
                return None
            o, i = rng.choice(asks)
            (before, ids0), (place, ids1) = self.history[o][i - 1], self.history[o][i]
            return f"Where was the {o} before the {place}?", before, tuple(sorted({*ids0, *ids1}))
        if qa == 5:
            if self.last_give is None:
                return None
            g, o, r, fid = self.last_give
            text, answer = rng.choice([(f"Who gave the {o}?", g), (f"Who received the {o}?", r),
                                       (f"What did {g} give to {r}?", o), (f"Who did {g} give the {o} to?", r),
                                       (f"Who gave the {o} to {r}?", g)])
            return text, answer, (fid,)
        raise ValueError(f"qa{qa} has no world questions")


def _qa4_story(rng: random.Random, first_id: int) -> tuple[list[str], tuple[str, str, tuple[int, ...]]]:
    """Two direction facts about three places laid on a grid, and one question one fact answers."""
    a, b, c = rng.sample(PLACES, 3)
    d1 = rng.choice(list(DIRECTIONS))
    d2 = rng.choice([d for d in DIRECTIONS if d != d1])  # a different side, so a and c never coincide
    # Relations as (x, d, y): "x is d of y". Each fact is phrased from either end.
    rels = [(a, d1, b), (c, d2, b)]
    rels = [(x, d, y) if rng.random() < 0.5 else (y, OPPOSITE[d], x) for x, d, y in rels]
    rng.shuffle(rels)
    facts = [f"The {x} is {d} of the {y}." for x, d, y in rels]
    k = rng.randrange(2)
    x, d, y = rels[k] if rng.random() < 0.5 else (rels[k][2], OPPOSITE[rels[k][1]], rels[k][0])
    if rng.random() < 0.5:
        return facts, (f"What is {d} of the {y}?", x, (first_id + k,))
    return facts, (f"What is the {x} {d} of?", y, (first_id + k,))


def generate_story(qa: int, rng: random.Random, num_facts: int | None = None, num_questions: int = 1,
                   people: Sequence[str] | None = None) -> Story:
    """A bAbI story for task ``qa`` (1-5): ``num_facts`` facts per question, then the question.

    qa4 stories are always two facts and one question, as in the original set. When no question
    fits yet (nobody has picked anything up, say) more facts are added until one does.
    """
    if qa not in QA_TASKS:
        raise ValueError(f"qa must be one of {QA_TASKS}, got {qa!r}")
    if num_questions < 1:
        raise ValueError(f"num_questions must be >= 1, got {num_questions}")
    if qa == 4:
        facts, (text, answer, support) = _qa4_story(rng, 1)
        return Story([BabiLine(i, f) for i, f in enumerate(facts, 1)] + [BabiLine(3, text, answer, support)])
    num_facts = DEFAULT_NUM_FACTS[qa] if num_facts is None else num_facts
    if num_facts < 1:
        raise ValueError(f"num_facts must be >= 1, got {num_facts}")
    world = _World(rng, people or (QA5_PEOPLE if qa == 5 else PEOPLE))
    story, line_id = Story(), 0
    for _ in range(num_questions):
        told, q = 0, None
        while told < num_facts or q is None:
            if told > num_facts + 200:
                raise RuntimeError(f"could not find a qa{qa} question; please report this seed")
            line_id += 1
            story.lines.append(BabiLine(line_id, world.act(line_id, qa)))
            told += 1
            q = world.question(qa) if told >= num_facts else None
        line_id += 1
        story.lines.append(BabiLine(line_id, q[0], q[1], q[2]))
    return story


# -- the tracker: replay the text, search backwards ---------------------------------------------
_FACT_PATTERNS = [
    ("move", re.compile(r"(\w+) (?:moved|went back|went|journeyed|travelled) to the (\w+)\.")),
    ("grab", re.compile(r"(\w+) (?:got|grabbed|picked up|took) the (\w+)(?: there)?\.")),
    ("drop", re.compile(r"(\w+) (?:dropped|discarded|put down|left) the (\w+)(?: there)?\.")),
    ("give", re.compile(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.")),
    ("rel", re.compile(r"The (\w+) is (north|south|east|west) of the (\w+)\.")),
]


class Tracker:
    """Answers bAbI qa1-qa5 questions by parsing the facts and searching the event list backwards."""

    def __init__(self, facts: Iterable[BabiLine]) -> None:
        self.events: list[tuple[int, str, tuple[str, ...]]] = []
        for line in facts:
            for kind, pattern in _FACT_PATTERNS:
                m = pattern.fullmatch(line.text)
                if m:
                    self.events.append((line.id, kind, m.groups()))
                    break
            else:
                raise ValueError(f"fact {line.id} is not in the qa1-qa5 grammar: {line.text!r}")

    def _person(self, person: str, end: int) -> tuple[str, int] | None:
        """Where ``person`` is after the first ``end`` events, and the fact that says so."""
        for fid, kind, args in reversed(self.events[:end]):
            if kind == "move" and args[0] == person:
                return args[1], fid
        return None

    def _object(self, obj: str, end: int) -> tuple[str, tuple[int, ...]] | None:
        """Where ``obj`` is after the first ``end`` events: its last handler's place then or now."""
        for k in range(end - 1, -1, -1):
            fid, kind, args = self.events[k]
            if kind in ("grab", "drop") and args[1] == obj or kind == "give" and args[1] == obj:
                if kind == "drop":  # it stays where it was put down
                    where = self._person(args[0], k)
                else:  # carried: it is wherever its holder is by now
                    where = self._person(args[2] if kind == "give" else args[0], end)
                return (where[0], tuple(sorted({fid, where[1]}))) if where else None
        return None

    def answer(self, question: str) -> tuple[str, tuple[int, ...]]:
        """(answer, supporting fact ids) of ``question`` given all the facts."""
        n = len(self.events)
        if m := re.fullmatch(r"Where is ([A-Z]\w*)\?", question):
            found = self._person(m[1], n)
            if found:
                return found[0], (found[1],)
        elif m := re.fullmatch(r"Where is the (\w+)\?", question):
            found = self._object(m[1], n)
            if found:
                return found
        elif m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
            history: list[tuple[str, tuple[int, ...]]] = []
            for t in range(1, n + 1):
                now = self._object(m[1], t)
                if now and (not history or history[-1][0] != now[0]):
                    history.append(now)
            # the object may have been in that place more than once: bAbI asks about its last arrival there
            arrivals = [i for i, (place, _) in enumerate(history) if place == m[2] and i > 0]
            if arrivals:
                i = arrivals[-1]
                return history[i - 1][0], tuple(sorted({*history[i - 1][1], *history[i][1]}))
        elif m := re.fullmatch(r"What is (north|south|east|west) of the (\w+)\?", question):
            return self._relation(lambda x, d, y: (x, d, y) if d == m[1] and y == m[2] else None)
        elif m := re.fullmatch(r"What is the (\w+) (north|south|east|west) of\?", question):
            return self._relation(lambda x, d, y: (y, d, x) if d == m[2] and x == m[1] else None)
        else:
            gives = [(fid, *args) for fid, kind, args in self.events if kind == "give"]
            patterns = [  # (question, which give fields must match, which field is the answer)
                (r"Who gave the (\w+)\?", ("obj",), "giver"),
                (r"Who received the (\w+)\?", ("obj",), "receiver"),
                (r"What did (\w+) give to (\w+)\?", ("giver", "receiver"), "obj"),
                (r"Who did (\w+) give the (\w+) to\?", ("giver", "obj"), "receiver"),
                (r"Who gave the (\w+) to (\w+)\?", ("obj", "receiver"), "giver"),
            ]
            for pattern, keys, wanted in patterns:
                if m := re.fullmatch(pattern, question):
                    for fid, giver, obj, receiver in reversed(gives):
                        fields = {"giver": giver, "obj": obj, "receiver": receiver}
                        if all(fields[k] == v for k, v in zip(keys, m.groups())):
                            return fields[wanted], (fid,)
                    break
            else:
                raise ValueError(f"question not in the qa1-qa5 grammar: {question!r}")
        raise ValueError(f"the story does not answer {question!r}")

    def _relation(self, match) -> tuple[str, tuple[int, ...]]:
        """The unique answer among the stated relations and their inverses."""
        found = set()
        for fid, kind, args in self.events:
            if kind != "rel":
                continue
            x, d, y = args
            for rel in ((x, d, y), (y, OPPOSITE[d], x)):
                hit = match(*rel)
                if hit:
                    found.add((hit[0], fid))
        if len({a for a, _ in found}) != 1:
            raise ValueError(f"the relations do not determine a unique answer: {sorted(found)}")
        answer = found.pop()
        return answer[0], (answer[1],)


def answer_matches(prediction: str | Sequence[int], answer: str, tokenizer) -> bool:
    """Exact answer match after stripping whitespace and a final period, case-insensitive."""
    text = prediction if isinstance(prediction, str) else tokenizer.decode(list(prediction))
    return text.strip().rstrip(".").strip().lower() == answer.strip().lower()


# -- the task -----------------------------------------------------------------------------------
class BabiTask(Task):
    """bAbI qa task: a story of facts, a question, the answer scored (causal LM, accuracy)."""

    kind = "causal-lm"
    own_length = "their stories"

    def __init__(self, qa: int, tokenizer=None, seed: int = 0, num_facts: int | None = None,
                 path: str | Path | None = None) -> None:
        super().__init__(tokenizer, seed)
        if qa not in QA_TASKS:
            raise ValueError(f"qa must be one of {QA_TASKS}, got {qa!r}")
        self.qa, self.num_facts = qa, num_facts
        self.name = f"babi-qa{qa}"
        # A real bAbI file, if given, replaces the generator: example i is its i-th question.
        self._file_questions = None
        if path is not None:
            self._file_questions = [q for s in read_babi(path) for q in s.questions()]
            if not self._file_questions:
                raise ValueError(f"no questions found in {path}")

    def qa_sample(self, index: int, split: str = "train") -> tuple[list[BabiLine], BabiLine]:
        """The facts and the question (with answer and supporting ids) of example ``index``."""
        if self._file_questions is not None:
            if index >= len(self._file_questions):
                raise ValueError(f"index {index} is past the {len(self._file_questions)} questions in the file")
            return self._file_questions[index]
        story = generate_story(self.qa, self.rng(index, split), self.num_facts)
        return story.questions()[-1]

    def example(self, index: int, split: str = "train") -> dict:
        facts, q = self.qa_sample(index, split)
        prompt = " ".join(f.text for f in facts) + " " + q.text
        ex = causal_example(self.encode(prompt), self.encode(" " + q.answer))
        ex["answer"] = q.answer
        return ex

    def score(self, predictions, examples) -> dict[str, float]:
        """Accuracy: the predicted answer (ids or text) equals the true one."""
        _check_lengths(predictions, examples)
        hits = [answer_matches(p, e["answer"], self.tokenizer) for p, e in zip(predictions, examples)]
        return {"accuracy": sum(hits) / max(len(hits), 1)}


for _qa, _title in [(1, "single supporting fact"), (2, "two supporting facts"), (3, "three supporting facts"),
                    (4, "two-argument relations"), (5, "three-argument relations")]:
    def _factory(_qa=_qa, **kwargs) -> BabiTask:
        return BabiTask(_qa, **kwargs)
    _factory.task_class = BabiTask
    _factory.description = f"bAbI qa{_qa} ({_title}): facts, a question, the answer scored"
    register(f"babi-qa{_qa}")(_factory)
