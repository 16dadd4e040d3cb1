"""Collect one step's experience: prompts -> rollout -> extra passes -> rewards' KL -> advantages.

Under torchrun each process rolls out its B/W prompts; the scored rows are then
gathered, so the KL charged in the rewards, the advantages, the baselines, the
whitening and the metrics are computed over the whole batch, exactly as one
process computes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from tokrl import kl, losses
from tokrl.advantages import MovingAverage, explained_variance, whiten
from tokrl.algorithms import Recipe
from tokrl.config import Config, SamplingConfig
from tokrl.generation.batch import rollout
from tokrl.generation.engine import Engine
from tokrl.generation.prompts import longest_prompt
from tokrl.generation.sampling import env_seeds, process_logits, sample_seeds
from tokrl.models.forward import forward
from tokrl.models.reference import Reference
from tokrl.tasks import EnvironmentTask
from tokrl.tasks.base import Example, Task
from tokrl.training import distributed
from tokrl.training.checkpoint import fault_point
from tokrl.training.dynamic import SIGNAL_ATOL, Drawn, dynamic_batch, informative_groups
from tokrl.types import Rollout


@dataclass
class Collected:
    """One step's scored batch and what the loop needs from it."""

    batch: Rollout
    """every process's rows, with advantages (and returns for a critic)"""
    kl_per_seq: float
    """KL to the reference in nats per sequence (0 without a reference): the adaptive controller's input"""
    reward_mean: float
    """mean task score before any KL penalty: the moving average's input"""
    metrics: dict[str, float]
    """the collection's numbers, for the log only"""


# ------------------------------------------------------------------ extra passes

@torch.no_grad()
def values_of(model, head, batch: Rollout, dtype: str) -> Tensor:
    """(N, T) V(s_t) from the value head at rollout time, 0 on padding."""
    _, values = forward(model, head, batch, dtype)
    return values.cpu() * batch.mask


@torch.no_grad()
def sampled_logprobs(model, batch: Rollout, sampling: SamplingConfig, dtype: str) -> tuple[Tensor, Tensor]:
    """(N, T) log-probs of the sampled tokens under ``model``'s sampled distribution
    (``process_logits``) and (N, T) its full-vocabulary tempered entropy, 0 on padding."""
    logits, _ = forward(model, None, batch, dtype)
    logp = losses.token_logprobs(process_logits(logits, sampling), batch.tokens.to(logits.device))
    tempered = logits / sampling.temperature if sampling.temperature > 0 else logits
    return logp.cpu() * batch.mask, losses.entropy(tempered).cpu() * batch.mask


@torch.no_grad()
def reference_logprobs(reference: Reference, batch: Rollout, sampling: SamplingConfig, dtype: str) -> Tensor:
    """(N, T) log-probs of the sampled tokens under the frozen reference, 0 on padding."""
    with reference.disabled_adapters():
        logits, _ = forward(reference.model, None, batch, dtype)
    return losses.token_logprobs(process_logits(logits, sampling), batch.tokens.to(logits.device)).cpu() * batch.mask


def correct_for_engine(model, batch: Rollout, cfg: Config) -> Rollout:
    """For an engine whose distribution is not the trainer's (vLLM): recompute the behaviour
    log-probs the update trains against with one no-grad pass of the policy, keep the
    engine's as ``engine_logprobs``, and set the truncated importance weights
    min(pi_train / pi_engine, C) (``rollout.is_cap``)."""
    train_logp, entropy = sampled_logprobs(model, batch, cfg.sampling, cfg.model.dtype)
    batch.engine_logprobs, batch.logprobs, batch.entropy = batch.logprobs, train_logp, entropy
    batch.is_weights = losses.truncated_is_weights(train_logp, batch.engine_logprobs, batch.mask, cfg.rollout.is_cap)
    return batch


def mask_outlier_sequences(batch: Rollout, cap: float) -> Rollout:
    """Leave out of the loss (mask 0) each sequence whose geometric-mean ratio
    exp(mean_t log(pi_train / pi_engine)) lies outside [1/C, C]; its reward still counted
    in the advantages and the metrics, which are computed before."""
    ratio = losses.sequence_ratio(batch.logprobs, batch.engine_logprobs, batch.mask)           # (N,)
    batch.mask = batch.mask * ((ratio >= 1.0 / cap) & (ratio <= cap)).float()[:, None]
    return batch


@torch.no_grad()
def greedy_scores(engine: Engine, tokenizer, task: Task, examples: list[Example], cfg: Config, group_size: int,
                  prompt_width: int | None) -> Tensor:
    """(N,) ReMax's baseline: the score of one greedy completion per prompt, repeated G times."""
    greedy = SamplingConfig(cfg.sampling.max_new_tokens, temperature=0.0)
    base = rollout(engine, tokenizer, task, examples, 1, greedy, chat_template=cfg.model.chat_template,
                   prompt_width=prompt_width)
    return base.scores.repeat_interleave(group_size)


# --------------------------------------------------------------------- stages

