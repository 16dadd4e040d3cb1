"""prompts: prompts from a local table, scored by a weighted list of rewards.

    task:
      name: prompts
      options:
        path: data/questions.jsonl        # JSONL, CSV or Parquet
        prompt_column: question           # default: prompt
        rewards:
          - {name: numeric_match, column: answer}
          - {name: format, pattern: "^[0-9]+$", weight: 0.2}
          - {fn: my_rewards:brevity, weight: 0.1}
          - {reward_model: runs/rm}

Every other column of the table reaches the rewards as a keyword argument (one
value per completion). Token-level rewards (and shaped ones) are paid per token
through ``token_rewards``; sequence-level ones through ``sequence_rewards``.
Each reward's batch mean is logged as ``rewards/<name>`` (``last_reward_components``).

A sample that no reward could score (every one returned None) is reported as
0.0, flagged by ``last_scorable`` and counted as ``rewards/unscorable``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from tokrl.tasks.data import load_table
from tokrl.rewards.base import (
    RESERVED,
    SEQUENCE,
    TOKEN,
    call_rewards,
    combine_sequence,
    combine_tokens,
    sample_totals,
)
from tokrl.rewards.spec import build_rewards
from tokrl.tasks.base import Example, Task


class RewardsTask(Task):
    """A task scored by a weighted list of rewards (``tokrl.rewards.spec``): token-level ones
    through ``token_rewards``, sequence-level ones through ``sequence_rewards``. A subclass
    calls ``set_rewards`` and keeps ``columns``, the example keys passed to the rewards."""

    tokenizer: Any
    columns: list[str]

    def set_rewards(self, rewards: list, source: str, besides: str = "prompt") -> None:
        """Use ``rewards`` (built Reward objects); each one's columns must be in ``self.columns``
        (``source``, ``besides``: how a missing column's message names the data and its prompt)."""
        self.rewards = rewards
        for r in self.rewards:
            for c in r.columns:
                if c not in self.columns:
                    raise ValueError(f"reward {r.name!r} needs the column {c!r}, which {source} does not have "
                                     f"(columns: {', '.join(self.columns) or 'none'} besides {besides})")
        self.weights = {r.name: r.weight for r in self.rewards}
        self._batch: dict[str, Any] | None = None   # the batch scored last: texts, ids, values per reward

    def _inputs(self, examples: list[Example]) -> tuple[list[str], dict[str, list[Any]]]:
        return [ex["prompt"] for ex in examples], {c: [ex.get(c) for ex in examples] for c in self.columns}

    def token_rewards(self, examples: list[Example], completions: list[list[int]]) -> list[list[float]] | None:
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True) if completions else []
        # kept so that sequence_rewards on the same batch passes the sampled ids
        self._batch = {"texts": texts, "ids": [list(c) for c in completions], "values": {}}
        token_level = [r for r in self.rewards if r.level == TOKEN]
        if not token_level:
            return None
        prompts, columns = self._inputs(examples)
        values = call_rewards(token_level, prompts, texts, self._batch["ids"], columns)
        self._batch["values"].update(values)
        dense = combine_tokens(values, self.weights, [len(c) for c in completions])
        self._warn_unscorable()
        return [[0.0] * len(c) if row is None else row for row, c in zip(dense, completions)]

    def sequence_rewards(self, examples: list[Example], completions: list[str]) -> list[float] | None:
        batch = self._batch
        if batch is None or batch["texts"] != list(completions):
            # not the batch token_rewards saw (a caller that scores texts only): re-encode
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in completions]
            batch = self._batch = {"texts": list(completions), "ids": ids, "values": {}}
        sequence_level = [r for r in self.rewards if r.level == SEQUENCE]
        if not sequence_level:
            return None
        prompts, columns = self._inputs(examples)
        values = call_rewards(sequence_level, prompts, list(completions), batch["ids"], columns)
        batch["values"].update(values)
        totals = combine_sequence(values, self.weights)
        self._warn_unscorable()
        return [0.0 if t is None else t for t in totals]

    def _warn_unscorable(self) -> None:
        scorable = self.last_scorable()
        if scorable is not None and not all(scorable):
            warnings.warn("some completions could not be scored by any reward (each returned None); they get "
                          "reward 0.0 for now (counted as rewards/unscorable)", RuntimeWarning, stacklevel=3)

    def last_scorable(self) -> list[bool] | None:
        if not self._batch or not self._batch["values"]:
            return None
        totals = sample_totals(self._batch["values"])
        n = len(self._batch["texts"])
        scorable = [any(v[i] is not None for v in totals.values()) for i in range(n)]
        return None if all(scorable) else scorable

    def last_reward_components(self) -> dict[str, float]:
        """``rewards/<name>``: each reward's unweighted mean over the samples it scored in the
        batch scored last (a token-level reward's value is its sum over tokens), and
        ``rewards/unscorable``: how many samples no reward could score."""
        if not self._batch or not self._batch["values"]:
            return {}
        out = {}
        for name, values in sample_totals(self._batch["values"]).items():
            scored = [v for v in values if v is not None]
            if scored:
                out[f"rewards/{name}"] = math.fsum(scored) / len(scored)
        scorable = self.last_scorable()
        out["rewards/unscorable"] = float(0 if scorable is None else scorable.count(False))
        return out


class Prompts(RewardsTask):
    name = "prompts"

    def __init__(self, tokenizer, path: str, rewards: list[dict[str, Any]], prompt_column: str = "prompt",
                 test_path: str | None = None, test_fraction: float = 0.1, seed: int = 0, engine: str = "auto"):
        self.tokenizer = tokenizer
        train, test = load_table(path, [prompt_column], test_path, test_fraction, seed, engine,
                                 option="task.options.prompt_column")
        names = list(dict.fromkeys(k for row in train + test for k in row))
        self.columns = [c for c in names if c != prompt_column]
        for c in self.columns:
            if c in (*RESERVED, "prompt"):
                raise ValueError(f"{path}: column {c!r} clashes with an argument every reward gets; rename it")
        self._splits = {"train": [self._example(r, prompt_column, path) for r in train],
                        "test": [self._example(r, prompt_column, path) for r in test]}
        self.set_rewards(build_rewards(rewards, tokenizer), path, prompt_column)

    def _example(self, row: dict[str, Any], prompt_column: str, path: str) -> Example:
        prompt = row[prompt_column]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{path}: a row's {prompt_column!r} is {prompt!r}; every prompt must be non-empty text")
        return {"prompt": prompt, **{c: row.get(c) for c in self.columns}}

    def examples(self, split: str) -> list[Example]:
        return self._splits[split]
