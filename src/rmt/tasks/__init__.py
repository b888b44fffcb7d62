"""The papers' tasks as seeded, offline generators, by name.

>>> import rmt.tasks
>>> task = rmt.tasks.get_task("memorize", length=1024, seed=0)
>>> batch = task.collate([task.example(i) for i in range(8)])

``list_tasks()`` names them all; ``rmt tasks`` on the command line shows a sample of each.
"""

from . import algorithmic, babi, babilong, babilong_prompts, classification, language_modeling, memory_tasks  # noqa: F401  (register)
from .algorithmic import AssociativeRetrievalTask, CopyTask, QuadraticEquationsTask, ReverseTask
from .babi import (
    BabiLine,
    BabiTask,
    Story,
    Tracker,
    babi_questions,
    find_babi_file,
    format_babi,
    generate_story,
    parse_babi,
    read_babi,
    write_babi,
)
from .babilong import BabilongTask, context_length
from .babilong_prompts import BabilongPrompt, babilong_prompt, compare_answers, lenient_match
from .base import (
    IGNORE_INDEX,
    Task,
    TaskDataset,
    get_task,
    list_tasks,
    parse_length,
    predictions_from_logits,
    register,
    task_at,
    task_description,
)
from .classification import TextClassificationTask
from .language_modeling import LanguageModelingTask, LastSegmentLanguageModelingTask
from .memory_tasks import DetectAndMemorizeTask, MemorizeTask, ReasoningTask

__all__ = [
    "IGNORE_INDEX", "AssociativeRetrievalTask", "BabiLine", "BabiTask", "BabilongPrompt", "BabilongTask", "CopyTask",
    "DetectAndMemorizeTask", "LanguageModelingTask", "LastSegmentLanguageModelingTask", "MemorizeTask",
    "QuadraticEquationsTask", "ReasoningTask", "ReverseTask", "Story", "Task", "TaskDataset",
    "TextClassificationTask", "Tracker", "babi_questions", "babilong_prompt", "compare_answers", "context_length",
    "find_babi_file", "format_babi", "generate_story", "get_task", "lenient_match", "list_tasks", "parse_babi",
    "parse_length", "predictions_from_logits", "read_babi", "register", "task_at", "task_description", "write_babi",
]
