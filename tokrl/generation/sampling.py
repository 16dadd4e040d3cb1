"""The behaviour policy's distribution and its noise.

``process_logits`` turns logits into the distribution actually sampled from
(temperature, top-k, top-p); the update applies the same function, so the
log-prob recorded at rollout and the one recomputed in training agree.

Sampling noise belongs to the row, not to the batch: each row draws its uniforms
from its own seed (``sample_seeds``: run seed, step, prompt, sample), so a row's
completion does not depend on which other rows share its batch or its process.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from tokrl.losses import entropy as full_entropy


def process_logits(logits: Tensor, sampling) -> Tensor:
    """The logits of the distribution actually sampled from.

    logits: (..., V) -> (..., V) float32, divided by the temperature, with -inf
    outside the top-k / top-p set. The trainer applies the same function, so the
    log-prob recorded at rollout and the one recomputed in the update agree.
    """
    z = logits.float()
    if sampling.temperature > 0 and sampling.temperature != 1.0:
        z = z / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < z.shape[-1]:
        kth = torch.topk(z, sampling.top_k, dim=-1).values[..., -1:]          # (..., 1)
        z = z.masked_fill(z < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = sorted_z.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p; the
        # most likely token is always kept
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def sample_seeds(seed: int, step: int, first_prompt: int, num_prompts: int, group_size: int) -> Tensor:
    """(N,) long: the seed of each row's sampling noise, N = num_prompts * group_size.

    Row (p, g) answers prompt p of the step's batch (``first_prompt`` <= p <
    ``first_prompt + num_prompts``) with its g-th sample; its seed is a hash of
    (seed, step, p, g). So a run draws the same completions whether one process
    samples all B prompts or W processes sample B/W each.
    """
    keys = [f"{seed}:{step}:{p}:{g}".encode() for p in range(first_prompt, first_prompt + num_prompts)
            for g in range(group_size)]
    # 63 bits: a non-negative int64 that torch.Generator.manual_seed takes
    return torch.tensor([int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "little") >> 1 for k in keys],
                        dtype=torch.long)


def env_seeds(seed: int, step: int, first_prompt: int, num_prompts: int) -> list[int]:
    """The seed of each prompt's environments (multi-turn tasks): a hash of (seed, step, p),
    shared by the prompt's G samples, so they face the same environment, on any process."""
    keys = [f"env:{seed}:{step}:{p}".encode() for p in range(first_prompt, first_prompt + num_prompts)]
    return [int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "little") >> 1 for k in keys]


def row_uniforms(seeds: Tensor, steps: int) -> Tensor:
    """(N, steps) float64 uniforms in [0, 1): row i from its own generator seeded with seeds[i].

    One generator call per row per rollout (not per token); float64 so that tokens of
    probability below 2^-24 are still sampled at their rate.
    """
    return torch.stack([torch.rand(steps, dtype=torch.float64, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds.tolist()]) if len(seeds) else torch.zeros(0, steps, dtype=torch.float64)


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Sample one token per row: the first token whose cumulative probability exceeds u.

    probs: (N, V) non-negative (need not sum to 1; zeros are never drawn), u: (N,)
    uniforms in [0, 1).  returns: (N,) long.
    """
    cdf = probs.double().cumsum(dim=-1)                                    # (N, V)
    total = cdf[:, -1:]                                                    # (N, 1)
    # trap: u * total can round up to total; keep x strictly below it, so the step found
    # is one of a token with mass (a zero-probability token is a flat step: never hit)
    x = torch.minimum(u[:, None].double() * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(1)               # cdf[i-1] <= x < cdf[i]


def choose(logits: Tensor, sampling, u: Tensor | None, filtered: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One token per row from ``logits`` (N, V): greedy when u is None, else by inverse CDF at u (N,).

    returns token (N,) long, its log-prob (N,) and the policy's entropy (N,), all under
    the sampled distribution (``process_logits``). Without top-k / top-p the sampled
    distribution is the tempered one, so its entropy comes from the same log-probs;
    with them (``filtered``) the full tempered distribution needs its own pass.
    """
    z = process_logits(logits, sampling)                                   # (N, V) float32
    logp_all = torch.log_softmax(z, dim=-1)
    probs = logp_all.exp()
    token = z.argmax(dim=-1) if u is None else inverse_cdf(probs, u)
    logp = logp_all.gather(1, token[:, None]).squeeze(1)
    if filtered:
        tempered = logits.float() / sampling.temperature if sampling.temperature > 0 else logits.float()
        ent = full_entropy(tempered[:, None, :]).squeeze(1)
    else:
        ent = -(probs * logp_all).sum(dim=-1)
    return token, logp, ent