def sample_batch(engine: Engine, tokenizer, task: Task, examples: list[Example], step: int, cfg: Config,
                 offset: int = 0) -> Rollout:
    """This process's share of the step's B prompts, G samples each, scored.

    examples: the step's B prompts, alike on every process; offset: the number in the step
    of the first of them (dynamic sampling's refill rounds continue the numbering). Rows
    are numbered within the whole step (``prompt_index``) and their noise is keyed to
    (seed, step, prompt, sample).
    """
    t = cfg.train
    first, mine = distributed.shard(examples)                # this process's B/W of them, prompt-major
    first += offset
    width = longest_prompt(tokenizer, examples, cfg.model.chat_template)   # every process pads alike
    with torch.no_grad():
        batch = rollout(engine, tokenizer, task, mine, t.group_size, cfg.sampling,
                        chat_template=cfg.model.chat_template, seeds=sample_seeds(t.seed, step, first, len(mine), t.group_size), prompt_width=width,
                        skip_bad_rewards=t.on_bad_reward == "skip", env_seeds=env_seeds(t.seed, step, first, len(mine)))
    batch.prompt_index += first
    return batch


def estimate(batch: Rollout, recipe: Recipe, baseline: MovingAverage, beta: float) -> tuple[Rollout, float]:
    """Charge KL in the rewards (when the recipe does), then the advantages (and returns).

    batch: the whole step's batch, with ref_logprobs when there is a reference.
    returns the batch with rewards, advantages and returns set, and the KL in nats per sequence.
    """
    kl_seq = 0.0
    if batch.ref_logprobs is not None:
        kl_seq = kl.per_sequence(batch.logprobs, batch.ref_logprobs, batch.mask)
        if recipe.kl_in_reward:
            batch.rewards = kl.penalize_rewards(batch.rewards, batch.logprobs, batch.ref_logprobs, batch.mask,
                                                recipe.kl.kind, beta)
    advantages, returns = recipe.estimator.fn(batch, recipe.algo, baseline)
    if recipe.algo.whiten:
        advantages = whiten(advantages, batch.mask) * batch.mask
    batch.advantages, batch.returns = advantages, returns
    return batch, kl_seq


def collect(engine: Engine, model, head, reference: Reference | None, tokenizer, task: Task,
            examples: list[Example], *, step: int, recipe: Recipe, cfg: Config, baseline: MovingAverage,
            beta: float, refill: Callable[[], list[Example]] | None = None) -> Collected:
    """Prompts -> rollout (-> dynamic sampling's refills and choice) -> (engine correction,)
    values, reference, greedy scores -> gather -> KL -> advantages.

    engine: samples the completions; model, head: the policy and its value head (None
    without a critic); examples: the step's B prompts; baseline: the moving average that
    the ema baseline reads and updates; beta: the KL coefficient; refill: draws B more
    prompts (train.dynamic_sampling's refill rounds, ``training.dynamic``).
    """
    t0 = time.perf_counter()
    batch = sample_batch(engine, tokenizer, task, examples, step, cfg)
    # each reward's mean under its own name (of the first round): the mean of the processes' equal shares
    components = distributed.mean_over_ranks(task.last_reward_components())
    drawn = None
    if cfg.train.dynamic_sampling:
        if refill is None:
            raise ValueError("train.dynamic_sampling draws refill rounds: pass collect() a refill function")

        def roll(more: list[Example], offset: int) -> Rollout:
            return sample_batch(engine, tokenizer, task, more, step, cfg, offset)
        batch, drawn = dynamic_batch(batch, roll, refill, len(examples), cfg.train.max_resample)
        examples = drawn.examples
    fault_point("rollout", step)
    t_rollout = time.perf_counter() - t0
    batch = extra_passes(engine, model, head, reference, tokenizer, task, examples, batch, recipe, cfg)
    # from here on every process holds the whole batch (N rows) and computes what one process would
    batch = distributed.gather_rollout(batch)
    task_scores = batch.scores                             # before any KL penalty
    drawn_scores = task_scores if drawn is None else drawn.scores
    batch, kl_seq = estimate(batch, recipe, baseline, beta)
    # a multi-turn episode's cap is its token budget (observations included), not one turn's
    cap = task.max_episode_tokens if isinstance(task, EnvironmentTask) else cfg.sampling.max_new_tokens
    metrics = {**step_metrics(batch, drawn_scores, cap), **components,
               "kl/ref_per_seq": kl_seq, "kl/coef": beta, "time/rollout_s": t_rollout}
    if drawn is not None:
        batch.mask = batch.mask * drawn.trained[:, None]     # fillers leave the loss
        metrics["dynamic_sampling/rounds"] = float(drawn.rounds)
    metrics.update(signal_metrics(batch, task_scores, drawn_scores))
    metrics["time/collect_s"] = time.perf_counter() - t0
    if batch.engine_logprobs is not None:
        metrics.update(mismatch_metrics(batch, cfg.rollout.is_cap))
        if cfg.rollout.is_mask_sequences:
            batch = mask_outlier_sequences(batch, cfg.rollout.is_cap)
    return Collected(batch=batch, kl_per_seq=kl_seq, reward_mean=float(drawn_scores.mean()), metrics=metrics)


