"""Where a run's numbers go.

Always, as JSON lines in the run directory:

- metrics.jsonl: one line per step, ``{"step": 1, "reward/mean": ..., ...}``
  (reward, entropy, KL, losses, timings, memory (``tokrl.runs.memory``), ...)
- samples.jsonl: a few training completions per step with per-token data,
  ``{"step", "prompt", "completion", "score", "tokens", "token_texts", "rewards",
  "advantages"}`` (the last four are lists with one entry per generated token;
  ``advantages`` is absent when the batch has none)
- eval.jsonl: one line per held-out evaluation, ``{"step", "reward", "solved", "n"}``
  (step 0 is before training)
- eval_samples.jsonl: every held-out completion of each evaluation,
  ``{"step", "prompt", "completion", "score"}``

Optionally, the same scalars also go to

- TensorBoard: event files under ``run_dir/tb`` when ``log.tensorboard`` is true
  and the ``tensorboard`` package is installed (silently skipped otherwise);
- Weights & Biases: when ``log.wandb_project`` is set, a run in that project, in
  ``log.wandb_mode`` (``offline`` writes under ``run_dir/wandb`` and never touches
  the network; ``wandb sync`` uploads it later).

The sinks see every step's numeric metrics under their own names and each
evaluation as ``eval/<name>`` at its step (``eval/*`` keys inside a step's metrics
are left to the evaluation, so no point is logged twice).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from tokrl.config import LogConfig
from tokrl.types import Rollout

JSONL_FILES = ("metrics", "samples", "eval", "eval_samples")


def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``record`` as floats (bools, strings and the step left out)."""
    return {f"{prefix}{k}": float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """Scalars to TensorBoard event files under ``run_dir/tb``."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # on resume, TensorBoard hides what the interrupted process logged after resume_step
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Scalars to a Weights & Biases run (offline mode writes under ``run_dir/wandb``).

    The run's id is kept in ``run_dir/wandb/tokrl-run-id`` so that a resumed training
    continues the same W&B run.
    """

    def __init__(self, run_dir: Path, project: str, mode: str, config: dict[str, Any] | None,
                 resume: bool = False):
        import wandb

        id_file = run_dir / "wandb" / "tokrl-run-id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        # console="off": tokrl's own stdout (a JSON summary) is left alone
        self.run = wandb.init(project=project, mode=mode, dir=str(run_dir), config=config or {},
                              name=run_dir.name, id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(console="off"))
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run.id + "\n")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        # W&B drops points whose step goes backwards; the trainer's steps never do
        self.run.log({k: v for k, v in scalars.items() if math.isfinite(v)}, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        wandb.teardown()     # finish() returns before the offline log is on disk; this waits for it


def check_sinks(log: LogConfig) -> None:
    """Raise a one-line ValueError when ``log`` asks for a sink that is not installed."""
    if log.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"log.wandb_project={log.wandb_project} needs Weights & Biases: "
                         "pip install wandb (or 'tokrl[wandb]'), or set log.wandb_project=null")


class MetricsWriter:
    """Appends JSON lines to files in the run directory, flushed after every write,
    and mirrors the scalars to TensorBoard / W&B as ``log`` asks.

    log: the run's LogConfig (None: JSON lines only).
    config: the plain-data config (``tokrl.config.to_dict(cfg)``), stored with the W&B run.
    resume_step: set when a resumed run continues after this step: TensorBoard drops
    later points of the interrupted process and W&B continues the same run.
    """

    def __init__(self, run_dir: Path, log: LogConfig | None = None, config: dict[str, Any] | None = None,
                 resume_step: int | None = None):
        log = log or LogConfig(tensorboard=False)
        check_sinks(log)           # before anything is opened: a bad setting leaves nothing behind
        run_dir.mkdir(parents=True, exist_ok=True)
        self._files = {name: open(run_dir / f"{name}.jsonl", "a", encoding="utf-8") for name in JSONL_FILES}
        self._sinks: list[TensorBoardSink | WandbSink] = []
        try:
            if log.tensorboard and importlib.util.find_spec("tensorboard") is not None:
                self._sinks.append(TensorBoardSink(run_dir, resume_step))
            if log.wandb_project:
                self._sinks.append(WandbSink(run_dir, log.wandb_project, log.wandb_mode, config,
                                             resume=resume_step is not None))
        except BaseException:
            self.close()
            raise

    def _write(self, name: str, record: dict[str, Any]) -> None:
        f = self._files[name]
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()

    def _log(self, step: int, scalars: dict[str, float]) -> None:
        for sink in self._sinks:
            sink.log(step, scalars)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._write("metrics", metrics)
        if self._sinks:
            self._log(int(metrics["step"]), {k: v for k, v in _scalars(metrics).items() if not k.startswith("eval/")})

    def write_eval(self, step: int, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        self._write("eval", {"step": step, **metrics})
        for record in samples:
            self._write("eval_samples", {"step": step, **record})
        if self._sinks:
            self._log(step, _scalars({k: v for k, v in metrics.items() if k != "n"}, prefix="eval/"))

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
            policy = batch.mask[i, :n]
            if 0 < float(policy.sum()) < n:     # a multi-turn episode: 0 on the environment's tokens
                record["policy"] = [int(x) for x in policy.tolist()]
            self._write("samples", record)

    def close(self) -> None:
        """Close the files and finish the sinks; safe to call twice."""
        for f in self._files.values():
            f.close()
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()
