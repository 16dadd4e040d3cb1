"""The loop: prompts -> rollout -> rewards -> advantages -> buffer -> update -> log.

``train_step`` is one pass of it and reads top to bottom: each stage is a function
that takes the parts of the ``TrainState`` it uses and returns what it makes.
``train`` runs steps until max_steps or the target reward, with evaluations,
checkpoints and logs around them.

Under torchrun (see distributed.py) every process runs this same loop on its share
of the prompts; after the rollout the scored rows are gathered, so everything from
the rewards' KL penalty to the metrics is computed over the whole batch, exactly as
one process computes it. Only rank 0 writes to the run directory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from tokrl.config import Config, SamplingConfig, to_dict
from tokrl.models.load import load_policy, save_policy
from tokrl.runs.health import HealthWarning
from tokrl.runs.logs import truncate_logs
from tokrl.runs.memory import memory_metrics
from tokrl.runs.metrics import MetricsWriter, check_sinks
from tokrl.training import distributed
from tokrl.training.checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint
from tokrl.training.collect import Collected, collect
from tokrl.training.evaluate import evaluate
from tokrl.training.state import TrainState, build_state
from tokrl.training.update import update
from tokrl.training.warm_start import demonstrations, warm_start
from tokrl.types import Rollout


def collect_step(state: TrainState, cfg: Config) -> Collected:
    """The first half of a step: draw the step's prompts, collect, and fill the buffer
    with this process's rows."""
    examples = state.sampler.sample(cfg.train.prompts_per_step)     # the step's B prompts, alike on every process
    learner = state.learner
    step = collect(state.engine, learner.model, learner.value_head, state.reference, state.tokenizer, state.task,
                   examples, step=state.step, recipe=state.recipe, cfg=cfg, baseline=state.baseline,
                   beta=state.kl_coef.value, refill=lambda: state.sampler.sample(cfg.train.prompts_per_step))
    state.buffer.clear()                                 # on-policy: this step's data only
    state.buffer.add(distributed.own_rows(step.batch))
    return step


def train_step(state: TrainState, cfg: Config) -> tuple[dict[str, float], Rollout]:
    """One pass of the loop: collect, update, adapt beta; returns its metrics and the batch."""
    step = collect_step(state, cfg)
    t0 = time.perf_counter()
    stats, state.bad_steps = update(state.learner, state.buffer, state.recipe, cfg, state.kl_coef.value,
                                    state.shuffle_generator, state.bad_steps, state.step)
    state.engine.sync(state.learner.model)              # the next rollout samples from the new weights
    t_update = time.perf_counter() - t0
    state.step += 1
    state.kl_coef.update(step.kl_per_seq, step.batch.num_sequences)
    state.reward_avg.update(step.reward_mean)
    metrics = {"step": state.step, **step.metrics, **stats, "time/update_s": t_update,
               "reward/moving_avg": state.reward_avg.value}
    step_time = metrics["time/collect_s"] + t_update
    metrics["time/tokens_per_s"] = metrics["completion/tokens"] / max(step_time, 1e-9)
    metrics.update(memory_metrics())                    # RSS at the end of the step, and the peak so far
    return metrics, step.batch


def train(cfg: Config, run_dir: Path, progress: Callable[[dict[str, float]], None] | None = None,
          on_start: Callable[[], None] | None = None, resume: bool = False,
          warn: Callable[[HealthWarning], None] | None = None) -> dict[str, Any]:
    """Train until max_steps or until the moving-average reward reaches target_reward.

    Writes metrics.jsonl, samples.jsonl, eval.jsonl, eval_samples.jsonl, checkpoints/
    and (save_model) model/ into run_dir. ``on_start`` runs once the model and task have
    loaded and the first evaluation has run, before anything is written. With
    ``resume`` the run continues from the newest complete checkpoint in run_dir, and
    ends with the weights an uninterrupted run would have.
    ``warn`` gets each health warning as it begins (``runs.health``; default: a line on stderr).
    Under torchrun every process calls this; rank 0 alone runs ``on_start``, writes and warns.
    Returns {"steps", "eval_before", "eval_after", "stopped_early", "state"}.
    """
    check_sinks(cfg.log)             # a missing wandb fails before anything is written
    distributed.init(cfg)            # under torchrun: join the other processes
    state = build_state(cfg)
    # encoded before anything is written: a task without demonstrations fails here
    demos = demonstrations(state.task, state.tokenizer, cfg.model) if cfg.warm_start.epochs and not resume else None
    run_eval = evaluator(state, cfg)
    writer, before = open_run(state, cfg, run_dir, run_eval, on_start, resume)
    warm = run_warm_start(state, cfg, run_dir, demos, run_eval) if demos is not None else None
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    saved_step = state.step if resume else None
    stopped_early = False
    t = cfg.train
    while state.step < t.max_steps and not stopped_early:
        metrics, batch = train_step(state, cfg)
        if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
            mid, mid_samples = run_eval()
            writer.write_eval(state.step, mid, mid_samples)
            metrics.update({f"eval/{k}": v for k, v in mid.items()})
        writer.write_metrics(metrics)
        for warning in state.health.observe(metrics):
            if distributed.is_main():
                (warn or print_warning)(warning)
        writer.write_samples(state.step, batch, t.log_samples, state.tokenizer)
        if progress is not None:
            progress(metrics)
        stopped_early = t.target_reward is not None and state.reward_avg.value >= t.target_reward
        if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
            save_checkpoint(run_dir, state, config_yaml, t.keep_checkpoints)
            saved_step = state.step
    if saved_step != state.step:
        save_checkpoint(run_dir, state, config_yaml, t.keep_checkpoints)
    after = finish_run(state, cfg, run_dir, writer, run_eval)
    return {"steps": state.step, "eval_before": before, "eval_after": after, "stopped_early": stopped_early,
            "warm_start": warm, "state": state}


