"""Held-out evaluation: greedy completions on the task's test split, scored by the task."""

from __future__ import annotations

import torch

from tokrl.config import SamplingConfig
from tokrl.rollout import rollout
from tokrl.tasks import Example, Task


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, examples: list[Example], sampling: SamplingConfig,
             chat_template: bool = False, autocast=None, batch_size: int = 64) -> dict[str, float]:
    """Mean reward of one completion per example, plus the fraction of perfect ones.

    "perfect" means the completion earned the best score seen for the task's metric:
    a reward of at least 1.0 (target_match and exact-answer tasks score 1.0 when right).
    """
    scores = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = rollout(model, tokenizer, task, chunk, 1, sampling, None, chat_template, autocast)
        scores.append(batch.scores)
    s = torch.cat(scores) if scores else torch.zeros(0)
    return {"reward": float(s.mean()) if len(s) else 0.0,
            "solved": float((s >= 1.0 - 1e-6).float().mean()) if len(s) else 0.0,
            "n": len(s)}
