"""Held-out evaluation: greedy completions on the task's test split, scored by the task."""

from __future__ import annotations

from typing import Any

import torch

from tokrl.config import SamplingConfig
from tokrl.generation.batch import rollout
from tokrl.tasks import Example, Task


EVAL_BATCH = 64
"""held-out prompts per rollout"""


@torch.no_grad()
def evaluate(engine, tokenizer, task: Task, examples: list[Example], sampling: SamplingConfig,
             chat_template: bool = False, dtype: str = "float32", batch_size: int = EVAL_BATCH,
             skip_bad: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score one completion per example, sampled by ``engine`` (an Engine, or a model that
    tokrl's engine runs in ``dtype``).

    returns the metrics {"reward": mean score, "solved": fraction scoring >= 1.0
    (target_match and exact-answer tasks pay 1.0 for a right answer), "n"} and one
    record {"prompt", "completion", "score"} per example. With ``skip_bad``
    (train.on_bad_reward=skip) a sample whose reward or environment failed scores 0.
    """
    scores, samples = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = rollout(engine, tokenizer, task, chunk, 1, sampling, chat_template=chat_template, dtype=dtype,
                        skip_bad_rewards=skip_bad)
        scores.append(batch.scores)
        samples += [{"prompt": ex["prompt"], "completion": text, "score": float(score)}
                    for ex, text, score in zip(chunk, batch.texts, batch.scores)]
    s = torch.cat(scores) if scores else torch.zeros(0)
    metrics = {"reward": float(s.mean()) if len(s) else 0.0,
               "solved": float((s >= 1.0 - 1e-6).float().mean()) if len(s) else 0.0,
               "n": len(s)}
    return metrics, samples


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """The held-out change from ``before`` to ``after`` (records of ``evaluate``, paired by
    prompt; the k-th record of a prompt that repeats, as a multi-turn task's prompts do, with
    the k-th): mean difference of score and of solved (score >= 1), each with a 95%
    confidence interval from the paired differences (normal approximation,
    mean +- 1.96 * sd / sqrt(n))."""
    def keyed(records: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
        seen: dict[str, int] = {}
        out = {}
        for r in records:
            k = seen[r["prompt"]] = seen.get(r["prompt"], -1) + 1
            out[(r["prompt"], k)] = r["score"]
        return out
    old, new = keyed(before), keyed(after)
    pairs = [(old[key], score) for key, score in new.items() if key in old]
    out: dict[str, Any] = {"n": len(pairs)}
    for name, f in (("reward", lambda s: s), ("solved", lambda s: float(s >= 1.0 - 1e-6))):
        d = torch.tensor([f(b) - f(a) for a, b in pairs], dtype=torch.float64)
        mean = float(d.mean()) if len(d) else 0.0
        half = 1.96 * float(d.std()) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        out[name] = {"change": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}
    return out
