"""What the reward tests share: one reward called on one batch, a built-in by name."""

from __future__ import annotations

from tokrl.rewards import Reward, build_reward, call_rewards


def run(reward: Reward, completions, prompts=None, ids=None, **columns):
    """The checked values of one reward on one batch."""
    prompts = prompts or ["p"] * len(completions)
    ids = ids if ids is not None else [[3] * max(1, len(c)) for c in completions]
    return call_rewards([reward], prompts, completions, ids, columns)[reward.name]


def builtin(name, **options):
    return build_reward({"name": name, **options})
