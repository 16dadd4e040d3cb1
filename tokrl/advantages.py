"""Advantage estimators: pure functions over tensors.

Shapes (DESIGN.md): N = B*G sequences in prompt-major order, T completion tokens
(right-padded). ``mask`` is (N, T), 1.0 on tokens the policy chose and 0.0 on
padding and on environment-inserted tokens, so it can have holes. Time, for
discounting and bootstrapping, runs over the policy's own tokens only: a hole is
not a step, and the next state after token t is the next *unmasked* token.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go G_t = sum_{k>=0} gamma^k r_{t_k} over the unmasked tokens t_0=t < t_1 < ...

    rewards: (N, T), mask: (N, T).  returns: (N, T), 0 on masked tokens.
    Holes are skipped: they neither count as a discount step nor add their reward
    (a reward must sit on a token the policy chose).
    """
    m = mask > 0                                                        # (N, T) bool
    # trap: padding may hold garbage (even NaN); select, never multiply by the mask
    r = torch.where(m, rewards, 0.0)
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])                                 # (N,) G past the end = 0
    for t in reversed(range(r.shape[1])):
        running = torch.where(m[:, t], r[:, t] + gamma * running, running)  # a hole carries G
        out[:, t] = running
    return torch.where(m, out, 0.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016), not whitened.

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},
    where t+1 is the next unmasked token; V and A past the end are 0.
    rewards, values, mask: (N, T).  returns: (advantages, returns), both (N, T),
    returns = advantages + values, both 0 on masked tokens.
    """
    m = mask > 0                                                        # (N, T) bool
    r = torch.where(m, rewards, 0.0)
    v = torch.where(m, values, 0.0).detach()   # trap: targets are constants, never backprop
    adv = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])                              # (N,) V past the end = 0
    next_adv = torch.zeros_like(r[:, 0])                                # (N,) A past the end = 0
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]                  # (N,) TD error
        a = delta + gamma * lam * next_adv                              # (N,)
        # a hole is skipped: the next value and the running advantage carry across it
        next_value = torch.where(m[:, t], v[:, t], next_value)
        next_adv = torch.where(m[:, t], a, next_adv)
        adv[:, t] = a
    adv = torch.where(m, adv, 0.0)
    return adv, torch.where(m, adv + v, 0.0)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) * rsqrt(var + 1e-8) with the masked mean and Bessel-corrected variance.

    x, mask: same shape, e.g. (N, T) or (N,).  returns: x's shape, 0 on masked entries.
    With shift_mean=False the mean is added back (only the scale changes).
    Fewer than two unmasked entries give var = 0 instead of a division by zero.
    """
    m = mask > 0
    x = torch.where(m, x, 0.0)
    n = m.sum()
    mean = x.sum() / n.clamp(min=1)
    # trap: n - 1 = 0 for a single token; clamp so one token gives var 0, not NaN
    var = (torch.where(m, x - mean, 0.0) ** 2).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


def group_relative(scores: Tensor, group_size: int, scale_by_std: bool = True,
                   eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024): (s - mean_group) / (std_group + eps), std Bessel-corrected.

    scale_by_std=False gives Dr. GRPO (Liu et al. 2025): s - mean_group.
    scores: (N,) prompt-major, N = B*G.  returns: (N,); a group of equal scores gives 0.
    """
    _check_groups(scores, group_size)
    s = scores.view(-1, group_size)                                    # (B, G)
    # trap: mean([x, x, x]) can differ from x by one ulp, and ulp / (0 + eps) is not
    # small. Centre on the group's first score: equal scores then subtract to exactly 0.
    d = s - s[:, :1]                                                   # (B, G)
    centred = d - d.mean(dim=1, keepdim=True)                          # (B, G)
    if scale_by_std:
        centred = centred / (centred.std(dim=1, keepdim=True) + eps)  # std with G - 1
    return centred.view(-1)


def leave_one_out(scores: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): each sample's score minus the mean of its G-1 siblings.

    scores: (N,) prompt-major, N = B*G.  returns: (N,).
    """
    _check_groups(scores, group_size)
    s = scores.view(-1, group_size)                                    # (B, G)
    others = (s.sum(dim=1, keepdim=True) - s) / (group_size - 1)       # (B, G)
    return (s - others).view(-1)


def _check_groups(scores: Tensor, group_size: int) -> None:
    if group_size < 2:
        # one sample per prompt has no siblings: no group mean to subtract, std is NaN
        raise ValueError(f"group baselines need at least two samples per prompt, got group_size={group_size}")
    if scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores must be (N,) with N a multiple of group_size={group_size}, "
                         f"got shape {tuple(scores.shape)}")


def broadcast(seq_values: Tensor, mask: Tensor) -> Tensor:
    """Put a per-sequence value (an advantage, a score) on every unmasked token.

    seq_values: (N,), mask: (N, T).  returns: (N, T), 0 on masked tokens.
    """
    return torch.where(mask > 0, seq_values.unsqueeze(1), 0.0)


class MovingAverage:
    """Exponential moving average of returns, a baseline b for REINFORCE.

    b <- decay * b + (1 - decay) * x; the first update sets b = x (no bias towards 0).
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._value = 0.0
        self._initialized = False

    @property
    def value(self) -> float:
        """The current baseline; 0.0 before the first update."""
        return self._value

    def update(self, x: float) -> None:
        x = float(x)
        if self._initialized:
            self._value = self.decay * self._value + (1.0 - self.decay) * x
        else:
            self._value, self._initialized = x, True

    def state_dict(self) -> dict:
        return {"value": self._value, "initialized": self._initialized}

    def load_state_dict(self, state: dict) -> None:
        self._value = float(state["value"])
        self._initialized = bool(state["initialized"])


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over unmasked tokens: 1 is a perfect critic, 0 a constant one.

    values, returns, mask: (N, T).  returns: () float tensor.
    When Var[R] = 0 (fewer than two tokens, or all returns equal) the ratio is
    undefined and we return 0.0 ("explains nothing"), never NaN or inf.
    """
    m = mask > 0
    n = m.sum()

    def var(x: Tensor) -> Tensor:                 # masked variance; the n - 1 cancels
        x = torch.where(m, x.float(), 0.0)
        mean = x.sum() / n.clamp(min=1)
        return (torch.where(m, x - mean, 0.0) ** 2).sum() / (n - 1).clamp(min=1)

    var_r = var(returns)
    ev = 1.0 - var(returns - values) / var_r.clamp(min=torch.finfo(var_r.dtype).tiny)
    return torch.where(var_r > 0, ev, 0.0)
