"""Environments: TokenEnv (one turn of generation as a gymnasium MDP) and the multi-turn
protocol (``Environment``: it speaks between the policy's turns; defined beside the task
protocol in ``tasks.base`` so that built-in environments need not import this module).

The state is the prompt plus the tokens generated so far, the action is the next
token id, and the reward is the task's token-level reward of that token, plus the
task's sequence-level reward of the whole decoded completion on the last step.

    env = TokenEnv(TargetMatch(tokenizer), tokenizer, max_new_tokens=8)
    obs, info = env.reset(seed=0)
    while True:
        context = TokenEnv.context(obs)                 # prompt + completion ids
        obs, reward, terminated, truncated, info = env.step(policy(context))
        if terminated or truncated:
            break

Observation (a ``spaces.Dict`` of fixed-size int64 arrays, so it checks cleanly,
stacks in a vector env, and lays out exactly like one row of a ``Rollout``):

    prompt_ids     (max_prompt_tokens,) int64  prompt ids, LEFT-padded with the pad id
    prompt_length  Discrete(max_prompt_tokens + 1)  real prompt tokens
    tokens         (max_new_tokens,) int64     generated ids, RIGHT-padded with the pad id
    length         Discrete(max_new_tokens + 1)     tokens generated so far
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from tokrl.generation.prompts import encode_prompt
from tokrl.tasks.base import Environment, Example, Task

__all__ = ["Environment", "TokenEnv"]


class TokenEnv(gymnasium.Env):
    """Generation as an MDP: observe prompt + prefix, act with a token id.

    An episode ends with ``terminated`` at the tokenizer's EOS or when the completion
    reaches ``task.max_tokens(example)``, and otherwise with ``truncated`` once
    ``max_new_tokens`` tokens have been generated.

    ``reset(options=...)`` accepts ``{"example": dict}`` (a task example with its
    columns, e.g. ``target_ids``), ``{"prompt": str}`` (a bare prompt: only for tasks
    whose rewards need no columns), or nothing (an example of ``split`` drawn with
    the env's seeded RNG). ``info`` holds ``text`` (the completion so far, special
    tokens skipped), ``prompt`` and ``example``.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: Task, tokenizer, max_new_tokens: int = 16,
                 max_prompt_tokens: int = 64, split: str = "train"):
        if max_new_tokens < 1 or max_prompt_tokens < 1:
            raise ValueError("max_new_tokens and max_prompt_tokens must be >= 1")
        self.task, self.tokenizer, self.split = task, tokenizer, split
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens
        self.eos_id: int | None = tokenizer.eos_token_id
        # a tokenizer without a pad token pads with EOS (as HF generation does); padding
        # is never read without its length, so any valid id would do
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.pad_id: int = 0 if pad is None else int(pad)

        vocab = len(tokenizer)  # len() counts added tokens; .vocab_size does not
        self.action_space = spaces.Discrete(vocab)
        self.observation_space = spaces.Dict({
            "prompt_ids": spaces.Box(0, vocab - 1, shape=(max_prompt_tokens,), dtype=np.int64),
            "prompt_length": spaces.Discrete(max_prompt_tokens + 1),
            "tokens": spaces.Box(0, vocab - 1, shape=(max_new_tokens,), dtype=np.int64),
            "length": spaces.Discrete(max_new_tokens + 1),
        })

        self._example: Example | None = None
        self._prompt_ids: list[int] = []
        self._generated: list[int] = []
        self._limit: int | None = None      # length at which the task ends the episode
        self._done = True                   # step() before reset() is an error

    # -- gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. Returns (observation, info)."""
        super().reset(seed=seed)  # seeds self.np_random
        options = options or {}
        if "example" in options and "prompt" in options:
            raise ValueError("pass either options['example'] or options['prompt'], not both")
        if "example" in options:
            example = options["example"]
        elif "prompt" in options:
            example = {"prompt": options["prompt"]}
        else:
            examples = self.task.examples(self.split)
            if not examples:
                raise ValueError(f"the task has no {self.split!r} examples")
            example = examples[int(self.np_random.integers(len(examples)))]

        prompt_ids = encode_prompt(self.tokenizer, example["prompt"])
        if len(prompt_ids) > self.max_prompt_tokens:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens but max_prompt_tokens is "
                             f"{self.max_prompt_tokens}; raise max_prompt_tokens or shorten the "
                             f"prompt: {example['prompt'][:80]!r}")
        self._example, self._prompt_ids, self._generated = example, prompt_ids, []
        self._limit = self.task.max_tokens(example)
        self._done = False
        return self._observation(), self._info()

    def step(self, action):
        """Append token ``action``. Returns (observation, reward, terminated, truncated, info)."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not a token id in [0, {self.action_space.n})")
        token = int(action)
        self._generated.append(token)
        n = len(self._generated)

        terminated = token == self.eos_id or (self._limit is not None and n >= self._limit)
        truncated = not terminated and n >= self.max_new_tokens
        self._done = terminated or truncated

        reward = 0.0
        # token rewards are causal, so scoring the prefix and keeping its last element
        # is the reward of this token (O(T^2) over an episode; T is small)
        token_rewards = self.task.token_rewards([self._example], [list(self._generated)])
        if token_rewards is not None:
            if len(token_rewards[0]) != n:
                raise ValueError(f"{type(self.task).__name__}.token_rewards returned "
                                 f"{len(token_rewards[0])} rewards for {n} tokens")
            reward += float(token_rewards[0][-1])
        if self._done:
            sequence_rewards = self.task.sequence_rewards([self._example], [self._text()])
            if sequence_rewards is not None:
                reward += float(sequence_rewards[0])
        return self._observation(), reward, terminated, truncated, self._info()

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def context(observation: dict[str, Any]) -> list[int]:
        """Prompt followed by the completion so far, without padding: the policy's input."""
        P = observation["prompt_ids"].shape[0]
        prompt = observation["prompt_ids"][P - int(observation["prompt_length"]):]
        tokens = observation["tokens"][:int(observation["length"])]
        return [int(t) for t in prompt] + [int(t) for t in tokens]

    def _text(self) -> str:
        return self.tokenizer.decode(self._generated, skip_special_tokens=True)

    def _observation(self) -> dict[str, Any]:
        P, n = len(self._prompt_ids), len(self._generated)
        prompt = np.full(self.max_prompt_tokens, self.pad_id, dtype=np.int64)
        if P:  # trap: prompt[-0:] is the whole array, not an empty slice
            prompt[-P:] = self._prompt_ids
        tokens = np.full(self.max_new_tokens, self.pad_id, dtype=np.int64)
        tokens[:n] = self._generated
        return {"prompt_ids": prompt, "prompt_length": np.int64(P),
                "tokens": tokens, "length": np.int64(n)}

    def _info(self) -> dict[str, Any]:
        # trap: gymnasium requires fresh info data on every call (a caller may keep and
        # mutate it), so the example is deep-copied rather than shared between steps
        return {"text": self._text(), "prompt": self._example["prompt"],
                "example": copy.deepcopy(self._example)}

