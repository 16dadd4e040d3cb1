"""The loop: prompts -> rollout -> rewards -> advantages -> buffer -> update -> log.

Each box is a function of its inputs; the only state carried from step to step is
in `TrainState` (model, optimizer, baselines, sampler, generators).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from tokrl import losses
from tokrl.advantages import MovingAverage, explained_variance, whiten
from tokrl.algorithms import CLIPPED_LOSSES, ESTIMATORS, POLICY_LOSSES, uses_critic
from tokrl.buffer import ExperienceBuffer
from tokrl.checkpoint import fault_point
from tokrl.config import Config, SamplingConfig
from tokrl.errors import TrainingError
from tokrl.evaluate import evaluate
from tokrl.kl import AdaptiveKL, FixedKL
from tokrl.metrics import MetricsWriter, check_sinks
from tokrl.models import Reference, ValueHead, autocast, load_policy, save_policy
from tokrl.rollout import process_logits, rollout
from tokrl.tasks import PromptSampler, Task, build_task
from tokrl.types import Rollout


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
    rollout_generator: torch.Generator
    shuffle_generator: torch.Generator
    kl_coef: FixedKL | AdaptiveKL
    reference: Reference | None = None
    step: int = 0
    bad_steps: int = 0
    """consecutive updates skipped for a non-finite loss or gradient"""

    def parameters(self) -> list[Tensor]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params


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
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    t = cfg.train
    return TrainState(
        model=model, tokenizer=tokenizer, task=task, value_head=head, optimizer=optimizer,
        sampler=PromptSampler(task.examples("train"), t.seed),
        buffer=ExperienceBuffer(capacity=t.prompts_per_step * t.group_size),
        baseline=MovingAverage(cfg.algo.ema_decay), reward_avg=MovingAverage(t.reward_ema),
        rollout_generator=torch.Generator().manual_seed(t.seed + 1),
        shuffle_generator=torch.Generator().manual_seed(t.seed + 2),
        kl_coef=kl_coef, reference=reference,
    )


# ------------------------------------------------------------------ forward pass

def forward(model, head: ValueHead | None, batch: Rollout, dtype: str) -> tuple[Tensor, Tensor | None]:
    """Teacher-forced pass over prompt + completion.

    returns logits (N, T, V) at the positions that choose each completion token,
    and values (N, T) float32 from the value head (None without one).
    """
    T = batch.tokens.shape[1]
    attention = batch.attention_mask()                                   # (N, P+T)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with autocast(dtype):
        # position P-1+t chooses token t: keep the last T+1 positions, drop the final one
        out = model(input_ids=batch.input_ids(), attention_mask=attention, position_ids=positions,
                    logits_to_keep=T + 1, output_hidden_states=head is not None)
    logits = out.logits[:, :-1]                                          # (N, T, V)
    values = None
    if head is not None:
        values = head(out.hidden_states[-1][:, -T - 1:-1])               # (N, T)
    return logits, values


@torch.no_grad()
def add_values(state: TrainState, batch: Rollout, dtype: str) -> None:
    """Fill batch.values with V(s_t) from the value head at rollout time."""
    if state.value_head is None:
        return
    _, values = forward(state.model, state.value_head, batch, dtype)
    batch.values = values * batch.mask


@torch.no_grad()
def add_reference(state: TrainState, batch: Rollout, cfg: Config, sampling: SamplingConfig) -> float:
    """Fill batch.ref_logprobs; with kl.in_reward, charge beta * KL on each token's reward.

    returns the batch's KL in nats per sequence (sum of k1 over tokens, mean over rows).
    """
    with state.reference.disabled_adapters():
        logits, _ = forward(state.reference.model, None, batch, cfg.model.dtype)
    ref = losses.token_logprobs(process_logits(logits, sampling), batch.tokens) * batch.mask
    batch.ref_logprobs = ref
    if cfg.kl.in_reward:
        penalty = losses.kl(batch.logprobs, ref, cfg.kl.kind) * batch.mask            # (N, T)
        batch.rewards = batch.rewards - state.kl_coef.value * penalty
    return float(((batch.logprobs - ref) * batch.mask).sum(dim=1).mean())


@torch.no_grad()
def add_greedy_scores(state: TrainState, batch: Rollout, examples: list, cfg: Config, sampling: SamplingConfig) -> None:
    """ReMax's baseline: the score of one greedy completion per prompt, repeated G times."""
    greedy = SamplingConfig(sampling.max_new_tokens, temperature=0.0)
    base = rollout(state.model, state.tokenizer, state.task, examples, 1, greedy, None,
                   cfg.model.chat_template, autocast(cfg.model.dtype))
    batch.greedy_scores = base.scores.repeat_interleave(batch.group_size)


