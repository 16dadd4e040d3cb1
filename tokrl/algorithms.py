"""Algorithms as compositions of the pure functions in advantages.py and losses.py.

A recipe names an advantage estimator, a baseline, a policy loss, a KL term and an
aggregation mode; the trainer looks each up here and calls it. Adding a method
means adding a function to one of these tables (and a test), never a branch in
the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from tokrl import advantages as adv
from tokrl import losses
from tokrl.config import AlgoConfig
from tokrl.types import Rollout

# ----------------------------------------------------------------- estimators
# Each takes the scored batch, the algorithm config and the moving-average
# baseline, and returns (advantages (N, T), returns (N, T) or None); returns are
# the value head's targets when the estimator trains one. Dense per-token rewards
# flow into each: token-level estimators use them directly, group estimators
# score a sequence by the sum of its token rewards (Rollout.scores).

EstimatorFn = Callable[[Rollout, AlgoConfig, adv.MovingAverage], "tuple[Tensor, Tensor | None]"]


@dataclass(frozen=True)
class Estimator:
    fn: EstimatorFn
    critic: bool = False
    """trains the value head (values are computed for every rollout batch)"""
    groups: bool = False
    """needs G >= 2 samples per prompt"""
    greedy: bool = False
    """needs the reward of one greedy completion per prompt (batch.greedy_scores)"""


def reinforce(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """A_t = G_t - b: reward-to-go minus the configured baseline (none, ema or value)."""
    returns = adv.discounted_returns(batch.rewards, batch.mask, cfg.gamma)          # (N, T)
    if cfg.baseline == "value":
        return (returns - batch.values) * batch.mask, returns
    if cfg.baseline == "ema":
        # the baseline is the average *before* this batch, so it does not depend on the
        # samples it is subtracted from and the estimate stays unbiased
        b = ema.value
        ema.update(float((returns * batch.mask).sum() / batch.mask.sum().clamp(min=1)))
        return (returns - b) * batch.mask, None
    return returns, None


def gae(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """Generalised advantage estimation with the token-level critic (PPO)."""
    return adv.gae(batch.rewards, batch.values, batch.mask, cfg.gamma, cfg.lam)


def grpo(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """GRPO: (score - group mean) / (group std + eps) on every token of the sequence."""
    a = adv.group_relative(batch.scores, batch.group_size, scale_by_std=True)     # (N,)
    return adv.broadcast(a, batch.mask), None


def dr_grpo(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """Dr. GRPO: the group mean is subtracted, the score is not divided by the std."""
    a = adv.group_relative(batch.scores, batch.group_size, scale_by_std=False)
    return adv.broadcast(a, batch.mask), None


def rloo(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """RLOO: each score minus the mean of its G-1 siblings."""
    return adv.broadcast(adv.leave_one_out(batch.scores, batch.group_size), batch.mask), None


def reinforce_pp(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """REINFORCE++: reward-to-go of the token rewards (a k1 KL penalty sits in them when
    kl.in_reward is set), whitened over the whole batch: the batch is the baseline."""
    returns = adv.discounted_returns(batch.rewards, batch.mask, cfg.gamma)
    return adv.whiten(returns, batch.mask), None


def reinforce_pp_baseline(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """REINFORCE++ with a group baseline: the group's mean score is taken off each
    sequence's last token, then reward-to-go, then whitening over the batch."""
    B, G = batch.num_sequences // batch.group_size, batch.group_size
    group_mean = batch.scores.view(B, G).mean(dim=1).repeat_interleave(G)          # (N,)
    rewards = batch.rewards.clone()
    last = (batch.lengths - 1).clamp(min=0)
    rewards[torch.arange(batch.num_sequences), last] -= group_mean
    returns = adv.discounted_returns(rewards, batch.mask, cfg.gamma)
    return adv.whiten(returns, batch.mask), None


def remax(batch: Rollout, cfg: AlgoConfig, ema: adv.MovingAverage) -> tuple[Tensor, Tensor | None]:
    """ReMax: the score of the prompt's greedy completion is the baseline."""
    return adv.broadcast(batch.scores - batch.greedy_scores, batch.mask), None


ESTIMATORS: dict[str, Estimator] = {
    "reinforce": Estimator(reinforce),
    "gae": Estimator(gae, critic=True),
    "grpo": Estimator(grpo, groups=True),
    "dr_grpo": Estimator(dr_grpo, groups=True),
    "rloo": Estimator(rloo, groups=True),
    "reinforce_pp": Estimator(reinforce_pp),
    "reinforce_pp_baseline": Estimator(reinforce_pp_baseline, groups=True),
    "remax": Estimator(remax, greedy=True),
}
BASELINES = ("none", "ema", "value")


def uses_critic(cfg: AlgoConfig) -> bool:
    """Whether the recipe trains the value head (and so needs values at rollout)."""
    return ESTIMATORS[cfg.estimator].critic or (cfg.estimator == "reinforce" and cfg.baseline == "value")


# ---------------------------------------------------------------- policy losses
# Each maps (logp, old_logp, advantages, mask, cfg) to a per-token loss (N, T).

PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, AlgoConfig], Tensor]


def pg_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgoConfig) -> Tensor:
    """REINFORCE: -A * log pi (on-policy; old_logp unused)."""
    return losses.policy_gradient(logp, advantages)


def ppo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgoConfig) -> Tensor:
    """PPO's clipped surrogate with asymmetric (clip-higher) and optional dual clipping."""
    return losses.ppo_clip(logp, old_logp, advantages, cfg.clip_low, cfg.clip_high, cfg.dual_clip)


def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgoConfig) -> Tensor:
    """GSPO: PPO clipping on the length-normalised sequence ratio (clip ranges ~1e-4)."""
    return losses.gspo_clip(logp, old_logp, advantages, mask, cfg.clip_low, cfg.clip_high)


POLICY_LOSSES: dict[str, PolicyLoss] = {"pg": pg_loss, "ppo": ppo_loss, "gspo": gspo_loss}
CLIPPED_LOSSES = ("ppo", "gspo")
