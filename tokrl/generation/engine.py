"""Engines, and tokrl's own: batched sampling with a KV cache, the exact reference.

An engine turns token ids into token ids plus the log-probs of what it sampled
(``Engine``); tokrl never re-tokenizes text between the two. ``TokrlEngine`` runs
the policy module itself: the prompts are encoded once (prefill); after that each
new token costs one forward pass over one position per sequence, reading keys and
values of the past from the cache. Re-encoding the whole sequence for every token
would cost O(T^2) instead of O(T). Each row's noise comes from its own seed
(``sampling.sample_seeds``), so a row's completion does not depend on which other
rows share its batch or its process: resume is bitwise and 1 or W processes make
the same run. The vLLM engine is ``generation.vllm_engine``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from tokrl.generation.prompts import check_groups
from tokrl.generation.prefill import prefill, row_noise
from tokrl.generation.sampling import choose
from tokrl.models.forward import autocast as autocast_context
from tokrl.models.forward import decode, device_of
from tokrl.training import distributed


class Engine(Protocol):
    """What samples completions for the loop. Token ids in, token ids out."""

    exact: bool
    """its log-probs are the trainer's own (tokrl's engine); False: the trainer recomputes
    them and corrects for the engine's distribution by importance sampling"""
    max_context: int | None
    """the longest prompt + completion it can hold (None: no limit)"""

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling, eos_id: int, pad_id: int, *,
                 caps: Tensor | None = None, seeds: Tensor | None = None, group_size: int = 1,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Sample completions of left-padded prompts (N, P): ``generate``'s arguments and result
        (tokens, lengths, logprobs, entropy; on the CPU)."""

    def episodes(self, prompt_ids: Tensor, prompt_mask: Tensor, turns, sampling, *, seeds: Tensor | None = None,
                 group_size: int = 1, generator: torch.Generator | None = None) -> None:
        """Run multi-turn episodes to their ends (``generation.turns.Turns`` holds them and
        their results; ``generation.multiturn``)."""

    def sync(self, model) -> None:
        """Take ``model``'s current weights (after an optimizer step or a checkpoint load)."""


class TokrlEngine:
    """tokrl's engine on the policy module itself: it always samples from the current weights."""

    exact = True

    def __init__(self, model, dtype: str = "float32"):
        self.model, self.dtype = model, dtype
        self.max_context = getattr(model.config, "max_position_embeddings", None)

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling, eos_id: int, pad_id: int, *,
                 caps: Tensor | None = None, seeds: Tensor | None = None, group_size: int = 1,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return generate(self.model, prompt_ids, prompt_mask, sampling, eos_id, pad_id, caps=caps, generator=generator,
                        autocast=autocast_context(self.dtype, device_of(self.model)), seeds=seeds,
                        group_size=group_size)

    def episodes(self, prompt_ids: Tensor, prompt_mask: Tensor, turns, sampling, *, seeds: Tensor | None = None,
                 group_size: int = 1, generator: torch.Generator | None = None) -> None:
        from tokrl.generation.multiturn import run_episodes

        run_episodes(self.model, prompt_ids, prompt_mask, turns, sampling, seeds=seeds, generator=generator,
                     autocast=autocast_context(self.dtype, device_of(self.model)), group_size=group_size)

    def sync(self, model) -> None:
        """Nothing to copy: the engine runs the module that the optimizer updates."""


