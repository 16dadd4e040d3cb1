"""Where a run's numbers go, all JSON lines in the run directory:

- metrics.jsonl: one line per step (reward, entropy, KL, losses, timings, ...)
- samples.jsonl: a few training completions per step with per-token data
  (token ids, token texts, rewards, advantages)
- eval.jsonl: one line per held-out evaluation (step 0 is before training)
- eval_samples.jsonl: every held-out completion of each evaluation
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokrl.types import Rollout


class MetricsWriter:
    """Appends JSON lines to files in the run directory, flushed after every write."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self._files = {name: open(run_dir / f"{name}.jsonl", "a", encoding="utf-8")
                       for name in ("metrics", "samples", "eval", "eval_samples")}

    def _write(self, name: str, record: dict[str, Any]) -> None:
        f = self._files[name]
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._write("metrics", metrics)

    def write_eval(self, step: int, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        self._write("eval", {"step": step, **metrics})
        for record in samples:
            self._write("eval_samples", {"step": step, **record})

    def write_samples(self, step: int, batch: Rollout, k: int, tokenizer) -> None:
        """The first k completions of the batch with their token-level data."""
        for i in range(min(k, batch.num_sequences)):
            n = int(batch.lengths[i])
            ids = batch.tokens[i, :n].tolist()
            record = {"step": step, "prompt": batch.examples[i]["prompt"], "completion": batch.texts[i],
                      "score": float(batch.scores[i]), "tokens": ids,
                      "token_texts": [tokenizer.decode([t]) for t in ids],
                      "rewards": [round(x, 6) for x in batch.rewards[i, :n].tolist()]}
            if batch.advantages is not None:
                record["advantages"] = [round(x, 6) for x in batch.advantages[i, :n].tolist()]
            self._write("samples", record)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
