"""Rewards: the protocol, built-in rewards, user functions, learned reward models, shaping.

    from tokrl.rewards import build_rewards, call_rewards, combine_sequence

See ``tokrl.rewards.base`` for the protocol (TRL's reward-function signature),
``tokrl.rewards.spec`` for how a recipe names rewards, ``tokrl.rewards.builtin``
for the built-in ones and ``tokrl.rewards.shaping`` for dense shaping.
"""

from tokrl.rewards.base import (
                                LEVELS,
                                SEQUENCE,
                                TOKEN,
                                Reward,
                                RewardError,
                                call_rewards,
                                combine_sequence,
                                combine_tokens,
                                sample_totals,
)
from tokrl.rewards.builtin import BUILTIN
from tokrl.rewards.shaping import prefix_texts, shape, shaped
from tokrl.rewards.spec import build_reward, build_rewards, load_callable

__all__ = [
    "BUILTIN", "LEVELS", "SEQUENCE", "TOKEN", "Reward", "RewardError", "build_reward", "build_rewards",
    "call_rewards", "combine_sequence", "combine_tokens", "load_callable", "prefix_texts", "sample_totals",
    "shape", "shaped",
]
