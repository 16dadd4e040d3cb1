"""Built-in tasks, by name."""

import inspect

from tokrl.errors import ConfigError
from tokrl.tasks.arithmetic import Arithmetic
from tokrl.tasks.base import Example, PromptSampler, Task
from tokrl.tasks.calculator import Calculator
from tokrl.tasks.guess_number import GuessNumber
from tokrl.tasks.multiturn import EnvironmentTask, build_environment_task
from tokrl.tasks.prompts import Prompts
from tokrl.tasks.stepwise_task import Stepwise
from tokrl.tasks.target_match import TargetMatch

TASKS: dict[str, type[Task]] = {"arithmetic": Arithmetic, "prompts": Prompts, "stepwise": Stepwise,
                             "target_match": TargetMatch}
ENVIRONMENTS = {"calculator": Calculator, "guess_number": GuessNumber}
"""built-in multi-turn environments (``tokrl.env.Environment``), run as an EnvironmentTask"""


def build_task(name: str, tokenizer, **options) -> Task:
    """The task ``name`` built with ``options`` (its constructor's keyword arguments): a
    built-in task, a built-in environment, or a user environment named ``module:Class`` (or
    ``module:factory``, ``file.py:Class``) whose options are the environment's besides
    tokrl's limits (``tasks.multiturn``)."""
    if name in ENVIRONMENTS or ":" in name:
        if name in ENVIRONMENTS:
            factory = ENVIRONMENTS[name]
        else:
            from tokrl.rewards.spec import load_callable

            factory = load_callable(name, what="task.name")
        return build_environment_task(factory, tokenizer, name, options)
    if name not in TASKS:
        raise ConfigError(f"task.name: unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}, "
                          f"environments: {', '.join(sorted(ENVIRONMENTS))} (or a user environment: module:Class)")
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


__all__ = ["Arithmetic", "Calculator", "ENVIRONMENTS", "EnvironmentTask", "Example", "GuessNumber", "PromptSampler", "Prompts", "Stepwise", "Task", "TargetMatch", "TASKS", "build_task"]
