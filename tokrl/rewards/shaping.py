"""Dense rewards from any prefix scorer: potential-based shaping.

Given a score Φ of partial completions, token t earns

    r_t = Φ(y_<=t) − Φ(y_<t),      with Φ(y_<1) := 0 (the empty prefix),

so the rewards telescope: Σ_t r_t = Φ(y), the episode return is the final score,
and each token is paid what it added to the score. (Taking Φ(∅) = 0 rather than
the scorer's value on the empty string only moves a per-prompt constant, which no
baseline-corrected gradient sees; it makes the return equal the score exactly.)
"""

from __future__ import annotations

from typing import Any

from tokrl.rewards.base import (
    SEQUENCE,
    TOKEN,
    Reward,
    RewardError,
    await_all,
    check_sequence_values,
    reward_kwargs,
)


def shape(potentials: list[float | None]) -> list[float]:
    """Token rewards from the potentials of the prefixes y_<=1 ... y_<=T.

    potentials: (T,) Φ(y_<=t); a None (a prefix the scorer cannot score) keeps the
    potential before it, so that token earns 0.  returns: (T,) r_t = Φ_t − Φ_{t−1}, Φ_0 = 0.
    """
    rewards, previous = [], 0.0
    for phi in potentials:
        current = previous if phi is None else phi
        rewards.append(current - previous)
        previous = current
    return rewards


def prefix_texts(tokenizer, ids: list[int]) -> list[str]:
    """The decoded prefixes y_<=1 ... y_<=T of a completion (special tokens skipped, as the
    rollout decodes completions), so the last one is the completion's text."""
    return [tokenizer.decode(ids[:t], skip_special_tokens=True) for t in range(1, len(ids) + 1)]


def shaped(reward: Reward, tokenizer) -> Reward:
    """The token-level reward that pays the sequence-level ``reward`` as potential-based
    shaping: ``reward`` scores every prefix of every completion (in one batched call), and
    token t earns the change in score it made. The completion's return is ``reward``'s
    score of the whole completion (None there: the completion is left unscored).
    """
    if reward.level != SEQUENCE:
        raise RewardError(f"reward {reward.name!r}: only a sequence-level reward can be shaped")

    def shaped_fn(prompts: list[Any], completions: list[str], completion_ids: list[list[int]],
                  **columns: list[Any]) -> list[list[float] | None]:
        rows = [i for i, ids in enumerate(completion_ids) for _ in ids]          # one row per prefix
        texts = [t for ids in completion_ids for t in prefix_texts(tokenizer, ids)]
        prefix_ids = [ids[:t] for ids in completion_ids for t in range(1, len(ids) + 1)]
        batch = reward_kwargs(reward, [prompts[i] for i in rows], texts, prefix_ids,
                              {k: [v[i] for i in rows] for k, v in columns.items()})
        values = await_all([reward.fn(**batch)], [reward.name])[0] if texts else []
        potentials = check_sequence_values(reward.name, values, texts)
        out, start = [], 0
        for ids in completion_ids:
            phi = potentials[start:start + len(ids)]
            start += len(ids)
            out.append(None if ids and phi[-1] is None else shape(phi))
        return out

    return Reward(name=reward.name, fn=shaped_fn, weight=reward.weight, level=TOKEN, columns=reward.columns)
