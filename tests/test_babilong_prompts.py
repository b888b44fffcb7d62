"""BABILong's prompts (lm-eval's task files and the published copy) and its two metrics."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from rmt.tasks.babilong_prompts import (
    babilong_prompt,
    compare_answers,
    lenient_match,
    lm_eval_task_dir,
    preprocess_output,
    task_labels,
)

PLACES = task_labels(1)
WHERE = "Where is Mary?"

# (output, target, question, labels, official strict result, lenient result)
CASES = [
    ("kitchen", "kitchen", WHERE, PLACES, True, True),
    ("The most recent location of Mary is kitchen.", "kitchen", WHERE, PLACES, True, True),
    ("Kitchen. Not the garden", "kitchen", WHERE, PLACES, True, True),  # only the first sentence counts
    ("garden or kitchen", "kitchen", WHERE, PLACES, False, True),  # two labels named
    ("bathroom\nkitchen", "kitchen", WHERE, PLACES, False, True),  # a newline does not end the sentence
    ("bathrooms", "bathroom", WHERE, PLACES, True, True),  # labels are substrings, not words
    ("kitchen<example>office", "kitchen", WHERE, PLACES, True, True),  # cut where the model writes an example
    ("I do not know. She is in the kitchen", "kitchen", WHERE, PLACES, False, True),
    ("office", "office", "What is north of the garden?", PLACES, True, True),
    ("the office, north of the garden", "office", "What is north of the garden?", PLACES, True, True),  # question's labels ignored
    ("none", "none", "How many objects is Mary carrying?", task_labels(7), False, True),  # 'none' also names 'one'
    ("milk, apple", "apple,milk", "What is Daniel carrying?", task_labels(8), True, False),  # every part, any order
    ("apple", "apple,milk", "What is Daniel carrying?", task_labels(8), False, False),  # a part missing
    ("apple, milk and football", "apple,milk", "What is Daniel carrying?", task_labels(8), False, False),  # one too many
    ("s,e", "s,e", "How do you go from the kitchen to the garden?", task_labels(19), True, True),
]


@pytest.mark.parametrize("output,target,question,labels,strict,lenient", CASES)
def test_metrics_on_hand_made_cases(output, target, question, labels, strict, lenient):
    assert compare_answers(target, output, question, labels) is strict
    assert lenient_match(target, output) is lenient


def test_preprocessing_is_the_published_one():
    assert preprocess_output("Kitchen. Garden") == "kitchen"
    assert preprocess_output("a <context> b") == "a "
    # lower-cased first, so the published cut at "Question" never fires
    assert preprocess_output("kitchen Question: where") == "kitchen question: where"


@pytest.mark.parametrize("qa", range(1, 21))
def test_published_prompts_have_every_part(qa):
    prompt = babilong_prompt(qa, "published")
    assert prompt.instruction.startswith("I ") and prompt.post_prompt and len(prompt.examples) >= 2
    assert "babilong/prompts.py" in prompt.source
    for _, question, answer in prompt.examples:
        assert question.endswith("?") and answer
    text = prompt.render("  Mary went to the kitchen. ", WHERE)
    assert text.startswith(prompt.instruction) and text.endswith("<context>\nMary went to the kitchen.\n</context>\n\nQuestion: Where is Mary?")
    assert text.index(prompt.examples[0][0]) < text.index(prompt.post_prompt) < text.index("<context>")
    assert text == prompt.head() + "Mary went to the kitchen." + prompt.tail(WHERE)


@pytest.mark.skipif(lm_eval_task_dir() is None, reason="lm-eval is not installed")
@pytest.mark.parametrize("qa", range(1, 21))
def test_lm_eval_prompts_agree_with_the_published_ones(qa):
    ours, theirs = babilong_prompt(qa, "published"), babilong_prompt(qa, "lm-eval")
    assert babilong_prompt(qa).source == theirs.source and "babilong_qa" in theirs.source
    assert [q for _, q, _ in theirs.examples] == [q for _, q, _ in ours.examples]
    assert [a for _, _, a in theirs.examples] == [a for _, _, a in ours.examples]
    # the same instruction and post-prompt up to whitespace, quote marks and qa2's first words
    # (lm-eval: "I will give you context", published: "I give you context")
    def norm(text):
        text = text.replace("\u2019", "'").replace("question.You", "question. You").replace("I will give", "I give")
        return " ".join(text.split())
    assert norm(theirs.instruction + " " + theirs.post_prompt) == norm(ours.instruction + " " + ours.post_prompt)


def test_published_qa4_and_qa5_instructions_are_as_published():
    # the benchmark's qa4 instruction speaks of people and qa5's of locations: kept as published
    assert "different people" in babilong_prompt(4, "published").instruction
    assert "locations and their relations" in babilong_prompt(5, "published").instruction


def test_bad_input():
    with pytest.raises(ValueError, match="qa1-qa20"):
        babilong_prompt(21)
    with pytest.raises(ValueError, match="prompt source"):
        babilong_prompt(1, "mine")
