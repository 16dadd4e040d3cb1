"""Built-in tasks, by name."""

import inspect

from tokrl.errors import ConfigError
from tokrl.tasks.arithmetic import Arithmetic
from tokrl.tasks.base import Example, PromptSampler, Task
from tokrl.tasks.prompts import Prompts
from tokrl.tasks.target_match import TargetMatch

TASKS: dict[str, type[Task]] = {"arithmetic": Arithmetic, "prompts": Prompts, "target_match": TargetMatch}


def build_task(name: str, tokenizer, **options) -> Task:
    """The task ``name`` built with ``options`` (its constructor's keyword arguments)."""
    if name not in TASKS:
        raise ConfigError(f"task.name: unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    params = inspect.signature(TASKS[name]).parameters
    valid = [p for p in params if p != "tokenizer"]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in options:
        if key not in valid and not open_ended:
            raise ValueError(f"unknown option {key!r} for task {name} (task.options); valid: {', '.join(valid)}")
    try:
        return TASKS[name](tokenizer, **options)
    except TypeError as e:   # a wrongly typed option deep inside the constructor
        raise ValueError(f"task {name}: bad task.options ({e})") from None


__all__ = ["Arithmetic", "Example", "PromptSampler", "Prompts", "Task", "TargetMatch", "TASKS", "build_task"]
