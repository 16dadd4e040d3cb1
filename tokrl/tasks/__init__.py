"""Built-in tasks, by name."""

import inspect

from tokrl.tasks.base import Example, PromptSampler, Task
from tokrl.tasks.target_match import TargetMatch

TASKS: dict[str, type[Task]] = {"target_match": TargetMatch}


def build_task(name: str, tokenizer, **options) -> Task:
    """The task ``name`` built with ``options`` (its constructor's keyword arguments)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    params = inspect.signature(TASKS[name]).parameters
    valid = [p for p in params if p != "tokenizer"]
    for key in options:
        if key not in valid:
            raise ValueError(f"unknown option {key!r} for task {name} (task.options); valid: {', '.join(valid)}")
    try:
        return TASKS[name](tokenizer, **options)
    except TypeError as e:   # a wrongly typed option deep inside the constructor
        raise ValueError(f"task {name}: bad task.options ({e})") from None


__all__ = ["Example", "PromptSampler", "Task", "TargetMatch", "TASKS", "build_task"]