def extra_passes(engine: Engine, model, head, reference: Reference | None, tokenizer, task: Task,
                 examples: list[Example], batch: Rollout, recipe: Recipe, cfg: Config) -> Rollout:
    """This process's rows with what the recipe needs beyond the rollout: the trainer's own
    log-probs (an inexact engine), V(s_t) (a critic), the reference's log-probs (beta > 0)
    and the greedy scores (ReMax). examples: the B prompts of the step's batch."""
    dtype = cfg.model.dtype
    if not engine.exact:
        batch = correct_for_engine(model, batch, cfg)
    if recipe.critic:
        batch.values = values_of(model, head, batch, dtype)
    if reference is not None:
        batch.ref_logprobs = reference_logprobs(reference, batch, cfg.sampling, dtype)
    if recipe.estimator.greedy:
        _, mine = distributed.shard(examples)
        width = longest_prompt(tokenizer, examples, cfg.model.chat_template)
        batch.greedy_scores = greedy_scores(engine, tokenizer, task, mine, cfg, batch.group_size, width)
    return batch


def step_metrics(batch: Rollout, task_scores: Tensor, cap: int) -> dict[str, float]:
    """What the log shows of a scored batch: rewards, entropy, lengths, advantages, critic.

    task_scores: the scores of every sample drawn (those of the batch, unless dynamic
    sampling drew more); cap: sampling.max_new_tokens (a multi-turn task's max_episode_tokens).
    """
    mask = batch.mask
    n_tokens = max(float(mask.sum()), 1.0)
    metrics = {
        "reward/mean": float(task_scores.mean()),
        "reward/std": float(task_scores.std()) if batch.num_sequences > 1 else 0.0,
        "policy/entropy": float((batch.entropy * mask).sum() / n_tokens),
        "completion/length": float(batch.lengths.float().mean()),
        "completion/at_cap_frac": float((batch.lengths >= cap).float().mean()),
        "completion/tokens": n_tokens,
        "reward/dropped": float(((mask.sum(dim=1) == 0) & (batch.lengths > 0)).sum()),
        "advantage/mean": float((batch.advantages * mask).sum() / n_tokens),
    }
    if batch.values is not None and batch.returns is not None:
        metrics["critic/explained_variance"] = float(explained_variance(batch.values, batch.returns, mask))
    return metrics


def signal_metrics(batch: Rollout, task_scores: Tensor, drawn_scores: Tensor) -> dict[str, float]:
    """How much of the step can teach anything.

    - groups/zero_signal_frac: the share of the groups drawn whose G task scores are all
      equal, so their group-relative advantages vanish (G >= 2 only);
    - groups/informative: the groups of the update's batch whose scores differ (G >= 2 only);
    - advantage/nonzero_frac: the share of the update's tokens with |A| >= 1e-6;
    - advantage/zero_rows_frac: the share of the update's sequences with |A| < 1e-6 on every
      token (for estimators without groups, the counterpart of zero_signal_frac).

    batch: the update's batch, with advantages and its final mask; task_scores: (N,) its
    scores before any KL penalty; drawn_scores: (M*G,) those of every sample drawn.
    """
    mask = batch.mask
    small = (batch.advantages.abs() < SIGNAL_ATOL).float()                        # (N, T)
    rows = mask.sum(dim=1) > 0                                                    # (N,) rows in the loss
    zero_rows = ((small * mask).sum(dim=1) == mask.sum(dim=1)) & rows
    metrics = {"advantage/nonzero_frac": float(((1.0 - small) * mask).sum() / mask.sum().clamp(min=1.0)),
               "advantage/zero_rows_frac": float(zero_rows.sum() / rows.sum().clamp(min=1))}
    G = batch.group_size
    if G >= 2:
        metrics["groups/zero_signal_frac"] = float(1.0 - informative_groups(drawn_scores, G).float().mean())
        metrics["groups/informative"] = float(informative_groups(task_scores, G).sum())
    return metrics


def mismatch_metrics(batch: Rollout, cap: float) -> dict[str, float]:
    """How far the engine's distribution is from the trainer's on this batch's sampled tokens:
    k3 KL(pi_engine || pi_train) per token, the largest ratio pi_train / pi_engine, the share of
    tokens whose ratio the cap C truncates, and how many sequences' geometric-mean ratio lies
    outside [1/C, C] (those leave the loss with rollout.is_mask_sequences)."""
    sampled = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()   # (N, T)
    n_tokens = max(float(sampled.sum()), 1.0)
    ratio = torch.exp((batch.logprobs - batch.engine_logprobs) * sampled)                       # (N, T)
    seq = losses.sequence_ratio(batch.logprobs, batch.engine_logprobs, sampled)                 # (N,)
    return {
        "rollout/mismatch_kl": float(losses.mismatch_kl(batch.logprobs, batch.engine_logprobs, sampled).sum()
                                     / n_tokens),
        "rollout/is_ratio_max": float((ratio * sampled).max()) if batch.num_sequences else 0.0,
        "rollout/is_truncated_frac": float(((ratio > cap).float() * sampled).sum() / n_tokens),
        "rollout/seqs_outside_cap": float(((seq < 1.0 / cap) | (seq > cap)).sum()),
    }
