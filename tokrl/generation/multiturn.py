"""Multi-turn episodes: many conversations decoded as one batch, each at its own turn.

tokrl's engine keeps one KV cache for the batch across turns: when a row's turn ends,
its environment answers (``generation.turns``) and the observation's ids are fed into
that row's cache, one position per decoding step of the batch, with mask 0 (the other
rows keep sampling meanwhile); then the row samples again. Nothing is re-encoded: the
prompt is prefilled once and every later id (the policy's or the environment's) costs
one cached position. A finished episode leaves the batch (its rows of the cache are
dropped), so the batch shrinks as episodes end. Each row's sampling noise is the
uniform of its own seed at its completion position (``sampling.row_uniforms``), as in
``generation.engine.generate``: a row's episode does not depend on its batch.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from tokrl.generation.prompts import check_groups, encode_batch
from tokrl.generation.prefill import prefill, row_noise
from tokrl.generation.sampling import choose
from tokrl.generation.turns import EpisodeError, ObservationFormat, Turns, call_with_timeout
from tokrl.models.forward import decode, device_of
from tokrl.tasks.base import Example
from tokrl.training import distributed
from tokrl.types import Rollout


@torch.no_grad()
def run_episodes(model, prompt_ids: Tensor, prompt_mask: Tensor, turns: Turns, sampling, *,
                 seeds: Tensor | None = None, generator: torch.Generator | None = None, autocast=None,
                 group_size: int = 1) -> None:
    """Decode the episodes of ``turns`` to their ends with one KV cache (results stay in ``turns``).

    prompt_ids, prompt_mask: (N, P) left-padded, rows g*G .. g*G+G-1 one prompt (prefilled
    once). seeds: (N,) each row's noise seed (default: drawn from ``generator``).
    """
    device = device_of(model)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    N, P = prompt_ids.shape
    G, Tmax = group_size, turns.budget
    check_groups(prompt_ids, prompt_mask, G)
    noise = row_noise(sampling, seeds, N, Tmax, generator, device)        # (N, Tmax) float64, or None
    filtered = sampling.top_k > 0 or sampling.top_p < 1.0
    shrink = not distributed.is_sharded(model)     # FSDP: every process runs every forward pass
    active = torch.arange(N, device=device)                                # (A,) rows in the batch
    with autocast if autocast is not None else nullcontext():
        logits, cache, attention, next_pos = prefill(model, prompt_ids, prompt_mask, G, Tmax)   # (A, V) ...
        for t in range(Tmax):
            u = None if noise is None else noise[active, t]
            token, logp, ent = choose(logits, sampling, u, filtered)      # (A,) each
            token = feed(turns, active, token, logp, ent)
            alive = torch.tensor([not turns.done(r) for r in active.tolist()], device=device)
            if distributed.all_done(~alive, model):
                break
            if shrink and not bool(alive.all()):                          # finished episodes leave
                keep = alive.nonzero().squeeze(1)
                active, token, next_pos = active[keep], token[keep], next_pos[keep]
                cache.batch_select_indices(keep)
            logits, cache = decode(model, token[:, None], attention[active, : P + t + 1], next_pos, cache)
            next_pos = next_pos + 1


def feed(turns: Turns, active: Tensor, token: Tensor, logp: Tensor, ent: Tensor) -> Tensor:
    """Each active row's next id: the observation id it is being fed, else the sampled one;
    recorded in ``turns``. returns the ids fed back (A,) long (a finished row's is its last)."""
    out = token.clone()
    for i, (row, tok, lp, en) in enumerate(zip(active.tolist(), token.tolist(), logp.tolist(), ent.tolist())):
        if turns.done(row):
            continue
        forced = turns.forced(row)
        chosen = tok if forced is None else forced
        turns.add(row, chosen, lp, en)
        out[i] = chosen
    return out


def start_episodes(task, tokenizer, examples: list[Example], group_size: int, env_seeds: list[int],
                   skip_bad: bool) -> tuple[list, list[str], list[str | None]]:
    """One environment per row, reset: (envs (N), prompts (B), errors (N): a failed reset's message).

    The G rows of a prompt share its seed, so they face the same environment (and prompt)."""
    envs, prompts, errors = [], [], []
    for example, seed in zip(examples, env_seeds):
        texts = []
        for _ in range(group_size):
            env = task.make(seed)
            try:
                text = call_with_timeout(env.reset, task.step_timeout, example)
                if not isinstance(text, str) or not text:
                    raise EpisodeError(f"reset returned {text!r}; return the prompt text (e.g. example['prompt'])")
                error = None
            except Exception as e:
                if not skip_bad:
                    why = str(e) if isinstance(e, EpisodeError) else f"reset raised {type(e).__name__}: {e}"
                    raise EpisodeError(f"environment {task.name} at turn 0: {why}") from None
                text, error = example["prompt"], f"reset failed: {e}"
            envs.append(env)
            texts.append(text)
            errors.append(error)
        if len(set(texts)) != 1:
            raise EpisodeError(f"environment {task.name}: reset gave the G samples of one prompt different prompts; "
                               "make reset depend only on the example and self.rng")
        prompts.append(texts[0])
    return envs, prompts, errors


def episode_rollout(engine, tokenizer, task, examples: list[Example], group_size: int, sampling, *,
                    chat_template: bool = False, seeds: Tensor | None = None, env_seeds: list[int] | None = None,
                    generator: torch.Generator | None = None, prompt_width: int | None = None,
                    skip_bad_rewards: bool = False) -> Rollout:
    """``generation.batch.rollout`` for an EnvironmentTask: B examples, G episodes each.

    env_seeds: (B) the seed of each prompt's environments (default 0, 1, ...). The Rollout's
    tokens are everything after the prompt (policy and environment ids), its mask 1 on the
    policy's tokens only, its rewards the environment's, on the last token of each turn.
    """
    env_seeds = list(range(len(examples))) if env_seeds is None else env_seeds
    envs, prompts, errors = start_episodes(task, tokenizer, examples, group_size, env_seeds, skip_bad_rewards)
    prompt_ids, prompt_mask = encode_batch(tokenizer, [{"prompt": p} for p in prompts], group_size, chat_template,
                                           width=prompt_width)
    if engine.max_context is not None and int(prompt_mask.sum(1).max()) + task.max_episode_tokens > engine.max_context:
        raise ValueError(f"a prompt of {int(prompt_mask.sum(1).max())} tokens and task.options.max_episode_tokens="
                         f"{task.max_episode_tokens} do not fit in the model's context ({engine.max_context} tokens); "
                         "lower max_episode_tokens")
    turns = Turns(task, tokenizer, envs, ObservationFormat(tokenizer, chat_template), sampling.max_new_tokens,
                  skip_bad_rewards)
    for ep, error in zip(turns.episodes, errors):
        ep.error, ep.done = error, error is not None
    engine.episodes(prompt_ids, prompt_mask, turns, sampling, seeds=seeds, group_size=group_size, generator=generator)
    rows = [ex for ex in examples for _ in range(group_size)]
    batch = to_rollout(turns, tokenizer, prompt_ids, prompt_mask, rows, group_size)
    task.stats = episode_stats(turns)
    return batch


def to_rollout(turns: Turns, tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, rows: list[Example],
               group_size: int) -> Rollout:
    """The finished episodes as a Rollout (N rows, T = the longest episode); a row whose
    environment failed (train.on_bad_reward=skip) keeps zero rewards and an all-zero mask."""
    eps, pad = turns.episodes, tokenizer.pad_token_id
    N, T = len(eps), max([len(ep.ids) for ep in eps] + [1])

    def padded(name: str, fill: float, dtype) -> Tensor:
        return torch.tensor([getattr(ep, name) + [fill] * (T - len(ep.ids)) for ep in eps], dtype=dtype)
    mask = padded("policy", 0.0, torch.float32)
    rewards = padded("rewards", 0.0, torch.float32)
    bad = torch.tensor([ep.error is not None for ep in eps])
    mask[bad], rewards[bad] = 0.0, 0.0
    B = N // group_size
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=padded("ids", pad, torch.long),
        lengths=torch.tensor([len(ep.ids) for ep in eps], dtype=torch.long), mask=mask,
        logprobs=padded("logprobs", 0.0, torch.float32), entropy=padded("entropy", 0.0, torch.float32),
        rewards=rewards, group_size=group_size, prompt_index=torch.arange(B).repeat_interleave(group_size),
        texts=tokenizer.batch_decode([ep.ids for ep in eps], skip_special_tokens=True), examples=rows)


def episode_stats(turns: Turns) -> dict[str, float]:
    """episode/turns (mean policy turns), episode/truncated_frac (ended by a limit),
    episode/env_token_frac (share of the episodes' tokens the environment wrote) and
    episode/skipped_frac (episodes whose environment failed, left out of the loss; shares, so
    that the mean over processes is the whole batch's)."""
    eps = turns.episodes
    n, tokens = max(len(eps), 1), max(sum(len(ep.ids) for ep in eps), 1)
    return {"episode/turns": sum(ep.turns for ep in eps) / n,
            "episode/truncated_frac": sum(ep.truncated for ep in eps) / n,
            "episode/env_token_frac": sum(len(ep.ids) - sum(ep.policy) for ep in eps) / tokens,
            "episode/skipped_frac": sum(ep.error is not None for ep in eps) / n}
