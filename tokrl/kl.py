"""KL toward the reference model: where it is charged, and how beta is controlled.

A recipe charges beta * KL(pi || pi_ref) in one of two places (``KLConfig.in_reward``):

- in the reward (``penalize_rewards``): each token's reward loses beta * k(logp, ref),
  usually with k1, before advantages are estimated;
- in the loss (``loss_term``): beta * the aggregated k2 or k3 is added to the policy
  loss, as GRPO does.

The per-token estimators k1, k2, k3 are ``tokrl.losses.kl``. The coefficient
controllers share one small protocol: ``.value`` (the current beta),
``update(kl, n_steps)`` after each step, and ``state_dict()`` / ``load_state_dict()``
for checkpoints. Their state is beta alone: target and horizon are configuration,
and on resume the config (which may have been edited) is the authority.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokrl import losses


@dataclass
class KLConfig:
    coef: float = 0.0
    """beta of the KL penalty toward the reference model (the frozen initial policy);
    0 with no target skips the reference model entirely"""
    kind: str = "k1"
    """estimator of KL per token: k1 = logp - ref, k2 = 1/2 (logp - ref)^2,
    k3 = exp(ref - logp) - (ref - logp) - 1"""
    in_reward: bool = True
    """true: subtract beta * KL from each token's reward (use k1); false: add
    beta * KL to the loss (use k2 or k3, as GRPO does)"""
    target: float | None = None
    """adaptive control (Ziegler et al. 2019): the KL to hold, in nats per sequence
    (sum over a completion's tokens of logp - ref, averaged over the batch); null: fixed beta"""
    horizon: int = 10000
    """adaptive control: samples over which beta reacts fully to an error"""


def per_sequence(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> float:
    """The batch's KL in nats per sequence: the sum of k1 over a row's tokens, mean over rows.

    logprobs, ref_logprobs, mask: (N, T).  This is what the adaptive controller holds at its target.
    """
    return float(((logprobs - ref_logprobs) * mask).sum(dim=1).mean())


def penalize_rewards(rewards: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str,
                     beta: float) -> Tensor:
    """rewards - beta * k(logp, ref) on every generated token.  All (N, T); returns (N, T)."""
    return rewards - beta * losses.kl(logprobs, ref_logprobs, kind) * mask


def loss_term(logp: Tensor, ref_logprobs: Tensor, kind: str, **aggregation) -> Tensor:
    """The aggregated per-token KL of the policy being trained (a differentiable scalar).

    logp (with grad), ref_logprobs: (n, T); ``aggregation``: ``losses.aggregate``'s mask,
    mode and whole-batch counts. The caller multiplies by beta.
    """
    return losses.aggregate(losses.kl(logp, ref_logprobs, kind), **aggregation)


class FixedKL:
    """A constant beta."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKL:
    """Proportional controller of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences").

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon),
    where KL is the observed divergence (in the unit the config states: per-token
    mean or per-sequence sum) and n the number of samples in the batch. The clip
    bounds the change per sample, so one surprising batch cannot swing beta.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if init_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"need init_coef >= 0, target > 0, horizon > 0; "
                             f"got {init_coef}, {target}, {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, kl: float, n_steps: int) -> None:
        """kl: the batch's observed KL (a float or a 0-d tensor); n_steps: samples in the batch."""
        error = min(max(float(kl) / self.target - 1.0, -0.2), 0.2)    # proportional error, clipped
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def controller(cfg: KLConfig) -> FixedKL | AdaptiveKL:
    """A fixed beta, or Ziegler et al.'s adaptive one when ``cfg.target`` is set."""
    return FixedKL(cfg.coef) if cfg.target is None else AdaptiveKL(cfg.coef, cfg.target, cfg.horizon)
