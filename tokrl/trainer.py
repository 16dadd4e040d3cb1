"""The loop: prompts -> rollout -> rewards -> advantages -> buffer -> update -> log.

Each box is a function of its inputs; the only state carried from step to step is
in `TrainState` (model, optimizer, baselines, sampler, generators). The update
itself lives in update.py.

Under torchrun (see distributed.py) every process runs this same loop on its share
of the prompts; after the rollout the scored rows are gathered, so everything from
the rewards' KL penalty to the metrics is computed over the whole batch, exactly as
one process computes it. Only rank 0 writes to the run directory.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from tokrl import distributed, losses
from tokrl.advantages import MovingAverage, explained_variance, whiten
from tokrl.algorithms import ESTIMATORS, uses_critic
from tokrl.buffer import ExperienceBuffer
from tokrl.checkpoint import fault_point
from tokrl.config import Config, SamplingConfig
from tokrl.evaluate import evaluate
from tokrl.kl import AdaptiveKL, FixedKL
from tokrl.metrics import MetricsWriter, check_sinks
from tokrl.models import Reference, ValueHead, autocast, load_policy, save_policy
from tokrl.rollout import longest_prompt, process_logits, rollout, sample_seeds
from tokrl.tasks import PromptSampler, Task, build_task
from tokrl.types import Rollout
from tokrl.update import forward, update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Everything that changes during training."""

    model: torch.nn.Module
    tokenizer: Any
    task: Task
    value_head: ValueHead | None
    optimizer: torch.optim.Optimizer
    sampler: PromptSampler
    buffer: ExperienceBuffer
    baseline: MovingAverage
    reward_avg: MovingAverage
    shuffle_generator: torch.Generator
    kl_coef: FixedKL | AdaptiveKL
    reference: Reference | None = None
    step: int = 0
    bad_steps: int = 0
    """consecutive updates skipped for a non-finite loss or gradient"""
    wrapped_model: torch.nn.Module | None = None
    """DDP(model) in a data-parallel run: what the update calls (None: model itself;
    under FSDP the model is sharded in place)"""
    wrapped_head: torch.nn.Module | None = None
    """DDP(value_head) in a data-parallel run (None: value_head itself)"""

    def parameters(self) -> list[Tensor]:
        """The trainable parameters: the optimizer's (under FSDP, the shards)."""
        # trap: not model.parameters(): after a forward pass FSDP leaves the root module's
        # unsharded weights in place of the shards, and those never get a gradient
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def trained(self) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(policy, value head) as the update calls them: their DDP wrappers when there are some."""
        return (self.wrapped_model if self.wrapped_model is not None else self.model,
                self.wrapped_head if self.wrapped_head is not None else self.value_head)


def build_state(cfg: Config) -> TrainState:
    seed_everything(cfg.train.seed)
    model, tokenizer = load_policy(cfg.model)
    model.eval()   # dropout off for good: rollout and update must see the same policy
    task = build_task(cfg.task.name, tokenizer, **cfg.task.options)
    head = ValueHead(model.config.hidden_size) if uses_critic(cfg.algo) else None
    k = cfg.kl
    kl_coef = FixedKL(k.coef) if k.target is None else AdaptiveKL(k.coef, k.target, k.horizon)
    # the reference is the frozen initial policy; with beta 0 it is never built or run
    reference = Reference(model) if k.coef > 0 else None
    distributed.check(cfg, distributed.world_size())
    # before the optimizer: FSDP replaces the parameters with their shards
    wrapped_model, wrapped_head = distributed.parallelize(
        model, head, reference.model if reference is not None else None, cfg.dist.strategy)
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    o = cfg.optim
    # fused: one kernel over all parameters, ~5x faster than the per-tensor loop on CPU
    # (benchmarks/hotspots.py). It cannot mix FSDP's sharded parameters with plain ones.
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                  fused=not distributed.is_sharded(model))
    t = cfg.train
    return TrainState(
        model=model, tokenizer=tokenizer, task=task, value_head=head, optimizer=optimizer,
        sampler=PromptSampler(task.examples("train"), t.seed),
        buffer=ExperienceBuffer(capacity=t.prompts_per_step * t.group_size),
        baseline=MovingAverage(cfg.algo.ema_decay), reward_avg=MovingAverage(t.reward_ema),
        shuffle_generator=torch.Generator().manual_seed(t.seed + 2),
        kl_coef=kl_coef, reference=reference, wrapped_model=wrapped_model, wrapped_head=wrapped_head,
    )


# ------------------------------------------------------------------ extra passes

@torch.no_grad()
def add_values(state: TrainState, batch: Rollout, dtype: str) -> None:
    """Fill batch.values with V(s_t) from the value head at rollout time."""
    if state.value_head is None:
        return
    _, values = forward(state.model, state.value_head, batch, dtype)
    batch.values = values * batch.mask


@torch.no_grad()
def add_reference(state: TrainState, batch: Rollout, cfg: Config, sampling: SamplingConfig) -> None:
    """Fill batch.ref_logprobs, the log-probs of the frozen reference."""
    with state.reference.disabled_adapters():
        logits, _ = forward(state.reference.model, None, batch, cfg.model.dtype)
    batch.ref_logprobs = losses.token_logprobs(process_logits(logits, sampling), batch.tokens) * batch.mask


def charge_kl(state: TrainState, batch: Rollout, cfg: Config) -> float:
    """With kl.in_reward, charge beta * KL on each token's reward.

    returns the batch's KL in nats per sequence (sum of k1 over tokens, mean over rows).
    """
    if cfg.kl.in_reward:
        penalty = losses.kl(batch.logprobs, batch.ref_logprobs, cfg.kl.kind) * batch.mask  # (N, T)
        batch.rewards = batch.rewards - state.kl_coef.value * penalty
    return float(((batch.logprobs - batch.ref_logprobs) * batch.mask).sum(dim=1).mean())


@torch.no_grad()
def add_greedy_scores(state: TrainState, batch: Rollout, examples: list, cfg: Config, sampling: SamplingConfig,
                      prompt_width: int | None = None) -> None:
    """ReMax's baseline: the score of one greedy completion per prompt, repeated G times."""
    greedy = SamplingConfig(sampling.max_new_tokens, temperature=0.0)
    base = rollout(state.model, state.tokenizer, state.task, examples, 1, greedy, None,
                   cfg.model.chat_template, autocast(cfg.model.dtype), prompt_width=prompt_width)
    batch.greedy_scores = base.scores.repeat_interleave(batch.group_size)