def run_warm_start(state: TrainState, cfg: Config, run_dir: Path, demos: list[tuple[list[int], int]],
                   run_eval) -> dict[str, Any]:
    """The supervised warm start (``training.warm_start``), then a held-out evaluation; rank 0
    writes both to warm_start.json and says them on stderr. returns that record."""
    main = distributed.is_main()
    if main:
        print(f"tokrl: warm start: {len(demos)} demonstrations x {cfg.warm_start.epochs} epochs", file=sys.stderr,
              flush=True)
    summary = warm_start(state.learner.model, state.tokenizer, demos, cfg)
    state.engine.sync(state.learner.model)
    summary["eval_after"], _ = run_eval()
    if main:
        (run_dir / "warm_start.json").write_text(json.dumps(summary, indent=2) + "\n")
        e = summary["eval_after"]
        print(f"tokrl: warm start done in {summary['seconds']:.0f} s: loss {summary['loss_first']:.3f} -> "
              f"{summary['loss_last']:.3f}, held-out reward {e['reward']:.3f}, solved {e['solved']:.3f}",
              file=sys.stderr, flush=True)
    return summary


def print_warning(warning: HealthWarning) -> None:
    print(f"tokrl: warning at step {warning.last}: {warning.describe()}", file=sys.stderr, flush=True)


def evaluator(state: TrainState, cfg: Config) -> Callable[[], tuple[dict[str, float], list[dict]]]:
    """The held-out evaluation of this run: greedy completions of the first eval_samples test prompts."""
    sampling = SamplingConfig(cfg.sampling.max_new_tokens, temperature=0.0)
    test = state.task.examples("test")[: cfg.train.eval_samples]

    def run_eval() -> tuple[dict[str, float], list[dict]]:
        # every process evaluates the same examples: under FSDP each forward pass needs them all
        return evaluate(state.engine, state.tokenizer, state.task, test, sampling, cfg.model.chat_template,
                        skip_bad=cfg.train.on_bad_reward == "skip")
    return run_eval


def open_run(state: TrainState, cfg: Config, run_dir: Path, run_eval, on_start, resume: bool):
    """A fresh run: evaluate, then ``on_start`` and the log files. A resumed one: restore the
    newest checkpoint and drop what was logged after it.

    returns (the metrics writer, the evaluation before training).
    """
    main = distributed.is_main()
    if resume:
        load_checkpoint(distributed.run_on_main(lambda: newest_checkpoint(run_dir)), state)
        state.engine.sync(state.learner.model)
        # drop what the crashed process logged after its last checkpoint
        before = distributed.run_on_main(lambda: truncate_logs(run_dir, state.step))
        writer = MetricsWriter(run_dir, cfg.log, to_dict(cfg), resume_step=state.step) if main else NoWriter()
        return writer, before
    before, before_samples = run_eval()
    # only now has every part loaded and run once: bad input has written nothing
    if on_start is not None:
        distributed.run_on_main(on_start)
    writer = MetricsWriter(run_dir, cfg.log, to_dict(cfg)) if main else NoWriter()
    writer.write_eval(0, before, before_samples)
    return writer, before


def finish_run(state: TrainState, cfg: Config, run_dir: Path, writer, run_eval) -> dict[str, float]:
    """The final evaluation, the exported model and the report; returns the evaluation."""
    after, after_samples = run_eval()
    writer.write_eval(state.step, after, after_samples)
    if cfg.train.save_model:
        export_model(state, cfg, run_dir / "model")
    writer.close()
    if cfg.log.report and distributed.is_main():
        from tokrl.runs.report import write_report

        write_report(run_dir)
    return after


class NoWriter:
    """The log writer of ranks other than 0: rank 0 alone writes the run directory."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def export_model(state: TrainState, cfg: Config, directory: Path) -> None:
    """The trained policy in Hugging Face format, written by rank 0 (every process calls this)."""
    model = state.learner.model
    if not distributed.is_sharded(model):
        if distributed.is_main():
            save_policy(model, state.tokenizer, directory)
        return
    weights = distributed.full_state_dict(model, trainable_only=False)   # whole tensors on rank 0
    if distributed.is_main():
        twin, _ = load_policy(cfg.model)            # an unsharded twin to pour them into
        twin.load_state_dict(weights)
        save_policy(twin, state.tokenizer, directory)
