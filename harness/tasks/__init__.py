"""Synthetic recall tasks: generators, the task registry, and the data/evaluation adapter.

Tasks are plugins on one mechanism (``harness.tasks.base``): a ``Task`` subclass whose
pydantic fields are its parameters, registered with ``@register_task("name")`` and named in a
suite's ``task`` section. Built in: ``mqar`` (Zoology's multi-query associative recall),
``selective_copy`` and ``noisy_recall``. A task suite trains with the same loop and store as
a language-model suite; only the data (``TaskData``) and the metric (``evaluate_task``:
accuracy at the scored positions of held-out sequences) differ.
"""

from harness.tasks.base import (
    IGNORE_INDEX,
    Sequences,
    Task,
    TaskError,
    TaskParamError,
    get_task,
    list_tasks,
    make_sequences,
    register_task,
)
from harness.tasks.dataset import TaskData, TaskEvalResult, evaluate_task, load_task_data

# Importing the built-ins registers them.
from harness.tasks import mqar, noisy_recall, selective_copy  # noqa: F401  isort: skip

__all__ = [
    "IGNORE_INDEX",
    "Sequences",
    "Task",
    "TaskData",
    "TaskError",
    "TaskEvalResult",
    "TaskParamError",
    "evaluate_task",
    "get_task",
    "list_tasks",
    "load_task_data",
    "make_sequences",
    "register_task",
]