# -------------------------------------------------------------------------- step

def collect(state: TrainState, cfg: Config) -> tuple[Rollout, dict[str, float]]:
    """Prompts -> rollout -> rewards (KL included) -> advantages -> buffer.

    returns the whole step's scored batch (every process's rows) and the collection's
    metrics; the buffer holds this process's rows.
    """
    sampling, t, t0 = cfg.sampling, cfg.train, time.perf_counter()
    examples = state.sampler.sample(t.prompts_per_step)      # the step's B prompts, alike on every process
    first, mine = distributed.shard(examples)                # this process's B/W of them, prompt-major
    width = longest_prompt(state.tokenizer, examples, cfg.model.chat_template)   # every process pads alike
    seeds = sample_seeds(t.seed, state.step, first, len(mine), t.group_size)
    with torch.no_grad():
        batch = rollout(state.model, state.tokenizer, state.task, mine, t.group_size, sampling, None,
                        cfg.model.chat_template, autocast(cfg.model.dtype),
                        skip_bad_rewards=t.on_bad_reward == "skip", seeds=seeds, prompt_width=width)
    batch.prompt_index += first
    fault_point("rollout", state.step)
    t_rollout = time.perf_counter() - t0
    # each reward's mean under its own name: the mean of the processes' equal shares
    reward_metrics = distributed.mean_over_ranks(state.task.last_reward_components())
    add_values(state, batch, cfg.model.dtype)
    if state.reference is not None:
        add_reference(state, batch, cfg, sampling)
    estimator = ESTIMATORS[cfg.algo.estimator]
    if estimator.greedy:
        add_greedy_scores(state, batch, mine, cfg, sampling, width)
    # from here on every process holds the whole batch (N rows) and computes what one process would
    batch = distributed.gather_rollout(batch)
    task_scores = batch.scores                             # before any KL penalty
    kl_seq = charge_kl(state, batch, cfg) if batch.ref_logprobs is not None else 0.0
    advantages, returns = estimator.fn(batch, cfg.algo, state.baseline)
    if cfg.algo.whiten:
        advantages = whiten(advantages, batch.mask) * batch.mask
    batch.advantages, batch.returns = advantages, returns
    state.buffer.clear()                                   # on-policy: this step's data only
    state.buffer.add(distributed.own_rows(batch), state.step)

    mask = batch.mask
    n_tokens = max(float(mask.sum()), 1.0)
    metrics = {
        "reward/mean": float(task_scores.mean()),
        "reward/std": float(task_scores.std()) if batch.num_sequences > 1 else 0.0,
        "policy/entropy": float((batch.entropy * mask).sum() / n_tokens),
        "completion/length": float(batch.lengths.float().mean()),
        "completion/tokens": n_tokens,
        "reward/dropped": float(((batch.mask.sum(dim=1) == 0) & (batch.lengths > 0)).sum()),
        **reward_metrics,
        "advantage/mean": float((advantages * mask).sum() / n_tokens),
        "kl/ref_per_seq": kl_seq,
        "kl/coef": state.kl_coef.value,
        "time/rollout_s": t_rollout,
        "time/collect_s": time.perf_counter() - t0,
    }
    if batch.values is not None and returns is not None:
        metrics["critic/explained_variance"] = float(explained_variance(batch.values, returns, mask))
    return batch, metrics


