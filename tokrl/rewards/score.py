"""Scoring a batch of completions with its task: per-token rewards, checked.

A task pays causal token rewards and a sequence reward; here they become one
(N, T) tensor with the sequence reward on each completion's last token, and
anything that is not a finite number is an error naming the task and the sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokrl.tasks.base import Example, Task


def score(task: Task, examples: list[Example], tokens: Tensor, lengths: Tensor, texts: list[str],
          skip_bad: bool = False) -> tuple[Tensor, Tensor]:
    """Per-token rewards from the task: its causal token rewards plus its sequence
    reward on each completion's last token.

    returns rewards (N, T) float32 and bad (N,) bool: rows with a non-finite reward.
    A non-finite reward is an error naming the task and the completion, unless
    ``skip_bad``: then the row's rewards are zeroed and flagged for the caller to drop.
    """
    N, T = tokens.shape
    rewards = torch.zeros(N, T)
    ids = [tokens[i, : lengths[i]].tolist() for i in range(N)]
    dense = call_task(task, "token_rewards", examples, ids)
    if dense is not None:
        check_numbers(task, "token_rewards", dense, N, nested=True)
        for i, r in enumerate(dense):
            if len(r) != len(ids[i]):
                raise ValueError(f"task {task.name} gave {len(r)} token rewards for a completion of {len(ids[i])} tokens")
            rewards[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    final = call_task(task, "sequence_rewards", examples, texts)
    if final is not None:
        check_numbers(task, "sequence_rewards", final, N, nested=False)
        last = (lengths - 1).clamp(min=0)
        rewards[torch.arange(N), last] += torch.tensor([float(x) for x in final], dtype=torch.float32)
    bad = ~torch.isfinite(rewards).all(dim=1)                              # (N,)
    if bool(bad.any()):
        if not skip_bad:
            i = int(bad.nonzero()[0])
            raise ValueError(f"task {task.name} gave a non-finite reward for completion {i} ({texts[i]!r}); "
                             "fix the reward, or set train.on_bad_reward=skip to drop such samples")
        rewards[bad] = 0.0
    return rewards, bad


def check_numbers(task: Task, method: str, values, n: int, nested: bool) -> None:
    """``values`` must be a list of n numbers (or, nested, of n lists of numbers)."""
    def is_number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(values, (list, tuple)):
        raise ValueError(f"task {task.name}: {method} returned {type(values).__name__}, expected a list of {n}")
    if len(values) != n:
        raise ValueError(f"task {task.name}: {method} returned {len(values)} values for {n} completions")
    for row in values:
        items = row if nested else [row]
        if nested and not isinstance(row, (list, tuple)):
            raise ValueError(f"task {task.name}: {method} returned {row!r} where a list of numbers belongs")
        for x in items:
            if not is_number(x):
                raise ValueError(f"task {task.name}: {method} returned {x!r}, which is not a number")


def call_task(task: Task, method: str, *args):
    try:
        return getattr(task, method)(*args)
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as e:
        raise ValueError(f"task {task.name}: {method} raised {type(e).__name__}: {e}") from None
