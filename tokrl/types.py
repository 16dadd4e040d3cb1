"""The batch type that flows through the loop.

Shapes (see DESIGN.md): B prompts, G samples per prompt, N = B*G sequences in
prompt-major order (rows i*G ... i*G+G-1 answer prompt i), P prompt tokens
(left-padded), T completion tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class Rollout:
    """N sampled completions with every token-level quantity the update needs.

    A field that a recipe does not use stays ``None`` (no reference pass, no critic).
    """

    prompt_ids: Tensor
    """(N, P) long: prompt token ids, left-padded with the pad id"""
    prompt_mask: Tensor
    """(N, P) long: 1 on real prompt tokens, 0 on left padding"""
    tokens: Tensor
    """(N, T) long: completion token ids, right-padded with the pad id"""
    lengths: Tensor
    """(N,) long: completion tokens that exist (EOS included); the rest is padding"""
    mask: Tensor
    """(N, T) float: 1.0 on tokens the policy chose, 0.0 on padding and inserted tokens"""
    logprobs: Tensor
    """(N, T) float32: log-prob of each token under the distribution it was sampled from"""
    entropy: Tensor
    """(N, T) float32: full-vocabulary entropy of the policy at each token"""
    rewards: Tensor
    """(N, T) float32: per-token rewards; a sequence-level reward sits on the last token"""
    group_size: int = 1
    """G: samples per prompt"""
    values: Tensor | None = None
    """(N, T) float32: V(s_t), the value of the state in which token t is chosen"""
    ref_logprobs: Tensor | None = None
    """(N, T) float32: log-prob of each token under the frozen reference model"""
    advantages: Tensor | None = None
    """(N, T) float32: what the policy gradient multiplies; set by the estimator"""
    returns: Tensor | None = None
    """(N, T) float32: value-function targets; set by estimators that train a critic"""
    engine_logprobs: Tensor | None = None
    """(N, T) float32: log-prob of each token under the engine that sampled it, when that
    engine is not the trainer's own (vLLM); ``logprobs`` then holds the trainer's"""
    is_weights: Tensor | None = None
    """(N, T) float32: truncated importance weights min(pi_train / pi_engine, C) of each
    token's policy loss (None: the engine sampled from the trainer's distribution)"""
    greedy_scores: Tensor | None = None
    """(N,) float32: score of the prompt's greedy completion (ReMax's baseline)"""
    prompt_index: Tensor | None = None
    """(N,) long: which of the step's B prompts each row answers"""
    texts: list[str] = field(default_factory=list)
    """N decoded completions (for logging and sequence-level rewards)"""
    examples: list[dict[str, Any]] = field(default_factory=list)
    """N task examples (prompt text plus named columns), one per row"""

    @property
    def num_sequences(self) -> int:
        return self.tokens.shape[0]

    @property
    def scores(self) -> Tensor:
        """(N,) sequence score: the sum of token rewards over generated tokens."""
        return (self.rewards * self.mask).sum(dim=1)

    def attention_mask(self) -> Tensor:
        """(N, P+T) long: 1 on every real token of prompt + completion."""
        T = self.tokens.shape[1]
        completion = (torch.arange(T, device=self.tokens.device)[None, :] < self.lengths[:, None]).long()
        return torch.cat([self.prompt_mask, completion], dim=1)

    def input_ids(self) -> Tensor:
        """(N, P+T) long: prompt followed by completion."""
        return torch.cat([self.prompt_ids, self.tokens], dim=1)

    def select(self, index: Tensor) -> "Rollout":
        """The rows ``index`` ((K,) long) of every tensor field, as a new Rollout.

        The selection keeps no group structure, so ``group_size`` becomes 1.
        """
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value[index]
            elif isinstance(value, list) and value:
                changes[f.name] = [value[i] for i in index.tolist()]
        changes["group_size"] = 1
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> "Rollout":
        changes = {f.name: getattr(self, f.name).to(device)
                   for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **changes)


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Stack rollouts row-wise, padding P (left) and T (right) to the widest part."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.tokens.shape[1] for p in parts)
    changes: dict[str, Any] = {}
    for f in fields(Rollout):
        values = [getattr(p, f.name) for p in parts]
        if isinstance(values[0], Tensor):
            if values[0].dim() == 2 and f.name.startswith("prompt"):
                values = [torch.nn.functional.pad(v, (P - v.shape[1], 0)) for v in values]
            elif values[0].dim() == 2:
                values = [torch.nn.functional.pad(v, (0, T - v.shape[1])) for v in values]
            changes[f.name] = torch.cat(values, dim=0)
        elif isinstance(values[0], list):
            changes[f.name] = [x for v in values for x in v]
    changes["group_size"] = parts[0].group_size
    return replace(parts[0], **changes)
