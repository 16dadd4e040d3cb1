"""Batched sampling with a KV cache: B prompts x G samples -> Rollout.

The prompts are encoded once (prefill); after that each new token costs one
forward pass over one position per sequence, reading keys and values of the
past from the cache. Re-encoding the whole sequence for every token would cost
O(T^2) instead of O(T).

Sampling noise belongs to the row, not to the batch: each row draws its uniforms
from its own seed (``sample_seeds``: run seed, step, prompt, sample), so a row's
completion does not depend on which other rows share its batch or its process.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from tokrl import distributed
from tokrl.config import SamplingConfig
from tokrl.env import encode_prompt
from tokrl.losses import entropy as full_entropy
from tokrl.tasks.base import Example, Task
from tokrl.types import Rollout


def process_logits(logits: Tensor, sampling: SamplingConfig) -> Tensor:
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


def format_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """The prompt as the model sees it: plain, or as a user turn of the chat template."""
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.chat_template is true but the tokenizer has no chat template; set it to false")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def longest_prompt(tokenizer, examples: list[Example], chat_template: bool = False) -> int:
    """The most tokens any of ``examples``' prompts has, as ``encode_batch`` encodes them."""
    return max(len(encode_prompt(tokenizer, format_prompt(tokenizer, ex["prompt"], chat_template))) for ex in examples)


