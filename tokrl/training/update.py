"""The update: epochs of minibatch AdamW steps over the buffer, microbatch by microbatch.

Under data parallelism each process holds its own rows of the step's batch. The
minibatches are the same rows whatever the number of processes
(``ExperienceBuffer.minibatches``), the loss's denominators are the whole
minibatch's (all-reduced counts), and gradients are summed over processes: one
process and W processes make the same update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from tokrl import kl, losses
from tokrl.algorithms import Recipe
from tokrl.config import Config
from tokrl.errors import TrainingError
from tokrl.generation.sampling import process_logits
from tokrl.models.checkpointing import recompute_in_backward
from tokrl.models.forward import forward
from tokrl.training import distributed
from tokrl.training.buffer import ExperienceBuffer
from tokrl.training.checkpoint import fault_point
from tokrl.types import Rollout


@dataclass
class Learner:
    """What the update changes: the policy, its value head and their optimizer."""

    model: torch.nn.Module
    value_head: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
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


def microbatch_loss(learner: Learner, mb: Rollout, recipe: Recipe, cfg: Config, beta: float,
                    num_tokens: Tensor, num_seqs: Tensor, stat_counts: list[Tensor] | None = None
                    ) -> tuple[Tensor, dict[str, float]]:
    """The minibatch loss restricted to microbatch ``mb`` (whole-minibatch denominators, over
    every process), so that the sum over microbatches and processes is the minibatch loss.

    beta: the KL coefficient (used when the recipe charges KL in the loss);
    stat_counts: (tokens, sequences) that the diagnostics approx_kl and clip_frac average
    over (None: num_tokens, num_seqs).
    """
    a, sampling = recipe.algo, cfg.sampling
    with recompute_in_backward(learner.model, cfg.train.activation_checkpointing):
        logits, values = forward(*learner.trained(), mb, cfg.model.dtype)
    mb = mb.to(logits.device)
    logp = losses.token_logprobs(process_logits(logits, sampling), mb.tokens)        # (n, T)
    policy = recipe.policy_loss(logp, mb.logprobs, mb.advantages, mb.mask, a)
    if mb.is_weights is not None:                 # correct for an engine that sampled from another distribution
        policy = policy * mb.is_weights
    agg = dict(mask=mb.mask, mode=a.aggregation, num_tokens=num_tokens, num_seqs=num_seqs)
    loss = losses.aggregate(policy, **agg)
    stats = {"loss/policy": float(loss.detach())}
    if a.entropy_coef:
        tempered = logits / sampling.temperature if sampling.temperature > 0 else logits
        bonus = losses.aggregate(losses.entropy(tempered), **agg)
        loss = loss - a.entropy_coef * bonus
        stats["loss/entropy"] = float(bonus.detach())
    if recipe.kl_in_loss:
        kl_term = kl.loss_term(logp, mb.ref_logprobs, recipe.kl.kind, **agg)
        loss = loss + beta * kl_term
        stats["loss/kl"] = float(kl_term.detach())
    if values is not None:
        vloss = losses.aggregate(losses.value_loss(values, mb.values, mb.returns, a.value_clip), **agg)
        loss = loss + a.value_coef * vloss
        stats["loss/value"] = float(vloss.detach())
    stat_tokens, stat_seqs = stat_counts if stat_counts is not None else (num_tokens, num_seqs)
    with torch.no_grad():
        stats["policy/approx_kl"] = float(losses.aggregate(losses.kl(logp, mb.logprobs, "k3"), mb.mask,
                                                           a.aggregation, stat_tokens, stat_seqs))
        if recipe.clipped:
            stats["policy/clip_frac"] = float(losses.ppo_clip_fraction(
                logp, mb.logprobs, mb.advantages, a.clip_low, a.clip_high, mb.mask) * mb.mask.sum()
                / stat_tokens.clamp(min=1))
    return loss, stats


def contributing_rows(mb: Rollout, recipe: Recipe) -> Tensor:
    """(n,) bool: the rows of ``mb`` whose share of the loss can have a non-zero gradient.

    Every term of the loss is weighted by the mask, so a row with no unmasked token adds
    nothing. When the loss is the policy term alone (no entropy bonus, no KL in the
    loss, no critic), a row whose advantage is exactly 0 on every unmasked token adds an
    exactly zero gradient too: every policy loss multiplies its token's term by A_t. Those
    rows are the groups whose samples all earned the same reward, most of a step once a
    group method has learned (``groups/zero_signal_frac``): the update skips their
    forward and backward passes.
    """
    live = mb.mask.sum(dim=1) > 0
    a = recipe.algo
    if a.entropy_coef or recipe.kl_in_loss or recipe.critic or mb.advantages is None:
        return live
    adv = mb.advantages if mb.advantages.dim() == 2 else mb.advantages[:, None]
    return live & ((adv != 0) & (mb.mask > 0)).any(dim=1)


def microbatch_rows(trained: Tensor, size: int) -> list[Tensor]:
    """The microbatches of this process's trained rows, as many as on the process that
    trains the most rows (DDP and FSDP need every process in each pass), at least one.

    trained: (n,) bool; size: rows per microbatch (0: all in one).
    returns K (m_k,) long row indices; an empty one stands for a pass that adds nothing.
    """
    rows = trained.nonzero().flatten()
    most = max(distributed.all_gather(len(rows)))       # the same on every process
    size = size or max(most, 1)
    return [rows[i * size:(i + 1) * size] for i in range(max(-(-most // size), 1))]


def accumulate(learner: Learner, mb: Rollout, recipe: Recipe, cfg: Config, beta: float
               ) -> tuple[bool, dict[str, float]]:
    """Forward and backward of minibatch ``mb`` (this process's share), microbatch by
    microbatch, over the rows that can change the gradient (``contributing_rows``);
    gradients accumulate in the parameters. The loss keeps the whole minibatch's
    denominators, so skipping rows changes nothing but the time taken.

    returns (whether every loss was finite, the minibatch's summed statistics; the
    diagnostics policy/approx_kl and policy/clip_frac are over the rows trained).
    """
    world = distributed.world_size()
    trained = contributing_rows(mb, recipe)
    tokens = mb.mask.sum(dim=1)                                       # (n,)
    seqs = (tokens > 0).float()
    counts = torch.stack([tokens.sum(), seqs.sum(), tokens[trained].sum(), seqs[trained].sum(),
                          torch.tensor(float(len(trained)))])
    num_tokens, num_seqs, *trained_counts, num_rows = distributed.all_reduce_sum(counts)  # the whole minibatch's
    parts = microbatch_rows(trained, cfg.train.microbatch_size)
    stats = {"update/skipped_rows_frac": float((~trained).sum() / num_rows)}
    finite = True
    for i, rows in enumerate(parts):
        micro = mb.select(rows if len(rows) else torch.zeros(1, dtype=torch.long))
        if not len(rows):                             # a pass that adds nothing: one row, masked out
            micro = replace(micro, mask=torch.zeros_like(micro.mask))
        with distributed.accumulating(list(learner.trained()), sync=i == len(parts) - 1):
            loss, micro_stats = microbatch_loss(learner, micro, recipe, cfg, beta, num_tokens, num_seqs,
                                                trained_counts)
            finite &= bool(torch.isfinite(loss))
            # DDP and FSDP average gradients over the W processes; the loss's
            # gradient is their sum (each process holds its share of the loss)
            (loss * world).backward()
        for k, v in micro_stats.items():
            stats[k] = stats.get(k, 0.0) + v
    return finite, distributed.sum_over_ranks(stats)


def update(learner: Learner, buffer: ExperienceBuffer, recipe: Recipe, cfg: Config, beta: float,
           generator: torch.Generator, bad_steps: int, step: int = 0) -> tuple[dict[str, float], int]:
    """Epochs of shuffled minibatches over the buffer, one optimizer step per minibatch.

    beta: the KL coefficient; generator: deals the minibatches; bad_steps: updates skipped
    in a row so far (a non-finite loss or gradient skips an optimizer step; after
    ``train.max_bad_steps`` in a row training stops with TrainingError); step: the
    loop's step (for crash tests' fault points).
    returns (the mean of each statistic over the optimizer steps, the new bad_steps).
    """
    totals: dict[str, float] = {}
    n_updates, params = 0, learner.parameters()
    for _ in range(recipe.algo.epochs):
        for mb in buffer.minibatches(cfg.train.minibatch_size, generator, distributed.world_size(),
                                     distributed.rank()):
            learner.optimizer.zero_grad(set_to_none=True)
            finite, stats = accumulate(learner, mb, recipe, cfg, beta)
            finite = distributed.all_true(finite)     # every process skips, or none does
            fault_point("update", step)
            norm = distributed.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
            if finite and bool(torch.isfinite(norm)):
                learner.optimizer.step()
                bad_steps = 0
            else:
                # a NaN or inf anywhere would poison the weights and Adam's moments: skip
                learner.optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                stats["optim/skipped"] = 1.0
                if bad_steps >= cfg.train.max_bad_steps:
                    raise TrainingError(f"{bad_steps} updates in a row had a non-finite loss or gradient; "
                                        "lower optim.lr or check the rewards (train.max_bad_steps stops here)")
            stats["optim/grad_norm"] = float(norm)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            n_updates += 1
    return {k: v / max(n_updates, 1) for k, v in totals.items()}, bad_steps
