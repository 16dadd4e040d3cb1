"""Prompts as the policy sees them: the chat template switch, token ids, left padding.

Every path that puts a prompt in front of the policy (rollout, the gymnasium env,
SFT, evaluation) encodes it here, so a prompt has the same ids everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokrl.tasks.base import Example


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The token ids of a prompt, exactly as the policy will see them.

    Plain tokenization: no special tokens (a BOS added here would be added again by
    a chat template or a second encode) and no chat template (another module applies
    templates before calling this). The env and the batched rollout engine both call
    this, so a prompt has the same ids in both.
    """
    # trap: never re-tokenize prompt + completion as one string; BPE can merge across
    # the boundary and the ids would no longer be the ones the policy chose.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


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


def check_groups(prompt_ids: Tensor, prompt_mask: Tensor, group_size: int) -> None:
    """Raise unless rows g*G .. g*G+G-1 hold G copies of one prompt."""
    G, N = group_size, prompt_ids.shape[0]
    if G > 1 and (N % G or not torch.equal(prompt_ids, prompt_ids[::G].repeat_interleave(G, dim=0))
                  or not torch.equal(prompt_mask, prompt_mask[::G].repeat_interleave(G, dim=0))):
        raise ValueError(f"generate: group_size={G} but the rows are not groups of {G} copies of one prompt")