def encode_batch(tokenizer, examples: list[Example], group_size: int, chat_template: bool = False,
                 max_prompt_tokens: int | None = None, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids, each prompt repeated G times (prompt-major).

    width: pad to at least this many tokens (processes sharing a batch pad alike).
    returns: ids (N, P) long, mask (N, P) long with N = len(examples) * group_size.
    """
    encoded = [encode_prompt(tokenizer, format_prompt(tokenizer, ex["prompt"], chat_template)) for ex in examples]
    for ex, ids in zip(examples, encoded):
        if not ids:
            raise ValueError(f"empty prompt in example {ex!r}; every prompt needs at least one token")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise ValueError(f"a prompt has {len(ids)} tokens, more than the model's context allows "
                             f"({max_prompt_tokens}); shorten it or lower sampling.max_new_tokens")
    P = max(max(len(ids) for ids in encoded), width or 0)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (P - len(x)) + x for x in encoded for _ in range(group_size)], dtype=torch.long)
    mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in encoded for _ in range(group_size)], dtype=torch.long)
    return ids, mask


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


@torch.no_grad()
def generate(model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingConfig, eos_id: int,
             pad_id: int, caps: Tensor | None = None, generator: torch.Generator | None = None,
             autocast=None, seeds: Tensor | None = None, group_size: int = 1) -> dict[str, Tensor]:
    """Sample completions for left-padded prompts with a KV cache.

    prompt_ids, prompt_mask: (N, P); with ``group_size`` G > 1, rows g*G .. g*G+G-1 hold
    the same prompt (``encode_batch``'s order), which is then encoded once, not G times.
    caps: (N,) long, per-row episode lengths set by the task (None: max_new_tokens).
    A row stops after EOS or at its cap. seeds: (N,) long, the seed of each row's noise
    (``sample_seeds``); without them each row's seed is drawn from ``generator`` (or
    torch's global generator). autocast: the context of the forward passes, entered once.
    returns tokens (N, T) long, lengths (N,) long, logprobs (N, T), entropy (N, T)
    float32, with T <= max_new_tokens (the longest completion).
    A model sharded over processes (FSDP) runs one forward pass per token on all of them
    until every process's rows are done.
    """
    from contextlib import nullcontext

    N, P = prompt_ids.shape
    G = group_size
    if G > 1 and (N % G or not torch.equal(prompt_ids, prompt_ids[::G].repeat_interleave(G, dim=0))
                  or not torch.equal(prompt_mask, prompt_mask[::G].repeat_interleave(G, dim=0))):
        raise ValueError(f"generate: group_size={G} but the rows are not groups of {G} copies of one prompt")
    Tmax = sampling.max_new_tokens
    caps = torch.full((N,), Tmax) if caps is None else caps.clamp(max=Tmax)
    tokens = torch.full((N, Tmax), pad_id, dtype=torch.long)
    logprobs = torch.zeros(N, Tmax)
    entropies = torch.zeros(N, Tmax)
    lengths = torch.zeros(N, dtype=torch.long)
    done = caps <= 0                                                       # (N,) bool
    if sampling.temperature > 0:
        if seeds is None:
            seeds = torch.randint(0, 2**62, (N,), generator=generator)
        noise = row_uniforms(seeds, Tmax)                                  # (N, Tmax) float64
    # without top-k / top-p the sampled distribution is the tempered one, whose entropy
    # then comes from the same log-probs; with them it needs its own pass
    filtered = sampling.top_k > 0 or sampling.top_p < 1.0
    attention = torch.cat([prompt_mask, torch.ones(N, Tmax, dtype=prompt_mask.dtype)], dim=1)  # (N, P + Tmax)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)              # (N, P)
    T = 0
    # one autocast region for the whole rollout: inside it, each weight is cast to the
    # autocast dtype once (autocast's cast cache), not once per token
    with autocast if autocast is not None else nullcontext():
        out = model(input_ids=prompt_ids[::G], attention_mask=attention[::G, :P], position_ids=positions[::G],
                    use_cache=True, logits_to_keep=1)
        cache = out.cache
        if G > 1:
            cache.batch_repeat_interleave(G)                               # each prompt's cache, G times
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)            # (N, V)
        next_pos = positions[:, -1:] + 1                                   # (N, 1)
        for t in range(Tmax):
            if distributed.all_done(done, model):
                break
            z = process_logits(logits, sampling)                           # (N, V) float32
            logp_all = torch.log_softmax(z, dim=-1)
            probs = logp_all.exp()
            token = z.argmax(dim=-1) if sampling.temperature == 0 else inverse_cdf(probs, noise[:, t])
            alive = ~done
            token = torch.where(alive, token, torch.full_like(token, pad_id))
            tokens[:, t] = token
            logprobs[:, t] = torch.where(alive, logp_all.gather(1, token[:, None]).squeeze(1), 0.0)
            if filtered:
                tempered = logits.float() / sampling.temperature if sampling.temperature > 0 else logits.float()
                ent = full_entropy(tempered[:, None, :]).squeeze(1)
            else:
                ent = -(probs * logp_all).sum(dim=-1)
            entropies[:, t] = torch.where(alive, ent, 0.0)
            lengths += alive.long()
            done = done | (token == eos_id) | (lengths >= caps)
            T = t + 1
            if distributed.all_done(done, model):
                break
            out = model(input_ids=token[:, None], attention_mask=attention[:, : P + t + 1], position_ids=next_pos,
                        cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]
            next_pos = next_pos + 1
    return {"tokens": tokens[:, :T], "lengths": lengths, "logprobs": logprobs[:, :T], "entropy": entropies[:, :T]}


def score(task: Task, examples: list[Example], tokens: Tensor, lengths: Tensor, texts: list[str],
          skip_bad: bool = False) -> tuple[Tensor, Tensor]:
    """Per-token rewards from the task: its causal token rewards plus its sequence
    reward on each completion's last token.

    returns rewards (N, T) float32 and bad (N,) bool: rows with a non-finite reward.
    A non-finite reward is an error naming the task and the completion, unless
    ``skip_bad``: then the row's rewards are zeroed and flagged for the caller to drop.
    """
    N, T = tokens.shape
    rewards = torch.zeros(N, T)
    ids = [tokens[i, : lengths[i]].tolist() for i in range(N)]
    dense = _call(task, "token_rewards", examples, ids)
    if dense is not None:
        _check_numbers(task, "token_rewards", dense, N, nested=True)
        for i, r in enumerate(dense):
            if len(r) != len(ids[i]):
                raise ValueError(f"task {task.name} gave {len(r)} token rewards for a completion of {len(ids[i])} tokens")
            rewards[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    final = _call(task, "sequence_rewards", examples, texts)
    if final is not None:
        _check_numbers(task, "sequence_rewards", final, N, nested=False)
        last = (lengths - 1).clamp(min=0)
        rewards[torch.arange(N), last] += torch.tensor([float(x) for x in final], dtype=torch.float32)
    bad = ~torch.isfinite(rewards).all(dim=1)                              # (N,)
    if bool(bad.any()):
        if not skip_bad:
            i = int(bad.nonzero()[0])
            raise ValueError(f"task {task.name} gave a non-finite reward for completion {i} ({texts[i]!r}); "
                             "fix the reward, or set train.on_bad_reward=skip to drop such samples")
        rewards[bad] = 0.0
    return rewards, bad


def _check_numbers(task: Task, method: str, values, n: int, nested: bool) -> None:
    """``values`` must be a list of n numbers (or, nested, of n lists of numbers)."""
    def is_number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(values, (list, tuple)):
        raise ValueError(f"task {task.name}: {method} returned {type(values).__name__}, expected a list of {n}")
    if len(values) != n:
        raise ValueError(f"task {task.name}: {method} returned {len(values)} values for {n} completions")
    for row in values:
        items = row if nested else [row]
        if nested and not isinstance(row, (list, tuple)):
            raise ValueError(f"task {task.name}: {method} returned {row!r} where a list of numbers belongs")
        for x in items:
            if not is_number(x):
                raise ValueError(f"task {task.name}: {method} returned {x!r}, which is not a number")


def _call(task: Task, method: str, *args):
    try:
        return getattr(task, method)(*args)
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as e:
        raise ValueError(f"task {task.name}: {method} raised {type(e).__name__}: {e}") from None


def rollout(model, tokenizer, task: Task, examples: list[Example], group_size: int, sampling: SamplingConfig,
            generator: torch.Generator | None = None, chat_template: bool = False, autocast=None,
            skip_bad_rewards: bool = False, seeds: Tensor | None = None, prompt_width: int | None = None) -> Rollout:
    """Sample G completions for each of B examples and score them: a Rollout of N = B*G rows.

    With ``skip_bad_rewards`` a row whose reward is not finite keeps zero rewards and an
    all-zero mask, so it takes no part in the loss. seeds: (N,) per-row seeds of the
    sampling noise (``sample_seeds``; default: drawn from ``generator``). prompt_width:
    left-pad prompts to at least this many tokens.
    """
    prompt_ids, prompt_mask = encode_batch(
        tokenizer, examples, group_size, chat_template,
        max_prompt_tokens=_context_room(model, sampling.max_new_tokens), width=prompt_width)
    rows = [ex for ex in examples for _ in range(group_size)]
    caps = torch.tensor([task.max_tokens(ex) or sampling.max_new_tokens for ex in rows], dtype=torch.long)
    out = generate(model, prompt_ids, prompt_mask, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   caps, generator, autocast, seeds, group_size)
    tokens, lengths = out["tokens"], out["lengths"]
    texts = tokenizer.batch_decode([tokens[i, : lengths[i]] for i in range(len(rows))], skip_special_tokens=True)
    rewards, bad = score(task, rows, tokens, lengths, texts, skip_bad_rewards)
    scorable = task.last_scorable()
    if scorable is not None:                     # no reward could score these: leave them out
        bad |= ~torch.tensor(scorable, dtype=torch.bool)
    mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).float() * (~bad).float()[:, None]
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=tokens, lengths=lengths, mask=mask,
        logprobs=out["logprobs"], entropy=out["entropy"], rewards=rewards,
        group_size=group_size, prompt_index=torch.arange(len(examples)).repeat_interleave(group_size),
        texts=texts, examples=rows,
    )


def _context_room(model, max_new_tokens: int) -> int | None:
    limit = getattr(model.config, "max_position_embeddings", None)
    return None if limit is None else limit - max_new_tokens