def train_step(state: TrainState, cfg: Config) -> tuple[dict[str, float], Rollout]:
    """One pass of the loop: collect, update, adapt beta; returns its metrics and the batch."""
    batch, metrics = collect(state, cfg)
    t0 = time.perf_counter()
    metrics.update(update(state, cfg, cfg.sampling))
    metrics["time/update_s"] = time.perf_counter() - t0
    state.step += 1
    state.kl_coef.update(metrics["kl/ref_per_seq"], batch.num_sequences)
    state.reward_avg.update(metrics["reward/mean"])
    metrics["reward/moving_avg"] = state.reward_avg.value
    step_time = metrics["time/collect_s"] + metrics["time/update_s"]
    metrics["time/tokens_per_s"] = metrics["completion/tokens"] / max(step_time, 1e-9)
    return {"step": state.step, **metrics}, batch


def train(cfg: Config, run_dir: Path, progress: Callable[[dict[str, float]], None] | None = None,
          on_start: Callable[[], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train until max_steps or until the moving-average reward reaches target_reward.

    Writes metrics.jsonl, samples.jsonl, eval.jsonl, eval_samples.jsonl, checkpoints/
    and (save_model) model/ into run_dir. ``on_start`` runs once the model and task have
    loaded and the first evaluation has run, before anything is written. With
    ``resume`` the run continues from the newest complete checkpoint in run_dir, and
    ends with the weights an uninterrupted run would have.
    Under torchrun every process calls this; rank 0 alone runs ``on_start`` and writes.
    Returns {"steps", "eval_before", "eval_after", "stopped_early", "state"}.
    """
    import yaml

    from tokrl.checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint
    from tokrl.config import to_dict

    check_sinks(cfg.log)             # a missing wandb fails before anything is written
    distributed.init(cfg)            # under torchrun: join the other processes
    main = distributed.is_main()
    state = build_state(cfg)
    eval_sampling = SamplingConfig(cfg.sampling.max_new_tokens, temperature=0.0)
    test = state.task.examples("test")[: cfg.train.eval_samples]
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)

    def run_eval() -> tuple[dict[str, float], list[dict]]:
        # every process evaluates the same examples: under FSDP each forward pass needs them all
        return evaluate(state.model, state.tokenizer, state.task, test, eval_sampling,
                        cfg.model.chat_template, autocast(cfg.model.dtype))

    if resume:
        load_checkpoint(distributed.run_on_main(lambda: newest_checkpoint(run_dir)), state)
        # drop what the crashed process logged after its last checkpoint
        before = distributed.run_on_main(lambda: truncate_logs(run_dir, state.step))
        writer = MetricsWriter(run_dir, cfg.log, to_dict(cfg), resume_step=state.step) if main else NoWriter()
    else:
        before, before_samples = run_eval()
        # only now has every part loaded and run once: bad input has written nothing
        if on_start is not None:
            distributed.run_on_main(on_start)
        writer = MetricsWriter(run_dir, cfg.log, to_dict(cfg)) if main else NoWriter()
        writer.write_eval(0, before, before_samples)
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
        writer.write_samples(state.step, batch, t.log_samples, state.tokenizer)
        if progress is not None:
            progress(metrics)
        stopped_early = t.target_reward is not None and state.reward_avg.value >= t.target_reward
        if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
            save_checkpoint(run_dir, state, config_yaml, t.keep_checkpoints)
            saved_step = state.step
    if saved_step != state.step:
        save_checkpoint(run_dir, state, config_yaml, t.keep_checkpoints)
    after, after_samples = run_eval()
    writer.write_eval(state.step, after, after_samples)
    if t.save_model:
        export_model(state, cfg, run_dir / "model")
    writer.close()
    if cfg.log.report and main:
        from tokrl.report import write_report

        write_report(run_dir)
    return {"steps": state.step, "eval_before": before, "eval_after": after, "stopped_early": stopped_early,
            "state": state}


class NoWriter:
    """The log writer of ranks other than 0: rank 0 alone writes the run directory."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def export_model(state: TrainState, cfg: Config, directory: Path) -> None:
    """The trained policy in Hugging Face format, written by rank 0 (every process calls this)."""
    if not distributed.is_sharded(state.model):
        if distributed.is_main():
            save_policy(state.model, state.tokenizer, directory)
        return
    weights = distributed.full_state_dict(state.model, trainable_only=False)   # whole tensors on rank 0
    if distributed.is_main():
        model, _ = load_policy(cfg.model)            # an unsharded twin to pour them into
        model.load_state_dict(weights)
        save_policy(model, state.tokenizer, directory)


def truncate_logs(run_dir: Path, step: int) -> dict[str, float]:
    """Drop log records of steps after ``step`` (and any final evaluation at ``step``);
    returns the evaluation before training (the step-0 line of eval.jsonl)."""
    import json

    before: dict[str, float] = {}
    for name in ("metrics", "samples", "eval", "eval_samples"):
        path = run_dir / f"{name}.jsonl"
        if not path.is_file():
            continue
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:          # a line cut short by the crash
                continue
            limit = step if name in ("metrics", "samples") else step - 1
            if record.get("step", 0) <= limit or record.get("step", 0) == 0:
                keep.append(line)
                if name == "eval" and record.get("step") == 0:
                    before = {k: v for k, v in record.items() if k != "step"}
        path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
    return before
