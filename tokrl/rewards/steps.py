"""Steps of a solution and the tokens that end them: what a process reward model reads.

A solution is a list of steps; as text it is the steps joined by a separator
(``"\\n"`` by default). A step-level reward model (PRM) reads the prompt's ids
followed by the ids of that whole text, tokenized once, and scores each step at the
step's last token. Which token that is comes from the tokenizer's character
offsets of the whole text, never from tokenizing the steps one by one (a step
tokenized alone can split differently from the same step inside the text).

Trap: a token may straddle a step boundary (BPE can merge a step's last character
with the separator). The step's last token is the one that holds the step's last
character, so the score there has seen the whole step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokrl.models.forward import autocast

Spans = list[tuple[int, int]]
"""(start, end) character ranges, end exclusive"""


def join_steps(steps: list[str], separator: str) -> tuple[str, Spans]:
    """(the text, each step's character span in it).

    >>> join_steps(["ab", "c"], "\\n")
    ('ab\\nc', [(0, 2), (3, 4)])
    """
    spans, at = [], 0
    for i, step in enumerate(steps):
        if not step:
            raise ValueError(f"step {i + 1} of {len(steps)} is empty; every step needs at least one character")
        spans.append((at, at + len(step)))
        at += len(step) + len(separator)
    return separator.join(steps), spans


def split_steps(text: str, separator: str) -> Spans:
    """Character spans of the pieces of ``text`` between separators that hold more than
    whitespace (a text without a separator is one step; a blank text has none).

    >>> split_steps("ab\\n \\nc\\n", "\\n")
    [(0, 2), (5, 6)]
    """
    if not separator:
        raise ValueError("the step separator must not be empty")
    spans, at = [], 0
    for piece in text.split(separator):
        if piece.strip():                     # a blank line between steps is no step
            spans.append((at, at + len(piece)))
        at += len(piece) + len(separator)
    return spans


def last_tokens(offsets: Spans, ends: list[int]) -> list[int]:
    """For each character end (exclusive), the index of the token holding the character
    just before it: the last token whose start is before ``end``.

    offsets: per token (start, end) characters, in order.
    >>> last_tokens([(0, 1), (1, 3), (3, 4)], [2, 4])
    [1, 2]
    """
    out = []
    for end in ends:
        index = max((j for j, (start, _) in enumerate(offsets) if start < end), default=None)
        if index is None:
            raise ValueError(f"no token ends the step ending at character {end}")
        out.append(index)
    return out


def check_separator(tokenizer, separator: str) -> None:
    """Raise ValueError if the tokenizer writes ``separator`` as no token at all: it drops the
    characters, and its offsets of the text after them are then off."""
    if not tokenizer(separator, add_special_tokens=False)["input_ids"]:
        raise ValueError(f"the tokenizer has no token for the step separator {separator!r}; "
                         f"choose a separator it can write (--step-separator, step_separator)")


def encode_solution(tokenizer, prompt: str, steps: list[str], separator: str, max_length: int | None
                    ) -> tuple[list[int], list[int]]:
    """(ids, positions): prompt ids + ids of the separator and the separator-joined steps,
    and per step the index in ``ids`` of its last token, or -1 for a step cut off by
    ``max_length`` (a long sequence loses its oldest tokens, as a sequence-level reward
    model's does). The separator parts the prompt from the first step too: a question
    ending in "add 4" followed by the step "1 + 4 = 5" would otherwise read "add 41"."""
    text, spans = join_steps(steps, separator)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    enc = tokenizer(separator + text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [len(separator) + e for _, e in spans]
    positions = [len(prompt_ids) + j for j in last_tokens(enc["offset_mapping"], ends)]
    ids = prompt_ids + enc["input_ids"]
    cut = max(len(ids) - max_length, 0) if max_length else 0
    return ids[cut:], [p - cut if p >= cut else -1 for p in positions]


def gather_steps(token_scores: Tensor, positions: list[list[int]]) -> Tensor:
    """The scores at the steps' last tokens, flattened in row order: (S,) from
    token_scores (N, L) and per row its positions (-1: a step that is not there)."""
    rows = [i for i, ps in enumerate(positions) for p in ps if p >= 0]
    cols = [p for ps in positions for p in ps if p >= 0]
    return token_scores[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)]


def step_logits(model, tokenizer, prompts: list[str], solutions: list[list[str]], separator: str,
                dtype: str = "float32") -> tuple[Tensor, list[list[int]]]:
    """One forward pass: (logits (S,) of every step that fits, in row order; positions per row)."""
    from tokrl.rewards.model import pad_right

    check_separator(tokenizer, separator)
    encoded = [encode_solution(tokenizer, p, s, separator, model.max_length) for p, s in zip(prompts, solutions)]
    ids, mask = pad_right([e[0] for e in encoded], tokenizer.pad_token_id)
    with autocast(dtype):
        scores = model.token_scores(ids, mask).float()                    # (N, L)
    positions = [e[1] for e in encoded]
    return gather_steps(scores, positions), positions


@torch.no_grad()
def score_steps(model, tokenizer, prompts: list[str], solutions: list[list[str]], separator: str = "\n",
                batch_size: int = 32, dtype: str = "float32") -> list[list[float | None]]:
    """P(step is right) = σ(logit) per step of each solution (None: cut off by the context)."""
    was_training = model.training
    model.eval()
    out: list[list[Any]] = []
    for start in range(0, len(prompts), batch_size):
        logits, positions = step_logits(model, tokenizer, prompts[start:start + batch_size],
                                        solutions[start:start + batch_size], separator, dtype)
        probs = iter(torch.sigmoid(logits).tolist())
        out += [[next(probs) if p >= 0 else None for p in ps] for ps in positions]
    model.train(was_training)
    return out


# ------------------------------------------------------------------------ a PRM as a dense reward

def token_char_ends(tokenizer, ids: list[int]) -> list[int]:
    """Per policy token, how many characters of the decoded completion it completes: the
    length of the decoded prefix y_<=t (running maximum, so a token that decodes to
    nothing yet, such as half a UTF-8 character or EOS, holds the count before it)."""
    from tokrl.rewards.shaping import prefix_texts

    ends, at = [], 0
    for text in prefix_texts(tokenizer, ids):
        at = max(at, len(text))
        ends.append(at)
    return ends


def step_token_positions(char_ends: list[int], spans: Spans) -> list[int]:
    """For each step (start, end), the first token whose decoded prefix reaches ``end``:
    the token that writes the step's last character (the last token if none reaches it).

    >>> step_token_positions([1, 3, 4, 6], [(0, 3), (4, 6)])
    [1, 3]
    """
    out = []
    for _, end in spans:
        out.append(next((t for t, e in enumerate(char_ends) if e >= end), len(char_ends) - 1))
    return out


def pay_steps(tokenizer, ids: list[int], spans: Spans, paid: list[float]) -> list[float]:
    """(T,) token rewards of one completion of ``ids``: each step's pay (one per span of the
    decoded text) on the token that writes the step's last character, 0 elsewhere; two steps
    ending in one token are both paid there."""
    out = [0.0] * len(ids)
    if spans:
        for t, r in zip(step_token_positions(token_char_ends(tokenizer, ids), spans), paid):
            out[t] += r
    return out


class StepRewardModelReward:
    """A process reward model directory as a token-level reward: each step of the policy's
    completion (split on ``step_separator`` in the decoded text) is scored by the PRM, and
    P(step right) lands on the policy token that writes the step's last character; with
    ``differences`` it is p_k − p_{k−1} (p_0 = 0), so the return telescopes to the last
    step's score. A completion without a separator is one step; one without text earns 0.
    """

    columns: tuple[str, ...] = ()

    def __init__(self, directory, tokenizer, step_separator: str | None = None, differences: bool = False,
                 batch_size: int = 32, dtype: str = "float32"):
        import json
        from pathlib import Path

        from tokrl.rewards.model import INFO_FILE, load_reward_model

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"reward_model dtype must be float32 or bfloat16, got {dtype!r}")
        self.model, self.prm_tokenizer = load_reward_model(directory, level="step")
        info = json.loads((Path(directory) / INFO_FILE).read_text())
        self.prm_separator = info.get("step_separator", "\n")           # how the PRM saw steps joined
        check_separator(self.prm_tokenizer, self.prm_separator)
        self.separator = self.prm_separator if step_separator is None else step_separator
        if not self.separator:
            raise ValueError("the step separator must not be empty")
        self.tokenizer, self.differences = tokenizer, bool(differences)
        self.batch_size, self.dtype = batch_size, dtype
        self.__name__ = "reward_model"

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                 **kwargs) -> list[list[float]]:
        from tokrl.rewards.shaping import shape

        spans = [split_steps(text, self.separator) for text in completions]
        rows = [i for i, s in enumerate(spans) if s]
        scores = score_steps(self.model, self.prm_tokenizer, [prompts[i] for i in rows],
                             [[completions[i][a:b] for a, b in spans[i]] for i in rows], self.prm_separator,
                             self.batch_size, self.dtype)
        out = [[0.0] * len(ids) for ids in completion_ids]
        for i, p in zip(rows, scores):
            # a step cut off by the PRM's context (None) earns 0; with differences it keeps p_{k-1}
            paid = shape(p) if self.differences else [0.0 if x is None else x for x in p]
            out[i] = pay_steps(self.tokenizer, completion_ids[i], spans[i], paid)
        return out
