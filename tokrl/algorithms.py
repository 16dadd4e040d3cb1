"""Algorithms as compositions of the pure functions in advantages.py and losses.py.

A recipe names an advantage estimator, a baseline, a policy loss, a KL term and an
aggregation mode. ``resolve`` looks the names up in the tables below once, checks
that they fit together, and returns a ``Recipe`` that every stage of the loop
reads. Adding a method means adding a function to one of these tables (and a
test), never a branch in the trainer.

The ``algo`` section of the config is defined here, beside the tables its names index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from tokrl import advantages as adv
from tokrl import losses
from tokrl.errors import ConfigError
from tokrl.kl import KLConfig
from tokrl.types import Rollout


@dataclass
class AlgoConfig:
    estimator: str = "reinforce"
    """advantage estimator: reinforce (reward-to-go minus a baseline), gae (PPO's
    token-level critic), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, remax"""
    baseline: str = "value"
    """baseline for reinforce: none, ema (moving average of returns) or value
    (a learned value head on the policy trunk, trained alongside)"""
    policy_loss: str = "pg"
    """pg (REINFORCE: -A log pi), ppo (clipped token ratio) or gspo (clipped
    sequence ratio; use clip_low 3e-4, clip_high 4e-4)"""
    gamma: float = 1.0
    """discount factor over tokens"""
    lam: float = 0.95
    """GAE lambda"""
    whiten: bool = False
    """normalise advantages over the batch (masked mean 0, variance 1)"""
    ema_decay: float = 0.9
    """decay of the moving-average baseline"""
    entropy_coef: float = 0.01
    """alpha of the entropy bonus alpha * H(pi) over the full vocabulary"""
    value_coef: float = 0.5
    """weight of the value loss in the total loss"""
    value_clip: float | None = None
    """clip value updates to +-value_clip around the rollout values (None: off)"""
    clip_low: float = 0.2
    """PPO: the ratio is kept >= 1 - clip_low"""
    clip_high: float = 0.2
    """PPO: the ratio is kept <= 1 + clip_high; above clip_low gives DAPO's clip-higher"""
    dual_clip: float | None = None
    """PPO dual clip c > 1: for negative advantages the loss is capped at -c*A"""
    aggregation: str = "token-mean"
    """how per-token losses become a scalar: token-mean, seq-mean-token-mean,
    seq-mean-token-sum, seq-mean-token-sum-norm"""
    epochs: int = 1
    """passes over each rollout batch (PPO uses several)"""

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


# ------------------------------------------------------------------ the recipe

@dataclass(frozen=True)
class Recipe:
    """The algorithm of a run, resolved once from its config; every stage reads this."""

    algo: AlgoConfig
    """the numbers (gamma, lam, clip ranges, coefficients, epochs, aggregation)"""
    estimator: Estimator
    """the advantage estimator and what it needs (critic, groups, greedy scores)"""
    policy_loss: PolicyLoss
    """the per-token policy loss"""
    clipped: bool
    """the policy loss clips a ratio (its clip fraction is logged)"""
    critic: bool
    """the value head is trained (values are computed for every rollout batch)"""
    kl: KLConfig
    """where and how KL toward the reference is charged"""

    @property
    def reference(self) -> bool:
        """A frozen reference model is built and run (beta > 0)."""
        return self.kl.coef > 0

    @property
    def kl_in_reward(self) -> bool:
        return self.reference and self.kl.in_reward

    @property
    def kl_in_loss(self) -> bool:
        return self.reference and not self.kl.in_reward


def resolve(algo: AlgoConfig, kl: KLConfig, group_size: int) -> Recipe:
    """The Recipe named by ``algo`` and ``kl``; ConfigError naming the key when a name is
    unknown or the parts do not fit (a group estimator with one sample per prompt)."""
    _check(algo.estimator in ESTIMATORS, f"algo.estimator: {algo.estimator!r} is not one of {', '.join(ESTIMATORS)}")
    _check(algo.baseline in BASELINES, f"algo.baseline: {algo.baseline!r} is not one of {', '.join(BASELINES)}")
    _check(algo.policy_loss in POLICY_LOSSES,
           f"algo.policy_loss: {algo.policy_loss!r} is not one of {', '.join(POLICY_LOSSES)}")
    _check(algo.aggregation in losses.AGGREGATIONS,
           f"algo.aggregation: {algo.aggregation!r} is not one of {', '.join(losses.AGGREGATIONS)}")
    _check(kl.kind in losses.KL_KINDS, f"kl.kind: {kl.kind!r} is not one of {', '.join(losses.KL_KINDS)}")
    estimator = ESTIMATORS[algo.estimator]
    _check(not (estimator.groups and group_size < 2),
           f"algo.estimator={algo.estimator} compares samples of one prompt: set train.group_size >= 2")
    critic = estimator.critic or (algo.estimator == "reinforce" and algo.baseline == "value")
    return Recipe(algo=algo, estimator=estimator, policy_loss=POLICY_LOSSES[algo.policy_loss],
                  clipped=algo.policy_loss in CLIPPED_LOSSES, critic=critic, kl=kl)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
