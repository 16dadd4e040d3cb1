"""One batch of episodes: encode B prompts, sample G completions each, decode, score.

The result is a ``Rollout`` of N = B*G rows in prompt-major order, with every
token-level quantity the update needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokrl.generation.engine import Engine, TokrlEngine
from tokrl.generation.multiturn import episode_rollout
from tokrl.generation.prompts import encode_batch
from tokrl.rewards.score import score
from tokrl.tasks.base import Example, Task
from tokrl.tasks.multiturn import EnvironmentTask
from tokrl.types import Rollout


def as_engine(engine: Engine | torch.nn.Module, dtype: str = "float32") -> Engine:
    """``engine`` itself, or a model wrapped in tokrl's engine (computing in ``dtype``)."""
    return TokrlEngine(engine, dtype) if isinstance(engine, torch.nn.Module) else engine


def rollout(engine: Engine | torch.nn.Module, tokenizer, task: Task, examples: list[Example], group_size: int,
            sampling, *, chat_template: bool = False, dtype: str = "float32", seeds: Tensor | None = None,
            generator: torch.Generator | None = None, prompt_width: int | None = None,
            skip_bad_rewards: bool = False, env_seeds: list[int] | None = None) -> Rollout:
    """Sample G completions for each of B examples and score them: a Rollout of N = B*G rows.

    engine: an ``Engine``, or a model (run by tokrl's engine in ``dtype``: float32, or
    bfloat16 autocast). sampling: a SamplingConfig. chat_template: wrap prompts in the
    tokenizer's chat template. seeds: (N,)
    per-row seeds of the sampling noise (``sample_seeds``; default: drawn from
    ``generator``). prompt_width: left-pad prompts to at least this many tokens. With
    ``skip_bad_rewards`` a row whose reward is not finite keeps zero rewards and an
    all-zero mask, so it takes no part in the loss. A multi-turn task (``EnvironmentTask``)
    runs its episodes (``generation.multiturn``), its environments seeded with ``env_seeds``
    (B,), one per prompt.
    """
    engine = as_engine(engine, dtype)
    if isinstance(task, EnvironmentTask):
        return episode_rollout(engine, tokenizer, task, examples, group_size, sampling, chat_template=chat_template,
                               seeds=seeds, env_seeds=env_seeds, generator=generator, prompt_width=prompt_width,
                               skip_bad_rewards=skip_bad_rewards)
    room = None if engine.max_context is None else engine.max_context - sampling.max_new_tokens
    prompt_ids, prompt_mask = encode_batch(tokenizer, examples, group_size, chat_template, max_prompt_tokens=room,
                                           width=prompt_width)
    rows = [ex for ex in examples for _ in range(group_size)]
    caps = torch.tensor([task.max_tokens(ex) or sampling.max_new_tokens for ex in rows], dtype=torch.long)
    out = engine.generate(prompt_ids, prompt_mask, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id,
                          caps=caps, seeds=seeds, group_size=group_size, generator=generator)
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
