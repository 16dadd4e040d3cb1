"""One batch of episodes: encode B prompts, sample G completions each, decode, score.

The result is a ``Rollout`` of N = B*G rows in prompt-major order, with every
token-level quantity the update needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokrl.generation.engine import generate
from tokrl.generation.prompts import context_room, encode_batch
from tokrl.rewards.score import score
from tokrl.tasks.base import Example, Task
from tokrl.types import Rollout


def rollout(model, tokenizer, task: Task, examples: list[Example], group_size: int, sampling, *,
            chat_template: bool = False, autocast=None, seeds: Tensor | None = None,
            generator: torch.Generator | None = None, prompt_width: int | None = None,
            skip_bad_rewards: bool = False) -> Rollout:
    """Sample G completions for each of B examples and score them: a Rollout of N = B*G rows.

    sampling: a SamplingConfig. chat_template: wrap prompts in the tokenizer's chat
    template. autocast: the forward passes' context (``models.autocast``). seeds: (N,)
    per-row seeds of the sampling noise (``sample_seeds``; default: drawn from
    ``generator``). prompt_width: left-pad prompts to at least this many tokens. With
    ``skip_bad_rewards`` a row whose reward is not finite keeps zero rewards and an
    all-zero mask, so it takes no part in the loss.
    """
    prompt_ids, prompt_mask = encode_batch(
        tokenizer, examples, group_size, chat_template,
        max_prompt_tokens=context_room(model, sampling.max_new_tokens), width=prompt_width)
    rows = [ex for ex in examples for _ in range(group_size)]
    caps = torch.tensor([task.max_tokens(ex) or sampling.max_new_tokens for ex in rows], dtype=torch.long)
    out = generate(model, prompt_ids, prompt_mask, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   caps=caps, generator=generator, autocast=autocast, seeds=seeds, group_size=group_size)
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
