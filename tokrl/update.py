"""The update: teacher-forced passes, the loss, and epochs of minibatch AdamW steps.

Under data parallelism each process holds its own rows of the step's batch. The
minibatches are chosen over the whole batch's rows in a way that does not depend on
the number of processes (``minibatch_rows``), the loss's denominators are the whole
minibatch's (all-reduced counts), and gradients are summed over processes: one
process and W processes make the same update.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokrl import distributed, losses
from tokrl.algorithms import CLIPPED_LOSSES, POLICY_LOSSES
from tokrl.checkpoint import fault_point
from tokrl.config import Config, SamplingConfig
from tokrl.errors import TrainingError
from tokrl.models import ValueHead, autocast
from tokrl.rollout import process_logits
from tokrl.types import Rollout

if TYPE_CHECKING:
    from tokrl.trainer import TrainState


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


def num_minibatches(num_rows: int, size: int) -> int:
    """K = ceil(N / size) minibatches per epoch (one when size is 0)."""
    return max(1, -(-num_rows // size)) if size else 1


def minibatch_rows(num_rows: int, size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's minibatches: the N rows dealt into K = ceil(N / size) random minibatches.

    The rows are cut into blocks of K consecutive rows and each block deals one row to
    each minibatch, in a random order per block. Every minibatch is then a random sample
    spread evenly over the batch, and a shard of whole blocks (what each of W processes
    holds) gives every minibatch the same number of rows whatever W is: the minibatches
    are the same rows for one process and for W.
    returns K (n_k,) long tensors of row indices, ascending; sizes differ by at most one.
    """
    k = num_minibatches(num_rows, size)
    blocks = -(-num_rows // k)
    deal = torch.rand(blocks, k, generator=generator, device=generator.device).argsort(dim=1).cpu()  # (blocks, K)
    rows = torch.arange(blocks)[:, None] * k + deal                                                   # (blocks, K)
    return [r[r < num_rows] for r in rows.T]                            # a last, partial block deals fewer


def microbatch_loss(state: TrainState, mb: Rollout, cfg: Config, sampling: SamplingConfig,
                    num_tokens: Tensor, num_seqs: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The minibatch loss restricted to microbatch ``mb`` (whole-minibatch denominators, over
    every process), so that the sum over microbatches and processes is the minibatch loss."""
    a = cfg.algo
    logits, values = forward(*state.trained(), mb, cfg.model.dtype)
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
    data = state.buffer.stored()                     # this process's rows of the step's batch
    if data is None:
        return {}
    world = distributed.world_size()
    n = data.num_sequences
    first = distributed.rank() * n                   # its first row in the whole batch
    for _ in range(cfg.algo.epochs):
        for rows in minibatch_rows(n * world, t.minibatch_size, state.shuffle_generator):
            mb = data.select(rows[(rows >= first) & (rows < first + n)] - first)       # this process's share
            counts = torch.stack([mb.mask.sum(), (mb.mask.sum(dim=1) > 0).sum().float()])
            num_tokens, num_seqs = distributed.all_reduce_sum(counts)   # the whole minibatch's denominators
            state.optimizer.zero_grad(set_to_none=True)
            size = t.microbatch_size or mb.num_sequences
            starts = range(0, mb.num_sequences, size)
            step_stats: dict[str, float] = {}
            finite = True
            for start in starts:
                micro = mb.select(torch.arange(start, min(start + size, mb.num_sequences)))
                with distributed.accumulating(list(state.trained()), sync=start == starts[-1]):
                    loss, stats = microbatch_loss(state, micro, cfg, sampling, num_tokens, num_seqs)
                    finite &= bool(torch.isfinite(loss))
                    # DDP and FSDP average gradients over the W processes; the loss's
                    # gradient is their sum (each process holds its share of the loss)
                    (loss * world).backward()
                for k, v in stats.items():
                    step_stats[k] = step_stats.get(k, 0.0) + v
            step_stats = distributed.sum_over_ranks(step_stats)
            finite = distributed.all_true(finite)     # every process skips, or none does
            fault_point("update", state.step)
            norm = distributed.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
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
