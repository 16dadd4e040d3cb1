"""Multi-turn tasks: an ``Environment`` (tokrl.env) adapted to the task protocol.

    task:
      name: guess_number            # a built-in environment, or a user one: mypkg.envs:Maze
      options:
        max_turns: 6                # policy turns per episode
        max_episode_tokens: 96      # policy + environment tokens after the prompt
        step_timeout: 5.0           # seconds one env.step may take
        n: 8                        # anything else: the environment's own options

A user environment is named by import path like a user reward; the object named is
called once with the environment's options (a class: its constructor; a factory: a
function that returns the environment) and each episode runs on a deep copy of what
it returned. Rewards come from the environment's ``step``; the rollout
(``generation.multiturn``) runs the episodes and scores them, so ``token_rewards`` and
``sequence_rewards`` are not used.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from tokrl.tasks.base import Environment, Example, Task

LIMITS = ("max_turns", "max_episode_tokens", "step_timeout")
"""task.options that belong to tokrl, not to the environment"""


class EnvironmentTask(Task):
    """Episodes of several turns with ``environment``; the limits are task.options."""

    def __init__(self, tokenizer, environment: Environment, max_turns: int = 4, max_episode_tokens: int = 128,
                 step_timeout: float = 10.0):
        if not isinstance(environment, Environment):
            raise ValueError(f"task: {environment!r} is not a tokrl.env.Environment (subclass it: reset, step)")
        if max_turns < 1 or max_episode_tokens < 1 or not step_timeout > 0:
            raise ValueError("task.options: max_turns and max_episode_tokens must be >= 1 and step_timeout > 0")
        self.tokenizer, self.environment = tokenizer, environment
        self.name = getattr(environment, "name", None) or type(environment).__name__
        self.max_turns, self.max_episode_tokens, self.step_timeout = max_turns, max_episode_tokens, step_timeout
        self.stats: dict[str, float] = {}
        """the episodes of the batch run last: turns, truncated, skipped (set by the rollout)"""

    def examples(self, split: str) -> list[Example]:
        return self.environment.examples(split)

    def make(self, seed: int) -> Environment:
        """A fresh environment for one episode, its ``rng`` seeded with ``seed``."""
        env = copy.deepcopy(self.environment)
        env.rng = random.Random(seed)
        return env

    def demonstration(self, example: Example) -> list[str] | None:  # type: ignore[override]
        """The environment's demonstration: policy turns and observations, alternating."""
        return self.environment.demonstration(example)

    def last_reward_components(self) -> dict[str, float]:
        return dict(self.stats)


def build_environment_task(factory, tokenizer, name: str, options: dict[str, Any]) -> EnvironmentTask:
    """``factory`` (a class or a function) called once with the environment's options,
    wrapped in an EnvironmentTask with the limits of ``options``. name: how the recipe named it."""
    limits = {k: options[k] for k in LIMITS if k in options}
    kwargs = {k: v for k, v in options.items() if k not in LIMITS}
    if "factory" in kwargs:           # {factory: {keyword arguments}}, as for reward factories
        extra = kwargs.pop("factory")
        if not isinstance(extra, dict):
            raise ValueError(f"task {name}: task.options.factory must be a mapping of keyword arguments")
        kwargs.update(extra)
    try:
        environment = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"task {name}: bad task.options for the environment ({e}); tokrl's own: "
                         f"{', '.join(LIMITS)}") from None
    if not isinstance(environment, Environment):
        raise ValueError(f"task {name}: calling it returned {type(environment).__name__}, not a "
                         "tokrl.env.Environment")
    return EnvironmentTask(tokenizer, environment, **limits)
