"""BABILong's prompts and metrics (Kuratov et al. 2024), as the benchmark defines them.

A prompt is the published template::

    {instruction}

    {examples}

    {post_prompt}

    <context>
    {context}
    </context>

    Question: {question}

with per-task instruction, in-context examples and post-prompt. They are read from the installed
lm-eval package's BABILong task files (``lm_eval/tasks/babilong/babilong_qaN.yaml``) when lm-eval is
installed, else from a copy of the published definitions (``booydar/babilong``,
``babilong/prompts.py``) shipped in ``rmt/tasks/data/babilong_published.json``; ``prompt.source``
says which. Models fine-tuned on BABILong (the authors' RMTs) get no prompt: ``"{context} {question}"``.

Two metrics, both reported:

* :func:`compare_answers`, the benchmark's strict one (``babilong/metrics.py``): the output is
  lower-cased and cut at its first ``.`` and at ``<context>``, ``<example>`` and ``Question``; the
  task's labels found in it, minus those the question names, must be exactly the target (for a
  multi-answer target such as ``apple,milk``: every part, and nothing else).
* :func:`lenient_match`, lm-eval's: the target is a substring of the (stripped) output.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

PROMPT_SOURCES = ("auto", "lm-eval", "published")
_POST_PROMPT_START = ("Always", "Your answer")  # lm-eval's descriptions: instruction lines, then these


@dataclass(frozen=True)
class BabilongPrompt:
    """One task's prompt parts and answer labels, and where they were read from."""

    qa: int
    instruction: str
    examples: tuple[tuple[str, str, str], ...]  # (context, question, answer) of each in-context example
    post_prompt: str
    labels: tuple[str, ...]
    source: str

    def examples_text(self) -> str:
        """The examples as the published prompts write them, one ``<example>`` block each."""
        return "\n\n".join(f"<example>\n{context} {question}\nAnswer: {answer}\n</example>"
                           for context, question, answer in self.examples)

    def head(self) -> str:
        """Everything before the context: instruction, examples, post-prompt and ``<context>``."""
        parts = [p for p in (self.instruction, self.examples_text(), self.post_prompt) if p]
        return "\n\n".join(parts + ["<context>\n"])

    @staticmethod
    def tail(question: str) -> str:
        """Everything after the context."""
        return f"\n</context>\n\nQuestion: {question}"

    def render(self, context: str, question: str) -> str:
        """The whole prompt for a context held in memory (short inputs; long ones are streamed)."""
        return self.head() + context.strip() + self.tail(question)


def babilong_prompt(qa: int, source: str = "auto") -> BabilongPrompt:
    """The prompt of task ``qa`` (1-20): from lm-eval's task files (``"lm-eval"``), the published
    definitions (``"published"``), or lm-eval when it is installed, else the published ones (``"auto"``)."""
    if qa not in range(1, 21):
        raise ValueError(f"BABILong has tasks qa1-qa20, got qa{qa}")
    if source not in PROMPT_SOURCES:
        raise ValueError(f"prompt source must be one of {PROMPT_SOURCES}, got {source!r}")
    if source == "auto":
        source = "lm-eval" if lm_eval_task_dir() is not None else "published"
    if source == "lm-eval":
        return _lm_eval_prompt(qa)
    return _published_prompt(qa)


def lm_eval_task_dir() -> Path | None:
    """The installed lm-eval package's ``tasks/babilong`` folder, or None (found without importing lm-eval)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "babilong"
    return folder if folder.is_dir() else None


@functools.lru_cache(maxsize=1)
def _published() -> dict:
    return json.loads((resources.files("rmt.tasks") / "data" / "babilong_published.json").read_text(encoding="utf-8"))


def task_labels(qa: int) -> tuple[str, ...]:
    """The answer labels of task ``qa`` that the strict metric looks for (``babilong/metrics.py``)."""
    return tuple(_published()["tasks"][f"qa{qa}"]["labels"])


def _published_prompt(qa: int) -> BabilongPrompt:
    task = _published()["tasks"][f"qa{qa}"]
    return BabilongPrompt(qa, task["instruction"], tuple(tuple(e) for e in task["examples"]), task["post_prompt"],
                          tuple(task["labels"]), _published()["source"])


def _lm_eval_prompt(qa: int) -> BabilongPrompt:
    folder = lm_eval_task_dir()
    if folder is None:
        raise ImportError("prompt source 'lm-eval' needs lm-eval installed: pip install 'rmt[eval]'")
    path = folder / f"babilong_qa{qa}.yaml"
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags)
    lines = config["description"].strip().split("\n")
    split = next((i for i, line in enumerate(lines) if line.startswith(_POST_PROMPT_START)), len(lines))
    examples = tuple((s["input"].strip(), s["question"].strip(), str(s["target"]).strip())
                     for s in config.get("fewshot_config", {}).get("samples", []))
    return BabilongPrompt(qa, "\n".join(lines[:split]), examples, "\n".join(lines[split:]), task_labels(qa),
                          f"lm-eval {path}")


class _IgnoreTags(yaml.SafeLoader):
    """Reads lm-eval's task files; their ``!function`` tags name lm-eval's own helpers, not needed here."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


# -- metrics ------------------------------------------------------------------------------------
def preprocess_output(output: str) -> str:
    """The benchmark's clean-up of a model's output before looking for labels.

    As published, the text is lower-cased before the cut at ``Question``, so that cut never fires.
    """
    output = output.lower()
    output = output.split(".")[0]  # the first sentence
    for stop in ("<context>", "<example>", "Question"):  # the model going on to write more examples
        output = output.split(stop)[0]
    return output


def compare_answers(target: str, output: str, question: str, labels: tuple[str, ...] | list[str]) -> bool:
    """The benchmark's strict check: the labels in the output, minus the question's, are exactly the target.

    Labels are matched as substrings, as published ("bathrooms" names "bathroom"; in qa7 "none"
    also names "one", so a bare "none" is never correct).
    """
    output = preprocess_output(output)
    target = target.lower()
    labels = {label.lower() for label in labels}
    in_question = {label for label in labels if label in question.lower()}
    named = {label for label in labels if label in output} - in_question
    if "," in target and len(target) > 3:  # a list answer (qa8): every part and nothing else
        parts = target.split(",")
        return all(p in named for p in parts) and len(named) == len(parts)
    return target in named and len(named) == 1


_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


def lenient_match(target: str, output: str) -> bool:
    """lm-eval's BABILong check: the stripped target is in the output, case-insensitive (control
    characters in the output turned into newlines first, as lm-eval does)."""
    output = _NON_PRINTABLE.sub("\n", output.strip()).strip()
    return target.strip().lower() in output.lower()