# ------------------------------------------------------------------------ update

def microbatch_loss(state: TrainState, mb: Rollout, cfg: Config, sampling: SamplingConfig,
                    num_tokens: Tensor, num_seqs: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The minibatch loss restricted to microbatch ``mb`` (whole-minibatch denominators),
    so that the sum over microbatches is the minibatch loss."""
    a = cfg.algo
    logits, values = forward(state.model, state.value_head, mb, cfg.model.dtype)
    logp = losses.token_logprobs(process_logits(logits, sampling), mb.tokens)        # (n, T)
    policy = POLICY_LOSSES[a.policy_loss](logp, mb.logprobs, mb.advantages, mb.mask, a)
    agg = dict(mask=mb.mask, mode=a.aggregation, num_tokens=num_tokens, num_seqs=num_seqs)
    loss = losses.aggregate(policy, **agg)
    stats = {"loss/policy": float(loss.detach())}
    if a.entropy_coef:
        tempered = logits / sampling.temperature if sampling.temperature > 0 else logits
        bonus = losses.aggregate(losses.entropy(tempered), **agg)
        loss = loss - a.entropy_coef * bonus
        stats["loss/entropy"] = float(bonus.detach())
    if mb.ref_logprobs is not None and not cfg.kl.in_reward:
        kl_term = losses.aggregate(losses.kl(logp, mb.ref_logprobs, cfg.kl.kind), **agg)
        loss = loss + state.kl_coef.value * kl_term
        stats["loss/kl"] = float(kl_term.detach())
    if values is not None:
        vloss = losses.aggregate(losses.value_loss(values, mb.values, mb.returns, a.value_clip), **agg)
        loss = loss + a.value_coef * vloss
        stats["loss/value"] = float(vloss.detach())
    with torch.no_grad():
        stats["policy/approx_kl"] = float(losses.aggregate(losses.kl(logp, mb.logprobs, "k3"), **agg))
        if a.policy_loss in CLIPPED_LOSSES:
            stats["policy/clip_frac"] = float(losses.ppo_clip_fraction(
                logp, mb.logprobs, mb.advantages, a.clip_low, a.clip_high, mb.mask) * mb.mask.sum() / num_tokens)
    return loss, stats


def update(state: TrainState, cfg: Config, sampling: SamplingConfig) -> dict[str, float]:
    """Epochs of shuffled minibatches over the buffer, accumulating microbatch gradients."""
    t, totals, n_updates = cfg.train, {}, 0
    params = state.parameters()
    for _ in range(cfg.algo.epochs):
        for mb in state.buffer.minibatches(t.minibatch_size or len(state.buffer), state.shuffle_generator):
            num_tokens = mb.mask.sum()
            num_seqs = (mb.mask.sum(dim=1) > 0).sum()
            state.optimizer.zero_grad(set_to_none=True)
            size = t.microbatch_size or mb.num_sequences
            step_stats: dict[str, float] = {}
            finite = True
            for start in range(0, mb.num_sequences, size):
                micro = mb.select(torch.arange(start, min(start + size, mb.num_sequences)))
                loss, stats = microbatch_loss(state, micro, cfg, sampling, num_tokens, num_seqs)
                finite &= bool(torch.isfinite(loss))
                loss.backward()
                for k, v in stats.items():
                    step_stats[k] = step_stats.get(k, 0.0) + v
            fault_point("update", state.step)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
            if finite and bool(torch.isfinite(norm)):
                state.optimizer.step()
                state.bad_steps = 0
            else:
                # a NaN or inf anywhere would poison the weights and Adam's moments: skip
                state.optimizer.zero_grad(set_to_none=True)
                state.bad_steps += 1
                step_stats["optim/skipped"] = 1.0
                if state.bad_steps >= cfg.train.max_bad_steps:
                    raise TrainingError(f"{state.bad_steps} updates in a row had a non-finite loss or gradient; "
                                        "lower optim.lr or check the rewards (train.max_bad_steps stops here)")
            step_stats["optim/grad_norm"] = float(norm)
            for k, v in step_stats.items():
                totals[k] = totals.get(k, 0.0) + v
            n_updates += 1
    return {k: v / max(n_updates, 1) for k, v in totals.items()}


# -------------------------------------------------------------------------- step

def collect(state: TrainState, cfg: Config) -> tuple[Rollout, dict[str, float]]:
    """Prompts -> rollout -> rewards (KL included) -> advantages -> buffer.

    returns the scored batch and the collection's metrics.
    """
    sampling, t0 = cfg.sampling, time.perf_counter()
    examples = state.sampler.sample(cfg.train.prompts_per_step)
    with torch.no_grad():
        batch = rollout(state.model, state.tokenizer, state.task, examples, cfg.train.group_size, sampling,
                        state.rollout_generator, cfg.model.chat_template, autocast(cfg.model.dtype),
                        skip_bad_rewards=cfg.train.on_bad_reward == "skip")
    fault_point("rollout", state.step)
    t_rollout = time.perf_counter() - t0
    reward_metrics = state.task.last_reward_components()   # each reward under its own name
    task_scores = batch.scores                             # before any KL penalty
    add_values(state, batch, cfg.model.dtype)
    kl_seq = add_reference(state, batch, cfg, sampling) if state.reference is not None else 0.0
    estimator = ESTIMATORS[cfg.algo.estimator]
    if estimator.greedy:
        add_greedy_scores(state, batch, examples, cfg, sampling)
    advantages, returns = estimator.fn(batch, cfg.algo, state.baseline)
    if cfg.algo.whiten:
        advantages = whiten(advantages, batch.mask) * batch.mask
    batch.advantages, batch.returns = advantages, returns
    state.buffer.clear()                                   # on-policy: this step's data only
    state.buffer.add(batch, state.step)

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
    Returns {"steps", "eval_before", "eval_after", "stopped_early", "state"}.
    """
    import yaml

    from tokrl.checkpoint import complete_checkpoints, load_checkpoint, save_checkpoint
    from tokrl.config import to_dict

    check_sinks(cfg.log)             # a missing wandb fails before anything is written
    state = build_state(cfg)
    eval_sampling = SamplingConfig(cfg.sampling.max_new_tokens, temperature=0.0)
    test = state.task.examples("test")[: cfg.train.eval_samples]
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)

    def run_eval() -> tuple[dict[str, float], list[dict]]:
        return evaluate(state.model, state.tokenizer, state.task, test, eval_sampling,
                        cfg.model.chat_template, autocast(cfg.model.dtype))

    if resume:
        checkpoints = complete_checkpoints(run_dir)
        if not checkpoints:
            raise ValueError(f"{run_dir} has no complete checkpoint to resume from; start it again without --resume")
        load_checkpoint(checkpoints[-1], state)
        # drop what the crashed process logged after its last checkpoint
        before = truncate_logs(run_dir, state.step)
        writer = MetricsWriter(run_dir, cfg.log, to_dict(cfg), resume_step=state.step)
    else:
        before, before_samples = run_eval()
        # only now has every part loaded and run once: bad input has written nothing
        if on_start is not None:
            on_start()
        writer = MetricsWriter(run_dir, cfg.log, to_dict(cfg))
        writer.write_eval(0, before, before_samples)
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
    if not complete_checkpoints(run_dir) or complete_checkpoints(run_dir)[-1].name != f"step-{state.step:08d}":
        save_checkpoint(run_dir, state, config_yaml, t.keep_checkpoints)
    after, after_samples = run_eval()
    writer.write_eval(state.step, after, after_samples)
    if t.save_model:
        save_policy(state.model, state.tokenizer, run_dir / "model")
    writer.close()
    if cfg.log.report:
        from tokrl.report import write_report

        write_report(run_dir)
    return {"steps": state.step, "eval_before": before, "eval_after": after, "stopped_early": stopped_early,
            "state": state}


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
