"""The task protocol: where prompts come from and how completions are scored.

A task speaks at two levels. ``token_rewards`` gives one reward per generated
token and must be causal (the reward of token t depends only on tokens <= t), so
an environment can pay it out as each token arrives. ``sequence_rewards`` scores a
whole decoded completion; its value is paid on the last generated token.
"""

from __future__ import annotations

import random
from typing import Any

Example = dict[str, Any]
"""One prompt: ``{"prompt": str, ...named columns passed through to rewards}``."""


class Task:
    """Base class; subclasses override what they use."""

    name: str = "task"

    def examples(self, split: str) -> list[Example]:
        """All examples of ``split`` ("train" or "test")."""
        raise NotImplementedError

    def demonstration(self, example: Example) -> str | list[str] | None:
        """A right completion of ``example`` in the expected format, for the supervised warm
        start (``warm_start`` in a recipe); a multi-turn task's is a list (the policy's turns
        and the environment's observations, alternating); None when the task cannot write one."""
        return None

    def max_tokens(self, example: Example) -> int | None:
        """Episode length at which the task ends the episode (None: only EOS or the cap)."""
        return None

    def token_rewards(self, examples: list[Example], completions: list[list[int]]) -> list[list[float]] | None:
        """Per completion, one reward per generated token id; None if the task has none."""
        return None

    def sequence_rewards(self, examples: list[Example], completions: list[str]) -> list[float] | None:
        """Per decoded completion, one score paid at its last token; None if none."""
        return None

    def last_reward_components(self) -> dict[str, float]:
        """Metrics of the batch scored last, to log beside the total: e.g. each reward's
        mean under its own name (``rewards/<name>``). {} for a task with one reward."""
        return {}

    def last_scorable(self) -> list[bool] | None:
        """For the batch scored last, (N,): False where no reward could score the sample
        (its reward was reported as 0.0). None when every sample was scorable."""
        return None


class Environment:
    """A multi-turn environment, in the spirit of gymnasium: it speaks between the policy's turns.

    A turn is the policy's text up to a stop: EOS, one of ``stop`` (e.g. ``</calc>``), the
    turn cap (sampling.max_new_tokens) or the episode's token budget. tokrl builds one
    environment per episode (a deep copy of the one the task was given), sets ``rng`` (a
    ``random.Random`` seeded from (run seed, step, prompt), so the G samples of a prompt face
    the same environment and a resumed run the same one), then calls

        prompt = env.reset(example)                       # the text the policy is prompted with
        observation, reward, done, info = env.step(turn)  # after each policy turn

    ``observation`` (a str, or None) is tokenized once and appended to the conversation (as
    a user turn of the chat template when the model uses one, else inline after the stop);
    ``reward`` lands on the last token of the turn that earned it. The episode ends when
    ``done``, when the observation is None, or at task.options.max_turns /
    max_episode_tokens (truncated, not an error).
    """

    name: str = "environment"
    stop: tuple[str, ...] = ()
    """strings that end a policy turn besides EOS (the turn includes the stop string)"""
    rng: random.Random
    """seeded by tokrl before each episode's reset"""

    def examples(self, split: str) -> list[Example]:
        """The episodes' examples of ``split`` ("train" or "test"): ``{"prompt": str, ...}``."""
        raise NotImplementedError

    def reset(self, example: Example) -> str:
        """Start an episode of ``example``; returns the prompt text (by default example["prompt"])."""
        return example["prompt"]

    def step(self, turn: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        """The policy said ``turn``: (observation or None, reward, done, info)."""
        raise NotImplementedError

    def demonstration(self, example: Example) -> list[str] | None:
        """A right episode of ``example`` for the supervised warm start: the policy's turns and
        the environment's observations, alternating, starting with a policy turn (the
        observations must be what ``step`` answers). None: the environment writes none."""
        return None


class PromptSampler:
    """Draws prompts without replacement, epoch after epoch, from a seeded shuffle.

    Its whole state is (seed, epoch, position), so a resumed run draws the same
    prompts an uninterrupted run would.
    """

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("the task has no training examples")
        self.examples = examples
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def sample(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.examples[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._shuffle()