@dataclass
class Completions:
    """What a rollout records per row while it decodes (T = max_new_tokens until trimmed)."""

    tokens: Tensor
    """(N, T) long: sampled ids, the pad id after a row is done"""
    logprobs: Tensor
    """(N, T) float32: log-prob of each sampled token under the sampled distribution"""
    entropy: Tensor
    """(N, T) float32: entropy of the policy at each token"""
    lengths: Tensor
    """(N,) long: tokens generated so far (EOS included)"""
    done: Tensor
    """(N,) bool: the row hit EOS or its cap"""

    @classmethod
    def empty(cls, caps: Tensor, steps: int, pad_id: int) -> "Completions":
        N, device = caps.shape[0], caps.device
        return cls(torch.full((N, steps), pad_id, dtype=torch.long, device=device),
                   torch.zeros(N, steps, device=device), torch.zeros(N, steps, device=device),
                   torch.zeros(N, dtype=torch.long, device=device), caps <= 0)

    def record(self, t: int, token: Tensor, logp: Tensor, ent: Tensor, pad_id: int, eos_id: int,
               caps: Tensor) -> Tensor:
        """Store step t for the rows still alive; returns the tokens fed back (N,)."""
        alive = ~self.done
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        self.tokens[:, t] = token
        self.logprobs[:, t] = torch.where(alive, logp, 0.0)
        self.entropy[:, t] = torch.where(alive, ent, 0.0)
        self.lengths += alive.long()
        self.done = self.done | (token == eos_id) | (self.lengths >= caps)
        return token

    def trimmed(self, steps: int) -> dict[str, Tensor]:
        """The first ``steps`` columns, on the CPU: tokens, lengths, logprobs, entropy."""
        return {"tokens": self.tokens[:, :steps].cpu(), "lengths": self.lengths.cpu(),
                "logprobs": self.logprobs[:, :steps].cpu(), "entropy": self.entropy[:, :steps].cpu()}


@torch.no_grad()
def generate(model, prompt_ids: Tensor, prompt_mask: Tensor, sampling, eos_id: int,
             pad_id: int, caps: Tensor | None = None, generator: torch.Generator | None = None,
             autocast=None, seeds: Tensor | None = None, group_size: int = 1) -> dict[str, Tensor]:
    """Sample completions for left-padded prompts with a KV cache.

    prompt_ids, prompt_mask: (N, P); with ``group_size`` G > 1, rows g*G .. g*G+G-1 hold
    the same prompt (``encode_batch``'s order), which is then encoded once, not G times.
    sampling: a SamplingConfig. caps: (N,) long, per-row episode lengths set by the task
    (None: max_new_tokens). A row stops after EOS or at its cap. seeds: (N,) long, the seed
    of each row's noise (``sample_seeds``); without them each row's seed is drawn from
    ``generator`` (or torch's global generator). autocast: the context of the forward
    passes, entered once.
    returns tokens (N, T) long, lengths (N,) long, logprobs (N, T), entropy (N, T)
    float32, on the CPU, with T <= max_new_tokens (the longest completion). The model may
    be on any device: the prompts go to it.
    A model sharded over processes (FSDP) runs one forward pass per token on all of them
    until every process's rows are done.
    """
    device = device_of(model)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    N, P = prompt_ids.shape
    G, Tmax = group_size, sampling.max_new_tokens
    check_groups(prompt_ids, prompt_mask, G)
    caps = torch.full((N,), Tmax) if caps is None else caps.clamp(max=Tmax)
    caps = caps.to(device)
    out = Completions.empty(caps, Tmax, pad_id)
    noise = row_noise(sampling, seeds, N, Tmax, generator, device)        # (N, Tmax) float64, or None
    filtered = sampling.top_k > 0 or sampling.top_p < 1.0
    T = 0
    # one autocast region for the whole rollout: inside it, each weight is cast to the
    # autocast dtype once (autocast's cast cache), not once per token
    with autocast if autocast is not None else nullcontext():
        logits, cache, attention, next_pos = prefill(model, prompt_ids, prompt_mask, G, Tmax)
        for t in range(Tmax):
            if distributed.all_done(out.done, model):
                break
            token, logp, ent = choose(logits, sampling, None if noise is None else noise[:, t], filtered)
            token = out.record(t, token, logp, ent, pad_id, eos_id, caps)
            T = t + 1
            if distributed.all_done(out.done, model):
                break
            logits, cache = decode(model, token[:, None], attention[:, : P + t + 1], next_pos, cache)
            next_pos = next_pos + 1
    return out.trimmed(T)
